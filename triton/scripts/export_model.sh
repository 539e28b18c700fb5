#!/usr/bin/env bash
# Exports a checkpoint's feature extractor, acoustic model and decoder for Triton (upstream's
# triton/scripts/export_model.sh variables), each file checked against PyTorch right after export.
# Files: $EXPORT_DIR/<precision>/<model>/1/model.{pt,onnx,plan} and $EXPORT_DIR/<precision>/export.json.
#   CHECKPOINT         checkpoint to export; upstream's CHECKPOINT_PATH is accepted too
#                      (default: /checkpoints/nvidia_jasper_210205.pt)
#   MODEL_CONFIG       YAML; empty: the checkpoint's own (default: configs/jasper10x5dr_speedp-offline_speca_nomask.yaml)
#   EMA                export the EMA weights               (default: true)
#   CONVERTS           feature-extractor decoder ts-trace onnx tensorrt, or model names
#                      (default: feature-extractor decoder ts-trace onnx tensorrt: what the model repositories serve;
#                      add feature-extractor-onnx decoder-onnx for the ONNX front and back ends)
#   CONVERT_PRECISIONS (default: fp16 fp32)
#   EXPORT_DIR         (default: triton/model_repo)
#   CHECK_AUDIO        recordings for the checks            (default: data/audio)
#   DEVICE             auto, cpu or cuda: where TorchScript is traced; a CPU trace serves only on
#                      the CPU server (model_repository.py --target cpu) (default: auto)
#   PAD_LEADING        zero feature frames the served extractor puts in front, as inference.sh's
#                      PAD_LEADING (default: the checkpoint's decoding settings, else 16)
#   BATCH_SIZE         TensorRT profile: largest and tuned batch (default: 8)
#   MAX_DURATION       TensorRT profile: longest audio, seconds  (default: 16.7)
#   PYTHON             (default: python3)
# Extra arguments go to triton/export.py unchanged.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/python.sh

[[ -n "${CHECKPOINT_PATH:-}" && -z "${CHECKPOINT:-}" ]] && CHECKPOINT=$CHECKPOINT_PATH
: "${CHECKPOINT:=/checkpoints/nvidia_jasper_210205.pt}"
: "${MODEL_CONFIG=configs/jasper10x5dr_speedp-offline_speca_nomask.yaml}"
: "${EMA:=true}"
: "${CONVERTS:=feature-extractor decoder ts-trace onnx tensorrt}"
: "${CONVERT_PRECISIONS:=fp16 fp32}"
: "${EXPORT_DIR:=triton/model_repo}"
: "${CHECK_AUDIO:=data/audio}"
: "${DEVICE:=auto}"
: "${PAD_LEADING:=}"
: "${BATCH_SIZE:=8}"
: "${MAX_DURATION:=16.7}"
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

read -r -a converts <<< "$CONVERTS"
read -r -a precisions <<< "$CONVERT_PRECISIONS"
read -r -a check_audio <<< "$CHECK_AUDIO"
args=(
  triton/export.py
  --ckpt "$CHECKPOINT"
  --export_dir "$EXPORT_DIR"
  --convert "${converts[@]}"
  --precisions "${precisions[@]}"
  --check_audio "${check_audio[@]}"
  --device "$DEVICE"
  --trt_max_batch "$BATCH_SIZE"
  --trt_opt_batch "$BATCH_SIZE"
  --max_duration "$MAX_DURATION"
)
[[ -n "$MODEL_CONFIG" ]] && args+=(--model_config "$MODEL_CONFIG")
[[ "$EMA" == true ]] && args+=(--ema)
[[ -n "$PAD_LEADING" ]] && args+=(--pad_leading "$PAD_LEADING")

cmd=("$PYTHON" "${args[@]}" "$@")
printf '%q ' "${cmd[@]}"; echo
exec "${cmd[@]}"
