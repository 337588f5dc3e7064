#!/bin/sh
# start-node.sh NETWORK PREFIX CONTAINER ADDRESS [IMAGE] - on one node,
# create a user-defined bridge network whose subnet is the node's child
# prefix and start a workload container on it at a fixed address, with no
# published port. IMAGE defaults to wiremesh-workload (see build-image.sh).
#
#   ./start-node.sh net1 172.24.0.0/24 c1 172.24.0.2
set -eu
if [ $# -lt 4 ] || [ $# -gt 5 ]; then
	echo "usage: $0 NETWORK PREFIX CONTAINER ADDRESS [IMAGE]" >&2
	exit 2
fi
net=$1 prefix=$2 ctr=$3 addr=$4 image=${5:-wiremesh-workload}
docker network create --driver bridge --subnet "$prefix" \
	--label wiremesh-example=docker-child-prefix "$net" >/dev/null
if ! docker run --detach --name "$ctr" --hostname "$ctr" --network "$net" --ip "$addr" \
	--label wiremesh-example=docker-child-prefix "$image" serve --name "$ctr" >/dev/null; then
	docker network rm "$net" >/dev/null 2>&1 || true
	exit 1
fi
bridge=br-$(docker network inspect --format '{{.Id}}' "$net" | cut -c1-12)
echo "network $net ($prefix) on bridge $bridge; container $ctr at $addr serving tcp port 7000"
