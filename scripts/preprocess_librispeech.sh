#!/usr/bin/env bash
# Converts each LibriSpeech split under DATA_DIR to 16 kHz 16-bit WAV (DATA_DIR/<split>-wav/) and
# writes its manifest DATA_DIR/librispeech-<split>-wav.json. Offline speed perturbation (SPEEDS)
# applies to the train* splits only. Idempotent: existing WAVs are reused.
# Relative paths are relative to the repository root.
# Usage: [VAR=value ...] bash scripts/preprocess_librispeech.sh [SPEEDS [converter args]]
#   DATA_DIR  folder holding the split folders    (default: /datasets/LibriSpeech)
#   SPLITS    splits to convert; absent ones are skipped with a notice
#             (default: the seven LibriSpeech splits)
#   SPEEDS    speed factors for train* splits, e.g. "0.9 1.1"; $1 wins over the variable
#             (upstream's script overwrote the variable with $1)  (default: none)
#   NUM_JOBS  worker processes                    (default: nproc)
#   PYTHON    interpreter     (default: .venv/bin/python if it exists, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python.sh

: "${DATA_DIR:=/datasets/LibriSpeech}"
: "${SPLITS:=train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other}"
: "${SPEEDS:=}"
: "${NUM_JOBS:=$(nproc)}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

if [[ $# -gt 0 ]]; then
  SPEEDS="$1"
  shift
fi
read -r -a speeds <<< "$SPEEDS"
read -r -a splits <<< "$SPLITS"

done_splits=0
for split in "${splits[@]}"; do
  if [[ ! -d "$DATA_DIR/$split" ]]; then
    echo "skipping $split: $DATA_DIR/$split not found"
    continue
  fi
  args=("$PYTHON" utils/convert_librispeech.py
        --input_dir "$DATA_DIR/$split"
        --dest_dir "$DATA_DIR/$split-wav"
        --output_json "$DATA_DIR/librispeech-$split-wav.json"
        --parallel "$NUM_JOBS")
  if [[ "$split" == train* && ${#speeds[@]} -gt 0 ]]; then
    args+=(--speed "${speeds[@]}")
  fi
  args+=("$@")
  printf '%q ' "${args[@]}"; echo
  "${args[@]}"
  done_splits=$((done_splits + 1))
done

if [[ "$done_splits" -eq 0 ]]; then
  echo "ERROR: none of the splits ($SPLITS) found under $DATA_DIR" >&2
  exit 1
fi
