#!/usr/bin/env bash
# Stops the server that run_server.sh started and checks that nothing of it is left: SIGTERM to its
# process group (the server and its backend stubs), up to STOP_TIMEOUT seconds for a clean exit,
# then SIGKILL; fails if any process of its session remains.
#   PID_FILE      (default: triton/deploy/tritonserver.pid)
#   STOP_TIMEOUT  seconds (default: 30)
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${PID_FILE:=triton/deploy/tritonserver.pid}"
: "${STOP_TIMEOUT:=30}"

if [[ ! -f "$PID_FILE" ]]; then
  echo "no server to stop ($PID_FILE not found)"
  exit 0
fi
pid=$(cat "$PID_FILE")
if [[ "$pid" == docker:* ]]; then
  docker stop "${pid#docker:}" > /dev/null || true
  rm -f "$PID_FILE" "$PID_FILE.container"
  echo "server container ${pid#docker:} stopped"
  exit 0
fi
if ! [[ "$pid" =~ ^[0-9]+$ ]]; then
  echo "error: $PID_FILE does not hold a process id" >&2
  exit 2
fi

# Processes of the server's session or process group (run_server.sh made it lead both).
members() {
  ps -e -o pid=,pgid=,sid= | awk -v p="$pid" '$2 == p || $3 == p { print $1 }'
}

if [[ -n "$(members)" ]]; then
  kill -TERM -- "-$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while [[ -n "$(members)" ]] && ((SECONDS < deadline)); do
    sleep 0.5
  done
  left=$(members)
  if [[ -n "$left" ]]; then
    echo "server did not exit within $STOP_TIMEOUT s: killing $(echo $left)" >&2
    kill -KILL $left 2>/dev/null || true
    sleep 1
  fi
fi
left=$(members)
if [[ -n "$left" ]]; then
  echo "error: processes of the server are still running: $(echo $left)" >&2
  exit 1
fi
rm -f "$PID_FILE"
echo "server $pid stopped; no server or backend-stub process left"
