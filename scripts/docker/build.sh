#!/usr/bin/env bash
# Build the recipe's image from the repository's Dockerfile; arguments go to docker build, e.g.
#   bash scripts/docker/build.sh --build-arg FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:<tag>
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${IMAGE:=jasper:latest}"
cmd=(docker build . --rm -t "$IMAGE" "$@")
printf '%q ' "${cmd[@]}"; echo
exec "${cmd[@]}"
