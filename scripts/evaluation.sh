#!/usr/bin/env bash
# WER of a checkpoint on a LibriSpeech split (upstream scripts/evaluation.sh): inference.sh
# with DATASET=test-other and no predictions file by default. Set PREDICTION_FILE to a path to keep
# the predictions; PREDICTION_FILE= (empty) writes none (upstream's inference.sh re-defaulted it
# with `:=`, so its evaluation.sh always wrote predictions).
# All of inference.sh's variables and positional arguments apply.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${DATASET:=test-other}"
: "${PREDICTION_FILE=}"
export DATASET PREDICTION_FILE

exec bash scripts/inference.sh "$@"
