# The recipe's container, on the NGC PyTorch image as upstream: it ships CUDA, torch, DALI and
# TensorRT, so requirements.txt leaves those out (reinstalling them would break the image).
#   bash scripts/docker/build.sh
#   bash scripts/docker/launch.sh DATA_DIR CHECKPOINT_DIR RESULTS_DIR [SCRIPT [ARGS...]]
# A different base: bash scripts/docker/build.sh --build-arg FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:<tag>
ARG FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:24.10-py3
FROM ${FROM_IMAGE_NAME}

ENV PYTHONDONTWRITEBYTECODE=1
WORKDIR /workspace/jasper

# No apt packages: soundfile's wheel bundles libsndfile, soxr replaces sox, and espeakng-loader
# bundles espeak-ng. Requirements first, so that editing the code does not redo this layer.
# Without -U: packages the image already has at a satisfying version stay as NVIDIA built them.
COPY requirements.txt requirements-dev.txt ./
RUN pip install --no-cache-dir -r requirements.txt -r requirements-dev.txt

# The repository (.dockerignore keeps out virtualenvs, data, checkpoints and results).
COPY . .
# The recipe's packages importable from any directory (no dependencies: installed above).
RUN pip install --no-cache-dir --no-deps -e .
