#!/usr/bin/env bash
# Creates (or reuses) the virtualenv that the launchers, the quick start and the tests use, and
# installs what the recipe needs on a plain machine: torch 2.13.0 (pinned exactly: an open range
# pulls a multi-GB CUDA build), requirements.txt, the test tools and, optionally, NVIDIA DALI.
# Inside the NGC container (torch and DALI preinstalled) use `pip install -r requirements.txt` instead.
#   VENV      virtualenv folder                   (default: .venv)
#   WITH_DALI also install nvidia-dali-cuda130   (default: true)
#   PYTHON    interpreter that creates the venv   (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

: "${VENV:=.venv}"
: "${WITH_DALI:=true}"
: "${PYTHON:=python3}"
: "${TORCH_VERSION:=2.13.0}"
: "${DALI_PACKAGE:=nvidia-dali-cuda130==2.4.0}"

stamp="$VENV/.installed"
want="torch=$TORCH_VERSION dali=$WITH_DALI/$DALI_PACKAGE $(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip
"${pip[@]}" "torch==$TORCH_VERSION"
"${pip[@]}" -r requirements.txt -r requirements-dev.txt
if [[ "$WITH_DALI" == true ]]; then
  "${pip[@]}" "$DALI_PACKAGE"
fi
echo "$want" > "$stamp"
echo "environment ready: $VENV"
