#!/usr/bin/env bash
# Inference latency sweep (upstream scripts/inference_benchmark.sh): for every audio
# duration in MAX_DURATION_SEQ and batch size in BATCH_SIZE_SEQ, NUM_WARMUP_STEPS untimed batches,
# then NUM_STEPS timed ones; the data, DNN and data+DNN latencies (90/95/99th percentile and mean,
# ms per batch) of every run form one table, written to ${OUTPUT_DIR}/inference_benchmark.{md,json}
# with the machine it ran on. Each run's JSON log is
# ${OUTPUT_DIR}/perf-infer_dali-${DALI_DEVICE}_amp-${AMP}_dur${D}_bs${B}.json, as upstream.
#
# Data: VAL_MANIFESTS when set, else $DATA_DIR/librispeech-${DATASET}-wav.json when DATA_DIR is
# set, utterances up to each duration padded to it (upstream); otherwise synthetic audio of exactly
# each duration (no dataset needed). Speed options: FOLD_BATCHNORM, SKIP_MASKS, FFT_CONVS,
# COMPILE, CUDA_GRAPHS (see inference.py --help); AMP=true with PRECISION=fp16|bf16.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python.sh
source scripts/lib/launcher.sh

: "${DATA_DIR:=}"
: "${DATASET:=test-other}"
: "${VAL_MANIFESTS:=}"
: "${MODEL_CONFIG=configs/jasper10x5dr_speedp-online_speca.yaml}"
: "${CHECKPOINT:=/checkpoints/jasper_fp16.pt}"
: "${OUTPUT_DIR:=/results}"
: "${CUDNN_BENCHMARK:=true}"
: "${PAD_TO_MAX_DURATION:=true}"
: "${PAD_LEADING:=0}"
: "${NUM_WARMUP_STEPS:=10}"
: "${NUM_STEPS:=500}"
: "${AMP:=false}"
: "${PRECISION:=fp16}"
: "${DALI_DEVICE:=cpu}"
: "${CPU:=false}"
: "${EMA:=true}"
: "${FOLD_BATCHNORM:=true}"
: "${SKIP_MASKS:=true}"
: "${FFT_CONVS:=auto}"
: "${COMPILE:=false}"
: "${CUDA_GRAPHS:=false}"
: "${NUM_WORKERS:=4}"
: "${BATCH_SIZE_SEQ:=1 2 4 8 16}"
: "${MAX_DURATION_SEQ:=2 7 16.7}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

NUM_GPUS=1  # one process: latencies are per device
cpu_fallback
if [[ -z "$VAL_MANIFESTS" && -n "$DATA_DIR" ]]; then
  VAL_MANIFESTS="$DATA_DIR/librispeech-${DATASET}-wav.json"
fi
if [[ -n "$VAL_MANIFESTS" ]]; then
  echo "Data: $VAL_MANIFESTS (utterances up to each duration, padded to it)."
else
  echo "Data: synthetic audio of each duration (no VAL_MANIFESTS or DATA_DIR given)."
fi
mkdir -p "$OUTPUT_DIR"
table="$OUTPUT_DIR/inference_benchmark"
rm -f "$table.json" "$table.md"

read -r -a durations <<< "$MAX_DURATION_SEQ"
read -r -a batch_sizes <<< "$BATCH_SIZE_SEQ"
for duration in "${durations[@]}"; do
  for batch_size in "${batch_sizes[@]}"; do
    args=(
      inference.py
      --ckpt="$CHECKPOINT"
      --output_dir="$OUTPUT_DIR"
      --log_file="$OUTPUT_DIR/perf-infer_dali-${DALI_DEVICE}_amp-${AMP}_dur${duration}_bs${batch_size}.json"
      --batch_size="$batch_size"
      --pad_leading="$PAD_LEADING"
      --steps="$NUM_STEPS"
      --warmup_steps="$NUM_WARMUP_STEPS"
      --num_workers="$NUM_WORKERS"
      --latency_table="$table"
    )
    if [[ -n "$VAL_MANIFESTS" ]]; then
      read -r -a val_manifests <<< "$VAL_MANIFESTS"
      args+=(--val_manifests "${val_manifests[@]}" --dataset_dir="${DATA_DIR:-.}"
             --dali_device="$DALI_DEVICE"
             --override_config "input_val.audio_dataset.max_duration=$duration"
             --override_config "input_val.filterbank_features.max_duration=$duration")
      if [[ "$PAD_TO_MAX_DURATION" == true ]]; then
        args+=(--override_config "input_val.audio_dataset.pad_to_max_duration=True"
               --override_config "input_val.filterbank_features.pad_to_max_duration=True")
      fi
    else
      args+=(--synthetic_duration="$duration")
    fi
    add_inference_model_args
    cmd=("$PYTHON" "${args[@]}" "$@")
    printf '%q ' "${cmd[@]}"
    echo
    "${cmd[@]}"
  done
done
echo "Latency table: $table.md and $table.json"
cat "$table.md"
