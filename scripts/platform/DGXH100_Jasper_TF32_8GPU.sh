#!/usr/bin/env bash
# H100 80GB, TF32, 8 GPUs: the recipe's per-GPU batch of 64 in 1 micro-batch(es).
# Usage: bash scripts/platform/DGXH100_Jasper_TF32_8GPU.sh [train.sh arguments]
set -euo pipefail
NUM_GPUS=8 AMP=false PRECISION=fp16 BATCH_SIZE=64 GRAD_ACCUMULATION_STEPS=1 \
  exec bash "$(dirname "$0")/../train.sh" "$@"
