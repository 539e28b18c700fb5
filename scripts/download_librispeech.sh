#!/usr/bin/env bash
# Downloads the LibriSpeech archives listed in CSV into DATA_DIR, checks their md5 and unpacks them
# there without the archives' leading LibriSpeech/, so that DATA_DIR holds the split folders.
# Resumable (<archive>.part) and idempotent (<archive>.done): run it again after an interruption.
# A wrong md5 is an error (the bad archive is renamed <archive>.bad and the run exits non-zero).
# Relative paths are relative to the repository root.
# Usage: [VAR=value ...] bash scripts/download_librispeech.sh [download_librispeech.py args]
#   DATA_DIR  archives and split folders         (default: /datasets/LibriSpeech)
#   CSV       url,md5 list of the archives        (default: utils/librispeech.csv, all seven splits;
#             utils/inference_librispeech.csv has the dev and test splits only)
#   PYTHON    interpreter     (default: .venv/bin/python if it exists, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python.sh

: "${DATA_DIR:=/datasets/LibriSpeech}"
: "${CSV:=utils/librispeech.csv}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

args=("$PYTHON" utils/download_librispeech.py "$CSV" "$DATA_DIR" "$@")
printf '%q ' "${args[@]}"; echo
"${args[@]}"
