#!/bin/sh
# build-image.sh [TAG] - build the example's container image (default tag
# wiremesh-workload) from a local context: a static Go binary
# (CGO_ENABLED=0) in a FROM scratch image. Nothing is pulled from any
# registry. Needs go and docker.
set -eu
tag=${1:-wiremesh-workload}
here=$(cd "$(dirname "$0")" && pwd)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT INT TERM
(cd "$here/workload" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$ctx/workload" .)
cp "$here/workload/Dockerfile" "$ctx/Dockerfile"
docker build --quiet --label wiremesh-example=docker-child-prefix --tag "$tag" "$ctx"
