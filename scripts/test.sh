#!/usr/bin/env bash
# Creates (or reuses) the virtualenv .venv, installs the recipe's dependencies, and runs the tests.
# Usage: bash scripts/test.sh [pytest arguments...]
#   VENV      virtualenv folder                         (default: .venv)
#   WITH_DALI install NVIDIA DALI for the DALI CPU tests (default: true)
#   PYTHON    interpreter that creates the virtualenv   (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

: "${VENV:=.venv}"
: "${WITH_DALI:=true}"
: "${PYTHON:=python3}"

export VENV WITH_DALI
# PYTHON only creates the virtualenv here: not exported, so that the launchers the tests run pick
# the virtualenv's interpreter (scripts/lib/python.sh) unless you set PYTHON yourself.
PYTHON="$PYTHON" bash scripts/setup_env.sh

args=(-m pytest "$@")
printf '%q ' "$VENV/bin/python" "${args[@]}"; echo
set +e
"$VENV/bin/python" "${args[@]}"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a failure of the test command, not a pass.
exit "$rc"
