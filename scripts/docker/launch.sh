#!/usr/bin/env bash
# Start the recipe's container with the data, checkpoint and results folders mounted where the
# launchers expect them (/datasets, /checkpoints, /results) and the repository at /workspace/jasper.
#   bash scripts/docker/launch.sh [DATA_DIR [CHECKPOINT_DIR [OUTPUT_DIR [SCRIPT]]]]
set -euo pipefail
JASPER_REPO=$(cd "$(dirname "$0")/../.." && pwd)
[[ $# -gt 0 ]] && { DATA_DIR=$1; shift; }
[[ $# -gt 0 ]] && { CHECKPOINT_DIR=$1; shift; }
[[ $# -gt 0 ]] && { OUTPUT_DIR=$1; shift; }
[[ $# -gt 0 ]] && { SCRIPT=$1; shift; }
: "${DATA_DIR:=$JASPER_REPO/datasets}"
: "${CHECKPOINT_DIR:=$JASPER_REPO/checkpoints}"
: "${OUTPUT_DIR:=$JASPER_REPO/results}"
: "${SCRIPT:=}"
: "${IMAGE:=jasper:latest}"
: "${EXTRA_JASPER_ENV:=}"
: "${SHM_SIZE:=8g}"
mkdir -p "$DATA_DIR" "$CHECKPOINT_DIR" "$OUTPUT_DIR"
read -r -a extra_env <<< "$EXTRA_JASPER_ENV"
cmd=(docker run -it --rm --gpus all --shm-size="$SHM_SIZE" --ipc=host
     --ulimit memlock=-1 --ulimit stack=67108864
     --env PYTHONDONTWRITEBYTECODE=1 "${extra_env[@]}"
     -v "$DATA_DIR":/datasets -v "$CHECKPOINT_DIR":/checkpoints -v "$OUTPUT_DIR":/results
     -v "$JASPER_REPO":/workspace/jasper -w /workspace/jasper "$IMAGE")
[[ -n "$SCRIPT" ]] && cmd+=(bash "$SCRIPT" "$@") || cmd+=(bash)
printf '%q ' "${cmd[@]}"; echo
exec "${cmd[@]}"
