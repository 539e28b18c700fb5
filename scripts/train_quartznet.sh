#!/usr/bin/env bash
# QuartzNet 15x5 with upstream QuartzNet's launcher defaults (DeepLearningExamples,
# PyTorch/SpeechRecognition/QuartzNet/scripts/train.sh): micro-batch 72 x 2
# accumulation per GPU, fused Novograd, LR 0.01, gamma 0.981, 260 epochs (warmup 2, hold 140),
# evaluation every 241 steps, milestones 100 and 200, best checkpoint from epoch 200.
# Everything else, and every variable here, works as in scripts/train.sh (which this runs).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${MODEL_CONFIG:=configs/quartznet15x5_speedp-online-1.15_speca.yaml}"
: "${GPU_BATCH_SIZE:=72}"
: "${GRAD_ACCUMULATION:=2}"
: "${OPTIMIZER:=fused_novograd}"
: "${LEARNING_RATE:=0.01}"
: "${LR_EXP_GAMMA:=0.981}"
: "${EPOCHS:=260}"
: "${WARMUP_EPOCHS:=2}"
: "${HOLD_EPOCHS:=140}"
: "${EVAL_FREQUENCY:=241}"
: "${PREDICTION_FREQUENCY:=241}"
: "${KEEP_MILESTONES:=100 200}"
: "${SAVE_BEST_FROM:=200}"
export MODEL_CONFIG GPU_BATCH_SIZE GRAD_ACCUMULATION OPTIMIZER LEARNING_RATE LR_EXP_GAMMA EPOCHS \
  WARMUP_EPOCHS HOLD_EPOCHS EVAL_FREQUENCY PREDICTION_FREQUENCY KEEP_MILESTONES SAVE_BEST_FROM

global_batch=$(( ${NUM_GPUS:-8} * GPU_BATCH_SIZE * GRAD_ACCUMULATION ))
if [[ "$global_batch" != 1152 ]]; then
  echo "note: global batch $global_batch differs from the recipe's 8 x 144 = 1152; retune LEARNING_RATE" >&2
fi
exec bash scripts/train.sh "$@"
