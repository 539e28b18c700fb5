#!/usr/bin/env bash
# Grid-searches the beam decoder's LM weight (ALPHAS), word bonus (BETAS) and beam width
# (BEAM_WIDTHS) on log-probs saved by inference (LOGITS_FILE=... bash scripts/inference.sh), scored
# against the manifest they came from. Writes ${OUTPUT_PREFIX}.md and .json (WER per setting, the
# best) and prints the best setting. Tune on a dev split; evaluate the choice once on test.
# Relative paths are relative to the repository root. Needs requirements-lm.txt.
# Usage: [VAR=value ...] bash scripts/tune_lm.sh [tune_lm.py options]
#   DATA_DIR       data folder of the manifests            (default: /datasets/LibriSpeech)
#   DATASET        split the log-probs come from            (default: dev-other)
#   VAL_MANIFESTS  references       (default: $DATA_DIR/librispeech-${DATASET}-wav.json)
#   LOGITS_FILE    inference.py --save_logits output        (default: /results/${DATASET}.logits.pt)
#   LM             ARPA (.arpa/.arpa.gz) or KenLM binary
#                  (default: pretrained_models/librispeech_lm/4-gram.arpa.gz)
#   ALPHAS BETAS BEAM_WIDTHS  the grid, space-separated     (defaults below)
#   NUM_WORKERS    decoding processes                       (default: 4)
#   OUTPUT_PREFIX  tables to write                          (default: /results/${DATASET}.lm_tuning)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python.sh

: "${DATA_DIR:=/datasets/LibriSpeech}"
: "${DATASET:=dev-other}"
: "${VAL_MANIFESTS:=$DATA_DIR/librispeech-${DATASET}-wav.json}"
: "${LOGITS_FILE:=/results/${DATASET}.logits.pt}"
: "${LM:=pretrained_models/librispeech_lm/4-gram.arpa.gz}"
: "${ALPHAS:=0.5 1.0 1.5 2.0 2.5 3.0}"
: "${BETAS:=-1.0 0.0 1.0 2.0 3.0}"
: "${BEAM_WIDTHS:=32}"
: "${NUM_WORKERS:=4}"
: "${OUTPUT_PREFIX:=/results/${DATASET}.lm_tuning}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

read -ra alphas <<< "$ALPHAS"
read -ra betas <<< "$BETAS"
read -ra beam_widths <<< "$BEAM_WIDTHS"
read -ra manifests <<< "$VAL_MANIFESTS"
args=("$PYTHON" utils/tune_lm.py "$LOGITS_FILE" --manifests "${manifests[@]}"
      --dataset_dir "$DATA_DIR" --lm "$LM" --alphas "${alphas[@]}" --betas "${betas[@]}"
      --beam_widths "${beam_widths[@]}" --num_workers "$NUM_WORKERS" --out "$OUTPUT_PREFIX" "$@")
printf '%q ' "${args[@]}"; echo
"${args[@]}"
