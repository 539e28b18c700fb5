#!/usr/bin/env bash
# A100 80GB, AMP fp16, 8 GPUs: the recipe's per-GPU batch of 64 in 1 micro-batch(es).
# Usage: bash scripts/platform/DGXA100_Jasper_AMP_8GPU.sh [train.sh arguments]
set -euo pipefail
NUM_GPUS=8 AMP=true PRECISION=fp16 BATCH_SIZE=64 GRAD_ACCUMULATION_STEPS=1 \
  exec bash "$(dirname "$0")/../train.sh" "$@"
