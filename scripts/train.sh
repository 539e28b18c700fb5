#!/usr/bin/env bash
# Train with the recipe's defaults (upstream scripts/train.sh). Every variable below can be
# set in the environment; positional arguments fill DATA_DIR, MODEL_CONFIG, OUTPUT_DIR, CHECKPOINT.
# Extra arguments after those four are passed to train.py unchanged.
# Without a CUDA device the defaults NUM_GPUS=8 and DALI_DEVICE=gpu fall back to one CPU process and
# the PyTorch loader (a line says so); values you set explicitly always win.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python.sh
source scripts/lib/launcher.sh

positional DATA_DIR MODEL_CONFIG OUTPUT_DIR CHECKPOINT -- "$@"
set -- "${launcher_rest[@]}"

# QuartzNet's launcher names are accepted beside Jasper's.
[[ -n "${GRAD_ACCUMULATION:-}" && -z "${GRAD_ACCUMULATION_STEPS:-}" ]] && GRAD_ACCUMULATION_STEPS=$GRAD_ACCUMULATION
if [[ -n "${GPU_BATCH_SIZE:-}" && -z "${BATCH_SIZE:-}" ]]; then
  BATCH_SIZE=$(( GPU_BATCH_SIZE * ${GRAD_ACCUMULATION_STEPS:-2} ))
fi

: "${DATA_DIR:=/datasets/LibriSpeech}"
: "${MODEL_CONFIG:=configs/jasper10x5dr_speedp-online_speca.yaml}"
: "${OUTPUT_DIR:=/results}"
: "${CHECKPOINT:=}"
: "${INIT_CHECKPOINT:=}"
: "${RESUME:=true}"
: "${CUDNN_BENCHMARK:=true}"
: "${NUM_GPUS:=8}"
: "${NNODES:=1}"
: "${NODE_RANK:=0}"
: "${MASTER_ADDR:=127.0.0.1}"
: "${MASTER_PORT:=29500}"
: "${AMP:=false}"
: "${PRECISION:=fp16}"
: "${COMPILE:=false}"  # torch.compile the training step (measured by bench/gpu_check.sh)
: "${BATCH_SIZE:=64}"
: "${GRAD_ACCUMULATION_STEPS:=2}"
: "${OPTIMIZER:=novograd}"
: "${LEARNING_RATE:=0.01}"
: "${MIN_LEARNING_RATE:=0.00001}"
: "${LR_POLICY:=exponential}"
: "${LR_EXP_GAMMA:=0.981}"
: "${LR_ORDER:=published}"
: "${WEIGHT_DECAY:=0.001}"
: "${WEIGHT_DECAY_NORM_AND_BIAS:=true}"
: "${EMA:=0.999}"
: "${SEED:=0}"
: "${EPOCHS:=440}"
: "${WARMUP_EPOCHS:=2}"
: "${HOLD_EPOCHS:=140}"
: "${SAVE_FREQUENCY:=10}"
: "${KEEP_MILESTONES:=100 200 300 400}"
: "${SAVE_BEST_FROM:=380}"
: "${EPOCHS_THIS_JOB:=0}"
: "${DALI_DEVICE:=gpu}"
: "${PAD_TO_MAX_DURATION:=false}"
: "${EVAL_FREQUENCY:=544}"
: "${PREDICTION_FREQUENCY:=544}"
: "${LOG_FREQUENCY:=1}"
: "${NUM_WORKERS:=4}"
: "${TRAIN_MANIFESTS:=$DATA_DIR/librispeech-train-clean-100-wav.json $DATA_DIR/librispeech-train-clean-360-wav.json $DATA_DIR/librispeech-train-other-500-wav.json}"
: "${VAL_MANIFESTS:=$DATA_DIR/librispeech-dev-clean-wav.json}"
: "${MAX_DURATION:=}"
: "${LOG_FILE:=}"
: "${PRE_ALLOCATE:=}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

cpu_fallback
mkdir -p "$OUTPUT_DIR"

read -r -a train_manifests <<< "$TRAIN_MANIFESTS"
read -r -a val_manifests <<< "$VAL_MANIFESTS"
read -r -a milestones <<< "$KEEP_MILESTONES"
args=(
  train.py
  --model_config="$MODEL_CONFIG"
  --dataset_dir="$DATA_DIR"
  --output_dir="$OUTPUT_DIR"
  --train_manifests "${train_manifests[@]}"
  --val_manifests "${val_manifests[@]}"
  --batch_size="$BATCH_SIZE"
  --grad_accumulation_steps="$GRAD_ACCUMULATION_STEPS"
  --optimizer="$OPTIMIZER"
  --lr="$LEARNING_RATE"
  --min_lr="$MIN_LEARNING_RATE"
  --lr_policy="$LR_POLICY"
  --lr_exp_gamma="$LR_EXP_GAMMA"
  --lr_order="$LR_ORDER"
  --weight_decay="$WEIGHT_DECAY"
  --ema="$EMA"
  --seed="$SEED"
  --epochs="$EPOCHS"
  --warmup_epochs="$WARMUP_EPOCHS"
  --hold_epochs="$HOLD_EPOCHS"
  --save_frequency="$SAVE_FREQUENCY"
  --keep_milestones "${milestones[@]}"
  --save_best_from="$SAVE_BEST_FROM"
  --epochs_this_job="$EPOCHS_THIS_JOB"
  --eval_frequency="$EVAL_FREQUENCY"
  --prediction_frequency="$PREDICTION_FREQUENCY"
  --log_frequency="$LOG_FREQUENCY"
  --dali_device="$DALI_DEVICE"
  --num_workers="$NUM_WORKERS"
)
[[ "$AMP" == true ]] && args+=(--amp --precision="$PRECISION")
[[ "$COMPILE" == true ]] && args+=(--compile) || args+=(--no-compile)
[[ "$RESUME" == true ]] && args+=(--resume) || args+=(--no-resume)
[[ "$WEIGHT_DECAY_NORM_AND_BIAS" == true ]] || args+=(--no-weight_decay_norm_and_bias)
[[ "$CUDNN_BENCHMARK" == true ]] && args+=(--cudnn_benchmark) || args+=(--no-cudnn_benchmark)
[[ -n "$CHECKPOINT" ]] && args+=(--ckpt="$CHECKPOINT")
[[ -n "$INIT_CHECKPOINT" ]] && args+=(--init_from="$INIT_CHECKPOINT")
[[ -n "$LOG_FILE" ]] && args+=(--log_file="$LOG_FILE")
[[ -n "$PRE_ALLOCATE" ]] && { read -r -a pre <<< "$PRE_ALLOCATE"; args+=(--pre_allocate_range "${pre[@]}"); }
if [[ -n "$MAX_DURATION" ]]; then
  args+=(--override_config "input_train.audio_dataset.max_duration=$MAX_DURATION"
         --override_config "input_train.filterbank_features.max_duration=$MAX_DURATION")
fi
if [[ "$PAD_TO_MAX_DURATION" == true ]]; then
  args+=(--override_config "input_train.audio_dataset.pad_to_max_duration=True"
         --override_config "input_train.filterbank_features.pad_to_max_duration=True")
fi

run_python_maybe_distributed "$NUM_GPUS" "${args[@]}" "$@"
