#!/usr/bin/env bash
# Training throughput sweep (upstream scripts/train_benchmark.sh): runs scripts/train.sh for each
# GPU count and batch size for EPOCHS_THIS_JOB epochs without evaluation or checkpoints, then writes
# a table of sequences/s and mean step time ($OUTPUT_DIR/train_benchmark.{md,json}).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python.sh

: "${DATA_DIR:=/datasets/LibriSpeech}"
: "${OUTPUT_DIR:=/results}"
: "${MODEL_CONFIG:=configs/jasper10x5dr_speedp-online_train-benchmark.yaml}"
: "${TRAIN_MANIFESTS:=$DATA_DIR/librispeech-train-clean-100-wav.json}"
: "${EPOCHS_THIS_JOB:=2}"
: "${EPOCHS:=100000}"
: "${RESUME:=false}"
: "${SAVE_FREQUENCY:=100000}"
: "${EVAL_FREQUENCY:=100000}"
: "${GRAD_ACCUMULATION_STEPS:=1}"
: "${AMP:=false}"
: "${PRECISION:=fp16}"
: "${EMA:=0}"
: "${DALI_DEVICE:=gpu}"
: "${NUM_GPUS_SEQ:=1 4 8}"
: "${BATCH_SIZE_SEQ:=32}"
: "${PRE_ALLOCATE:=1408 1920}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh
export DATA_DIR MODEL_CONFIG TRAIN_MANIFESTS EPOCHS_THIS_JOB EPOCHS RESUME SAVE_FREQUENCY \
  EVAL_FREQUENCY GRAD_ACCUMULATION_STEPS AMP PRECISION EMA PRE_ALLOCATE PYTHON
export VAL_MANIFESTS="" KEEP_MILESTONES="" PREDICTION_FREQUENCY=100000 LOG_FREQUENCY=1

read -r -a gpu_counts <<< "$NUM_GPUS_SEQ"
read -r -a batch_sizes <<< "$BATCH_SIZE_SEQ"
logs=()
for num_gpus in "${gpu_counts[@]}"; do
  for batch_size in "${batch_sizes[@]}"; do
    tag="dali-${DALI_DEVICE}_amp-${AMP}${AMP:+_${PRECISION}}_ngpus${num_gpus}_bs${batch_size}"
    log="$OUTPUT_DIR/perf-train_${tag}.json"
    rm -f "$log"
    NUM_GPUS=$num_gpus BATCH_SIZE=$batch_size DALI_DEVICE=$DALI_DEVICE LOG_FILE=$log \
      OUTPUT_DIR="$OUTPUT_DIR/train_benchmark_$tag" bash scripts/train.sh "$@"
    logs+=("$log")
  done
done
cmd=("$PYTHON" bench/train_table.py --out "$OUTPUT_DIR/train_benchmark" "${logs[@]}")
printf '%q ' "${cmd[@]}"; echo
"${cmd[@]}"
