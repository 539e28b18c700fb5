#!/usr/bin/env bash
# CTC inference on a LibriSpeech split with the recipe's defaults (upstream
# scripts/inference.sh): greedy, or beam search with an LM (DECODER, LM, ...). Decoding settings
# left unset come from the checkpoint when it carries them (jasper/decoding_settings.py). Every variable below can be set in the environment; positional
# arguments fill DATA_DIR, MODEL_CONFIG, OUTPUT_DIR, CHECKPOINT. Extra arguments after those four go
# to inference.py unchanged (e.g. --transcribe_wav FILE).
#
# The manifest is VAL_MANIFESTS when set, else $DATA_DIR/librispeech-${DATASET}-wav.json;
# VAL_MANIFESTS= (set but empty) means none; with --transcribe_wav/--transcribe_filelist and neither
# VAL_MANIFESTS nor DATASET set, no manifest is read and the outputs go to ./results (transcripts.tsv).
# Predictions go to PREDICTION_FILE (default ${OUTPUT_DIR}/${DATASET}.predictions); set it empty
# (PREDICTION_FILE=) to write none. LOGITS_FILE saves the per-utterance log-probs.
# MODEL_CONFIG= (empty) uses the config stored in the checkpoint (this recipe's checkpoints).
# INT8=FILE runs the acoustic model from an int8 ONNX file on the CPU (docs/cpu_inference.md).
# Without a CUDA device NUM_GPUS and DALI_DEVICE fall back to one CPU process and the PyTorch
# loader (a line says so); values you set explicitly always win.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python.sh
source scripts/lib/launcher.sh

positional DATA_DIR MODEL_CONFIG OUTPUT_DIR CHECKPOINT -- "$@"
set -- "${launcher_rest[@]}"

# Your own audio (--transcribe_wav / --transcribe_filelist): no LibriSpeech manifest unless
# VAL_MANIFESTS or DATASET is set, and the outputs in ./results unless OUTPUT_DIR is set.
own_audio=false
for arg in "$@"; do
  [[ "$arg" == --transcribe_wav* || "$arg" == --transcribe_filelist* ]] && own_audio=true
done
if [[ "$own_audio" == true ]]; then
  [[ -z "${VAL_MANIFESTS+set}" && -z "${DATASET:-}" ]] && VAL_MANIFESTS=
  [[ -z "${OUTPUT_DIR:-}" ]] && OUTPUT_DIR=results
  [[ -z "${PREDICTION_FILE+set}" ]] && PREDICTION_FILE="$OUTPUT_DIR/transcripts.tsv"
fi

: "${DATA_DIR:=/datasets/LibriSpeech}"
: "${MODEL_CONFIG=configs/jasper10x5dr_speedp-online_speca.yaml}"
: "${OUTPUT_DIR:=/results}"
: "${CHECKPOINT:=/checkpoints/jasper_fp16.pt}"
: "${DATASET:=test-other}"
: "${VAL_MANIFESTS=$DATA_DIR/librispeech-${DATASET}-wav.json}"  # set but empty: no manifest
: "${LOG_FILE:=}"
: "${CUDNN_BENCHMARK:=false}"
: "${MAX_DURATION:=}"
: "${PAD_TO_MAX_DURATION:=false}"
: "${PAD_LEADING:=}"  # empty: the checkpoint's decoding settings, else 16
: "${NUM_GPUS:=1}"
: "${NUM_STEPS:=0}"
: "${NUM_WARMUP_STEPS:=0}"
: "${AMP:=false}"
: "${PRECISION:=fp16}"
: "${BATCH_SIZE:=64}"
: "${EMA:=true}"
: "${SEED:=0}"
: "${DALI_DEVICE:=gpu}"
: "${CPU:=false}"
: "${LOGITS_FILE:=}"
: "${PREDICTION_FILE=${OUTPUT_DIR}/${DATASET}.predictions}"  # set but empty: no predictions
: "${FOLD_BATCHNORM:=true}"
: "${SKIP_MASKS:=true}"
: "${FFT_CONVS:=auto}"
: "${COMPILE:=false}"
: "${CUDA_GRAPHS:=false}"
: "${INT8:=}"  # empty: none; else an int8 ONNX file (python -m jasper.int8) for the network, CPU only
: "${NUM_WORKERS:=4}"
: "${DECODER:=}"     # these five, empty: the checkpoint's decoding settings (utils/tune_lm.py
: "${BEAM_WIDTH:=}"  # --checkpoint writes them), else greedy, 32, no LM, 0.5, 1.0; LM=none: no LM
: "${LM:=}"
: "${LM_ALPHA:=}"
: "${LM_BETA:=}"
: "${OUTPUT_FORMAT:=txt}"
: "${VAD:=false}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

cpu_fallback
if [[ "$CPU" == true && "$DALI_DEVICE" == gpu ]]; then
  if [[ "$launcher_explicit" == *" DALI_DEVICE "* ]]; then
    echo "error: CPU=true but DALI_DEVICE=gpu; use DALI_DEVICE=cpu or none" >&2
    exit 2
  fi
  DALI_DEVICE=none
  echo "CPU=true: using DALI_DEVICE=none (set it explicitly to override)."
fi
mkdir -p "$OUTPUT_DIR"

read -r -a val_manifests <<< "$VAL_MANIFESTS"
args=(
  inference.py
  --ckpt="$CHECKPOINT"
  --dataset_dir="$DATA_DIR"
  --output_dir="$OUTPUT_DIR"
  --batch_size="$BATCH_SIZE"
  --seed="$SEED"
  --steps="$NUM_STEPS"
  --warmup_steps="$NUM_WARMUP_STEPS"
  --dali_device="$DALI_DEVICE"
  --num_workers="$NUM_WORKERS"
)
[[ ${#val_manifests[@]} -gt 0 ]] && args+=(--val_manifests "${val_manifests[@]}")
add_inference_model_args
[[ -n "$LOG_FILE" ]] && args+=(--log_file="$LOG_FILE")
[[ -n "$PREDICTION_FILE" ]] && args+=(--save_predictions="$PREDICTION_FILE")
[[ -n "$LOGITS_FILE" ]] && args+=(--save_logits="$LOGITS_FILE")
read -r -a output_formats <<< "$OUTPUT_FORMAT"
args+=(--output_format "${output_formats[@]}")
[[ -n "$PAD_LEADING" ]] && args+=(--pad_leading="$PAD_LEADING")
[[ -n "$INT8" ]] && args+=(--int8="$INT8")
[[ -n "$DECODER" ]] && args+=(--decoder="$DECODER")
[[ -n "$BEAM_WIDTH" ]] && args+=(--beam_width="$BEAM_WIDTH")
[[ -n "$LM" ]] && args+=(--lm="$LM")
[[ -n "$LM_ALPHA" ]] && args+=(--lm_alpha="$LM_ALPHA")
[[ -n "$LM_BETA" ]] && args+=(--lm_beta="$LM_BETA")
[[ "$VAD" == true ]] && args+=(--vad)
if [[ -n "$MAX_DURATION" ]]; then
  args+=(--override_config "input_val.audio_dataset.max_duration=$MAX_DURATION"
         --override_config "input_val.filterbank_features.max_duration=$MAX_DURATION")
fi
if [[ "$PAD_TO_MAX_DURATION" == true ]]; then
  args+=(--override_config "input_val.audio_dataset.pad_to_max_duration=True"
         --override_config "input_val.filterbank_features.pad_to_max_duration=True")
fi

run_python_maybe_distributed "$NUM_GPUS" "${args[@]}" "$@"
