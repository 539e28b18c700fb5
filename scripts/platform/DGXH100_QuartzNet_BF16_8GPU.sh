#!/usr/bin/env bash
# H100 80GB, AMP bf16, 8 GPUs: QuartzNet's per-GPU batch of 144 as 72 x 2 micro-batches.
# Usage: bash scripts/platform/DGXH100_QuartzNet_BF16_8GPU.sh [train.sh arguments]
set -euo pipefail
NUM_GPUS=8 AMP=true PRECISION=bf16 GPU_BATCH_SIZE=72 GRAD_ACCUMULATION=2 \
  exec bash "$(dirname "$0")/../train_quartznet.sh" "$@"
