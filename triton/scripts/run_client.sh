#!/usr/bin/env bash
# Transcribes audio files, folders or a manifest with a running server (upstream's
# run_client.sh <model type> <data dir> <file|manifest>): triton/client.py with the ensemble
# jasper-$MODEL_TYPE-ensemble; prints <name>\t<transcript> lines, and the WER for a manifest.
#   MODEL_TYPE  ts-trace, onnx or tensorrt (or $1)  (default: onnx)
#   DATA_DIR    manifests' paths are relative to it (or $2) (default: .)
#   FILE        audio file, folder or *.json manifest (or $3) (default: data/audio)
#   PROTOCOL    http or grpc                        (default: http)
#   HOST        (default: 127.0.0.1)
#   HTTP_PORT GRPC_PORT                             (default: 8000 8001)
#   BATCH_SIZE  recordings per request              (default: 1)
#   PREDICTION_FILE  write the transcripts there    (default: none)
#   PYTHON      (default: python3)
# Extra arguments go to triton/client.py unchanged.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/python.sh
source scripts/lib/launcher.sh

positional MODEL_TYPE DATA_DIR FILE -- "$@"
set -- "${launcher_rest[@]}"

: "${MODEL_TYPE:=onnx}"
: "${DATA_DIR:=.}"
: "${FILE:=data/audio}"
: "${PROTOCOL:=http}"
: "${HOST:=127.0.0.1}"
: "${HTTP_PORT:=8000}"
: "${GRPC_PORT:=8001}"
: "${BATCH_SIZE:=1}"
: "${PREDICTION_FILE:=}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

port=$HTTP_PORT
[[ "$PROTOCOL" == grpc ]] && port=$GRPC_PORT
args=(
  triton/client.py "$FILE"
  --url "$HOST:$port"
  --protocol "$PROTOCOL"
  --model "jasper-$MODEL_TYPE-ensemble"
  --dataset_dir "$DATA_DIR"
  --batch_size "$BATCH_SIZE"
)
[[ -n "$PREDICTION_FILE" ]] && args+=(--save_predictions "$PREDICTION_FILE")

cmd=("$PYTHON" "${args[@]}" "$@")
printf '%q ' "${cmd[@]}"; echo
exec "${cmd[@]}"
