#!/usr/bin/env bash
# Load test of a running server (upstream's run_perf_client.sh / execute_all_perf_runs.sh, with
# triton/perf_client.py instead of perf_analyzer): throughput and p50/p90/p95/p99 latency per audio
# length, batch size and concurrency, static and dynamic batching; a markdown and a JSON table.
#   MODEL_TYPE     ts-trace, onnx or tensorrt (or $1)  (default: onnx)
#   PROTOCOL       http or grpc                     (default: grpc)
#   HOST           (default: 127.0.0.1)
#   HTTP_PORT GRPC_PORT                             (default: 8000 8001)
#   BATCH_SIZES    (default: 1 2 4 8)
#   CONCURRENCY    requests in flight (static mode) (default: 1 2 4 8)
#   AUDIO_SECONDS  upstream's 32000 112000 267200 samples (default: 2 7 16.7)
#   MODES          static and/or dynamic            (default: static dynamic)
#   REQUESTS       completed requests per level     (default: 200)
#   SECONDS_PER_LEVEL  time bound per level         (default: 10)
#   OUTPUT_PREFIX  tables go to PREFIX.md and PREFIX.json (default: results/triton_perf_$MODEL_TYPE)
#   PYTHON         (default: python3)
# Extra arguments go to triton/perf_client.py unchanged.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/python.sh
source scripts/lib/launcher.sh

positional MODEL_TYPE -- "$@"
set -- "${launcher_rest[@]}"

: "${MODEL_TYPE:=onnx}"
: "${PROTOCOL:=grpc}"
: "${HOST:=127.0.0.1}"
: "${HTTP_PORT:=8000}"
: "${GRPC_PORT:=8001}"
: "${BATCH_SIZES:=1 2 4 8}"
: "${CONCURRENCY:=1 2 4 8}"
: "${AUDIO_SECONDS:=2 7 16.7}"
: "${MODES:=static dynamic}"
: "${REQUESTS:=200}"
: "${SECONDS_PER_LEVEL:=10}"
: "${OUTPUT_PREFIX:=results/triton_perf_$MODEL_TYPE}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

read -r -a batch_sizes <<< "$BATCH_SIZES"
read -r -a concurrency <<< "$CONCURRENCY"
read -r -a audio_seconds <<< "$AUDIO_SECONDS"
read -r -a modes <<< "$MODES"
port=$GRPC_PORT
[[ "$PROTOCOL" == http ]] && port=$HTTP_PORT
args=(
  triton/perf_client.py
  --url "$HOST:$port"
  --protocol "$PROTOCOL"
  --model "jasper-$MODEL_TYPE-ensemble"
  --batch_sizes "${batch_sizes[@]}"
  --concurrency "${concurrency[@]}"
  --audio_seconds "${audio_seconds[@]}"
  --modes "${modes[@]}"
  --requests "$REQUESTS"
  --seconds "$SECONDS_PER_LEVEL"
  --output_prefix "$OUTPUT_PREFIX"
)

cmd=("$PYTHON" "${args[@]}" "$@")
printf '%q ' "${cmd[@]}"; echo
exec "${cmd[@]}"
