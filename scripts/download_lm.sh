#!/usr/bin/env bash
# Downloads the LibriSpeech n-gram LMs and lexicon (OpenSLR resource 11, the corpus' own source)
# into LM_DIR, the ARPA files gzipped as published (the beam decoder reads .arpa.gz directly).
# Resumable (<file>.part). No checksums are published: the first download records each file's size
# and sha256 (<file>.checksum.json), later runs verify against them and refuse a mismatch.
# Relative paths are relative to the repository root.
# Usage: [VAR=value ...] bash scripts/download_lm.sh [NAME ...] [download_lm.py options]
#   NAME of: 3-gram 4-gram 3-gram-pruned-1e-7 3-gram-pruned-3e-7 lexicon vocab
#   (default: 3-gram 4-gram lexicon)
#   LM_DIR  folder for the files               (default: pretrained_models/librispeech_lm)
#   MIRROR  base URL of OpenSLR resource 11    (default: http://www.openslr.org/resources/11)
#   PYTHON  interpreter     (default: .venv/bin/python if it exists, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python.sh

: "${LM_DIR:=pretrained_models/librispeech_lm}"
: "${MIRROR:=http://www.openslr.org/resources/11}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

args=("$PYTHON" utils/download_lm.py "$LM_DIR" --mirror "$MIRROR" "$@")
printf '%q ' "${args[@]}"; echo
"${args[@]}"
