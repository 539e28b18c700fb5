#!/usr/bin/env bash
# Downloads a pretrained QuartzNet 15x5 from NGC into CHECKPOINT_DIR (upstream's download_quartznet.sh):
# en -> nvidia_quartznet_210504.pt (DeepLearningExamples), ca de es fr it pl ru zh ->
# stt_<lang>_quartznet15x5.nemo (NeMo; inference.py reads it directly, utils/convert_nemo.py converts).
# Resumable (<archive>.part). No checksums are published: the first download records the archive's
# size and sha256 (<archive>.checksum.json), later runs verify against them and refuse a mismatch.
# Relative paths are relative to the repository root.
# Usage: [CHECKPOINT_DIR=...] [CSV=...] bash scripts/download_quartznet.sh [en|ca|de|es|fr|it|pl|ru|zh] [args...]
#   LANGUAGE        language of the model         (default: $1, else en)
#   CHECKPOINT_DIR  archive and checkpoint folder (default: pretrained_models/quartznet_${LANGUAGE})
#   CSV             language,url,archive,member,size,sha256 list (default: utils/quartznet_checkpoints.csv)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python.sh

: "${LANGUAGE:=${1:-en}}"
if [[ $# -gt 0 ]]; then shift; fi
: "${CHECKPOINT_DIR:=pretrained_models/quartznet_${LANGUAGE}}"
: "${CSV:=utils/quartznet_checkpoints.csv}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

args=("$PYTHON" utils/download_quartznet.py "$LANGUAGE" "$CHECKPOINT_DIR" --csv "$CSV" "$@")
printf '%q ' "${args[@]}"; echo
"${args[@]}"
