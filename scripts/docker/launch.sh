#!/usr/bin/env bash
# Start the recipe's container with the data, checkpoint and results folders mounted where the
# launchers expect them (/datasets, /checkpoints, /results) and the repository at /workspace/jasper
# (mounted, so edits on the host apply without a rebuild). Runs SCRIPT with ARGS, else a shell.
#   bash scripts/docker/launch.sh [DATA_DIR [CHECKPOINT_DIR [OUTPUT_DIR [SCRIPT [ARGS...]]]]]
# Variables: IMAGE, GPUS (all, a count, device=0,1, or none for a machine without the NVIDIA
# container toolkit), SHM_SIZE, EXTRA_JASPER_ENV (more docker options, e.g. "-e NUM_GPUS=4").
set -euo pipefail
JASPER_REPO=$(cd "$(dirname "$0")/../.." && pwd)
if (( $# > 0 )); then DATA_DIR=$1; shift; fi
if (( $# > 0 )); then CHECKPOINT_DIR=$1; shift; fi
if (( $# > 0 )); then OUTPUT_DIR=$1; shift; fi
if (( $# > 0 )); then SCRIPT=$1; shift; fi
: "${DATA_DIR:=$JASPER_REPO/datasets}"
: "${CHECKPOINT_DIR:=$JASPER_REPO/checkpoints}"
: "${OUTPUT_DIR:=$JASPER_REPO/results}"
: "${SCRIPT:=}"
: "${IMAGE:=jasper:latest}"
: "${GPUS:=all}"
: "${SHM_SIZE:=8g}"
: "${EXTRA_JASPER_ENV:=}"
mkdir -p "$DATA_DIR" "$CHECKPOINT_DIR" "$OUTPUT_DIR"
read -r -a extra_env <<< "$EXTRA_JASPER_ENV"

cmd=(docker run -i --rm)
# A terminal only when there is one (so that the launcher also runs from cron or CI).
if [[ -t 0 && -t 1 ]]; then cmd+=(-t); fi
# The quotes make docker read a device list such as device=0,1 as one value.
if [[ "$GPUS" != none ]]; then cmd+=(--gpus "\"$GPUS\""); fi
# DataLoader workers, DALI and NCCL pass data through /dev/shm; Docker's default is 64 MB.
cmd+=(--shm-size="$SHM_SIZE" --ulimit memlock=-1 --ulimit stack=67108864
      --env PYTHONDONTWRITEBYTECODE=1 "${extra_env[@]}"
      -v "$DATA_DIR":/datasets -v "$CHECKPOINT_DIR":/checkpoints -v "$OUTPUT_DIR":/results
      -v "$JASPER_REPO":/workspace/jasper -w /workspace/jasper "$IMAGE")
if [[ -n "$SCRIPT" ]]; then cmd+=(bash "$SCRIPT" "$@"); else cmd+=(bash); fi
printf '%q ' "${cmd[@]}"; echo
exec "${cmd[@]}"
