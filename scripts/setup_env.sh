#!/usr/bin/env bash
# Creates (or reuses) the virtualenv that the launchers, the quick start and the tests use, and
# installs what the recipe needs on a plain machine: torch 2.13.0 (pinned exactly: an open range
# pulls a multi-GB CUDA build), requirements.txt, the test tools, the LM decoder (requirements-lm.txt), the repository itself (editable)
# and, optionally, NVIDIA DALI.
# Inside the NGC container (torch and DALI preinstalled) use `pip install -e .` instead.
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

# Stamps record what is installed, so a second run returns at once; DALI is an add-on (a venv
# with DALI also serves WITH_DALI=false).
base_stamp="$VENV/.installed"
dali_stamp="$VENV/.installed-dali"
want="torch=$TORCH_VERSION $(cat requirements.txt requirements-dev.txt requirements-lm.txt pyproject.toml | sha256sum | cut -c1-16)"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
changed=false
if [[ ! -f "$base_stamp" || "$(cat "$base_stamp")" != "$want" ]]; then
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "${pip[@]}" --upgrade pip
  "${pip[@]}" "torch==$TORCH_VERSION"
  "${pip[@]}" -r requirements.txt -r requirements-dev.txt -r requirements-lm.txt
  "${pip[@]}" --no-deps -e .  # common, jasper and utils importable from any directory
  echo "$want" > "$base_stamp"
  changed=true
fi
if [[ "$WITH_DALI" == true && "$(cat "$dali_stamp" 2>/dev/null)" != "$DALI_PACKAGE" ]]; then
  "${pip[@]}" "$DALI_PACKAGE"
  echo "$DALI_PACKAGE" > "$dali_stamp"
  changed=true
fi
if [[ "$changed" == true ]]; then
  echo "environment ready: $VENV"
fi
