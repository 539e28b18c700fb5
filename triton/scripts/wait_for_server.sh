#!/usr/bin/env bash
# Waits until the server answers /v2/health/live and /v2/health/ready, or fails after WAIT_TIMEOUT
# seconds, or at once when the server process (PID_FILE) has exited, showing the end of its log.
#   HOST          (default: 127.0.0.1)
#   HTTP_PORT     (default: 8000)
#   WAIT_TIMEOUT  seconds (default: 120)
#   PID_FILE      (default: triton/deploy/tritonserver.pid)
#   LOG_FILE      (default: triton/deploy/tritonserver.log)
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${HOST:=127.0.0.1}"
: "${HTTP_PORT:=8000}"
: "${WAIT_TIMEOUT:=120}"
: "${PID_FILE:=triton/deploy/tritonserver.pid}"
: "${LOG_FILE:=triton/deploy/tritonserver.log}"

url="http://$HOST:$HTTP_PORT/v2/health"
healthy() {
  curl -sf -o /dev/null --max-time 2 "$url/live" && curl -sf -o /dev/null --max-time 2 "$url/ready"
}

deadline=$((SECONDS + WAIT_TIMEOUT))
while ! healthy; do
  pid=$(cat "$PID_FILE" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]] && ! kill -0 "$pid" 2>/dev/null; then
    echo "error: the server (pid $pid) has exited; end of $LOG_FILE:" >&2
    tail -n 40 "$LOG_FILE" >&2 || true
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "error: the server at $url is not live and ready after $WAIT_TIMEOUT s" >&2
    tail -n 40 "$LOG_FILE" >&2 || true
    exit 1
  fi
  sleep 1
done
echo "server ready at $url"
