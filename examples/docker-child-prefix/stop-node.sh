#!/bin/sh
# stop-node.sh NETWORK CONTAINER - remove what start-node.sh made. Missing
# pieces are not an error.
set -eu
if [ $# -ne 2 ]; then
	echo "usage: $0 NETWORK CONTAINER" >&2
	exit 2
fi
net=$1 ctr=$2
docker rm --force "$ctr" >/dev/null 2>&1 || true
if docker network inspect "$net" >/dev/null 2>&1; then
	docker network rm "$net" >/dev/null
fi
echo "removed container $ctr and network $net"
