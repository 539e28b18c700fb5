#!/usr/bin/env bash
# Starts Triton Inference Server on a model repository, in the background, bound to 127.0.0.1 by
# default; its process id (which leads its own process group) goes to PID_FILE, its log to
# LOG_FILE. Then run wait_for_server.sh; stop it with stop_server.sh.
#   SERVER_MODE       pytriton: the CPU server of setup_server.sh (default); native: `tritonserver`
#                     from PATH (inside the NGC Triton container); docker: the NGC container
#   MODEL_REPOSITORY  repository folder (model_repository.py)  (default: triton/deploy/model_repo)
#   HOST              address the endpoints bind to            (default: 127.0.0.1)
#   HTTP_PORT GRPC_PORT METRICS_PORT                           (default: 8000 8001 8002)
#   PID_FILE          (default: triton/deploy/tritonserver.pid)
#   LOG_FILE          (default: triton/deploy/tritonserver.log)
#   LOG_VERBOSE       tritonserver --log-verbose level         (default: 0)
#   TRITON_VENV       pytriton mode: setup_server.sh's venv    (default: .venv-triton)
#   TRITON_IMAGE      docker mode                              (default: nvcr.io/nvidia/tritonserver:24.08-py3)
#   CONTAINER_NAME    docker mode                              (default: jasper-triton)
# Extra arguments go to tritonserver unchanged.
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${SERVER_MODE:=pytriton}"
: "${MODEL_REPOSITORY:=triton/deploy/model_repo}"
: "${HOST:=127.0.0.1}"
: "${HTTP_PORT:=8000}"
: "${GRPC_PORT:=8001}"
: "${METRICS_PORT:=8002}"
: "${PID_FILE:=triton/deploy/tritonserver.pid}"
: "${LOG_FILE:=triton/deploy/tritonserver.log}"
: "${LOG_VERBOSE:=0}"
: "${TRITON_VENV:=.venv-triton}"
: "${TRITON_IMAGE:=nvcr.io/nvidia/tritonserver:24.08-py3}"
: "${CONTAINER_NAME:=jasper-triton}"

if [[ ! -d "$MODEL_REPOSITORY" ]]; then
  echo "error: no model repository at $MODEL_REPOSITORY (run triton/model_repository.py)" >&2
  exit 2
fi
if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
  echo "error: a server is already running (pid $(cat "$PID_FILE"), $PID_FILE)" >&2
  exit 2
fi
mkdir -p "$(dirname "$PID_FILE")" "$(dirname "$LOG_FILE")"
repo=$(cd "$MODEL_REPOSITORY" && pwd)

server_args=(
  --model-repository="$repo"
  --http-address="$HOST" --http-port="$HTTP_PORT"
  --grpc-address="$HOST" --grpc-port="$GRPC_PORT"
  --metrics-address="$HOST" --metrics-port="$METRICS_PORT"
  --exit-on-error=true
  --log-verbose="$LOG_VERBOSE"
)

case "$SERVER_MODE" in
  pytriton)
    if [[ ! -f "$TRITON_VENV/server/env.sh" ]]; then
      echo "error: $TRITON_VENV is not set up: run triton/scripts/setup_server.sh" >&2
      exit 2
    fi
    source "$TRITON_VENV/server/env.sh"
    export LD_LIBRARY_PATH="$TRITON_LD_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PATH="$TRITON_PYTHON_BIN:$PATH"
    cmd=("$TRITONSERVER_BIN" "${server_args[@]}" --backend-directory="$TRITON_BACKEND_DIR" "$@")
    ;;
  native)
    cmd=(tritonserver "${server_args[@]}" "$@")
    ;;
  docker)
    # The repository links into the exported files under this checkout: mount it at its own path.
    root=$(pwd)
    docker_args=(
      docker run -d --rm --name "$CONTAINER_NAME" --gpus all --shm-size=1g --network host
      -v "$root:$root:ro" "$TRITON_IMAGE"
    )
    cmd=("${docker_args[@]}" tritonserver "${server_args[@]}" "$@")
    printf '%q ' "${cmd[@]}"; echo
    "${cmd[@]}" > "$PID_FILE.container"
    echo "docker:$CONTAINER_NAME" > "$PID_FILE"
    echo "server container $CONTAINER_NAME started (logs: docker logs $CONTAINER_NAME)"
    exit 0
    ;;
  *)
    echo "error: SERVER_MODE=$SERVER_MODE: use pytriton, native or docker" >&2
    exit 2
    ;;
esac

printf '%q ' "${cmd[@]}"; echo
# setsid: the server leads a new session and process group, which its backend stubs join, so that
# stop_server.sh can end them all together.
setsid "${cmd[@]}" > "$LOG_FILE" 2>&1 < /dev/null &
echo $! > "$PID_FILE"
echo "server started: pid $(cat "$PID_FILE"), log $LOG_FILE, http://$HOST:$HTTP_PORT grpc $HOST:$GRPC_PORT"
