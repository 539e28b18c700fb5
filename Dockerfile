# The recipe's container: the NGC PyTorch image ships torch, DALI and TensorRT for the GPU.
# Build: bash scripts/docker/build.sh    Run: bash scripts/docker/launch.sh DATA_DIR CHECKPOINT_DIR RESULTS_DIR
ARG FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:24.10-py3
FROM ${FROM_IMAGE_NAME}

ENV PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/jasper
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
ENV PYTHON=python
