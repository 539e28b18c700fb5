#!/usr/bin/env bash
# Build the recipe's image (tag jasper:latest) from the repository's Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${IMAGE:=jasper:latest}"
cmd=(docker build . --rm -t "$IMAGE" "$@")
printf '%q ' "${cmd[@]}"; echo
exec "${cmd[@]}"
