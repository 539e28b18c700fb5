#!/usr/bin/env bash
# Streaming transcription with bounded latency (utils/transcribe_stream.py, docs/streaming.md):
# words are printed as they become final, "START END WORD" in seconds.
#   CHECKPOINT=ckpt.pt bash scripts/transcribe_stream.sh data/audio/keynote.wav
#   sox speech.wav -t raw -r 16000 -b 16 -e signed -c 1 - | CHECKPOINT=ckpt.pt bash scripts/transcribe_stream.sh -
#   CHECKPOINT=ckpt.pt MIC=true bash scripts/transcribe_stream.sh      # pip install sounddevice
# The first argument is the source: an audio file, or - for raw 16 kHz 16-bit mono PCM on standard
# input; MIC=true records from the microphone instead (Ctrl-C ends it). Extra arguments go to
# utils/transcribe_stream.py unchanged. MODEL_CONFIG= (empty) uses the checkpoint's own config.
# Latency: CHUNK_SECONDS + RIGHT_CONTEXT of audio, plus the compute of one step.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python.sh
source scripts/lib/launcher.sh

: "${CHECKPOINT:=/checkpoints/jasper_fp16.pt}"
: "${MODEL_CONFIG=}"  # empty: the config stored in the checkpoint
: "${CHUNK_SECONDS:=1.0}"
: "${LEFT_CONTEXT:=2.0}"
: "${RIGHT_CONTEXT:=1.0}"
: "${WARMUP_SECONDS:=2.0}"
: "${MIC:=false}"
: "${PREDICTION_FILE:=}"
: "${EMA:=true}"
: "${AMP:=false}"
: "${PRECISION:=fp16}"
: "${CPU:=false}"
: "${CUDNN_BENCHMARK:=false}"
: "${FOLD_BATCHNORM:=true}"
: "${SKIP_MASKS:=true}"
: "${FFT_CONVS:=false}"
: "${COMPILE:=false}"
: "${CUDA_GRAPHS:=false}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

args=(
  utils/transcribe_stream.py
  --ckpt="$CHECKPOINT"
  --chunk_seconds="$CHUNK_SECONDS"
  --left_context="$LEFT_CONTEXT"
  --right_context="$RIGHT_CONTEXT"
  --warmup_seconds="$WARMUP_SECONDS"
)
add_inference_model_args
[[ "$MIC" == true ]] && args+=(--mic)
[[ -n "$PREDICTION_FILE" ]] && args+=(--save_predictions="$PREDICTION_FILE")

cmd=("$PYTHON" "${args[@]}" "$@")
# The command goes to stderr: stdout carries the words, for a pipe to read.
printf '%q ' "${cmd[@]}" >&2
echo >&2
exec "${cmd[@]}"
