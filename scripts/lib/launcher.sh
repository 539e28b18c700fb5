# Shared by the launchers in scripts/: the CPU fallback and the distributed launch. Sourced, not run.
# Expects NUM_GPUS and DALI_DEVICE to be set by the caller's defaults, and records which of them the
# user set explicitly *before* the defaults were applied (launcher_explicit, below).

# Which variables did the user set? Called at source time, before the caller's `: "${VAR:=...}"`.
launcher_explicit=" "
for _v in NUM_GPUS DALI_DEVICE; do
  [[ -n "${!_v:-}" ]] && launcher_explicit+="$_v "
done
unset _v

# positional NAME... -- ARGS...: assign the leading ARGS that are not options (do not start with
# "-") to the NAMEs in order; the rest go to the array launcher_rest (passed to the Python script).
positional() {
  local names=()
  while [[ $# -gt 0 && "$1" != -- ]]; do names+=("$1"); shift; done
  shift
  local name
  for name in "${names[@]}"; do
    [[ $# -gt 0 && "$1" != -* ]] || break
    printf -v "$name" '%s' "$1"
    shift
  done
  launcher_rest=("$@")
}

have_cuda() {
  "${PYTHON:-python3}" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}

# Without CUDA: one CPU process and the PyTorch loader, unless the user asked otherwise; DALI on the
# GPU without a GPU is an error.
cpu_fallback() {
  if have_cuda; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # as upstream: GPU processes need no CPU threads
    return 0
  fi
  local notes=()
  if [[ "$launcher_explicit" != *" NUM_GPUS "* && "$NUM_GPUS" != 1 ]]; then
    NUM_GPUS=1
    notes+=("NUM_GPUS=1")
  fi
  if [[ "$DALI_DEVICE" == gpu ]]; then
    if [[ "$launcher_explicit" == *" DALI_DEVICE "* ]]; then
      echo "error: DALI_DEVICE=gpu but no CUDA device is visible; use DALI_DEVICE=cpu or none" >&2
      exit 2
    fi
    DALI_DEVICE=none
    notes+=("DALI_DEVICE=none")
  fi
  if [[ "${AMP:-false}" == true && "${PRECISION:-fp16}" == fp16 ]]; then
    echo "note: AMP with fp16 on a CPU is slow; PRECISION=bf16 is the CPU choice" >&2
  fi
  if [[ ${#notes[@]} -gt 0 ]]; then
    echo "No CUDA device found: running on the CPU with ${notes[*]} (set them explicitly to override)."
  fi
}

# run_python_maybe_distributed N script.py args...: torchrun with N processes per node when N > 1
# or when several nodes take part, else the script in this process. Several nodes: NNODES (default
# 1), NODE_RANK (0), MASTER_ADDR (127.0.0.1) and MASTER_PORT (29500), the same on every node but
# NODE_RANK; one node: a standalone rendezvous on a free port (scripts/slurm/ starts one per node).
run_python_maybe_distributed() {
  local nproc=$1
  shift
  local nnodes=${NNODES:-1}
  local cmd
  if [[ "$nnodes" -gt 1 ]]; then
    cmd=("$PYTHON" -m torch.distributed.run --nnodes="$nnodes" --node_rank="${NODE_RANK:-0}"
         --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}"
         --nproc_per_node="$nproc" "$@")
  elif [[ "$nproc" -gt 1 ]]; then
    cmd=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$nproc" "$@")
  else
    cmd=("$PYTHON" "$@")
  fi
  printf '%q ' "${cmd[@]}"
  echo
  exec "${cmd[@]}"
}

# add_inference_model_args: append inference.py's model and speed flags to the array `args`, from
# MODEL_CONFIG (empty: the checkpoint's config), AMP, PRECISION, EMA, CPU, CUDNN_BENCHMARK,
# FOLD_BATCHNORM, SKIP_MASKS, FFT_CONVS, COMPILE and CUDA_GRAPHS.
add_inference_model_args() {
  [[ -n "$MODEL_CONFIG" ]] && args+=(--model_config="$MODEL_CONFIG")
  [[ "$AMP" == true ]] && args+=(--amp --precision="$PRECISION")
  [[ "$EMA" == true ]] && args+=(--ema) || args+=(--no-ema)
  [[ "$CPU" == true ]] && args+=(--cpu)
  [[ "$CUDNN_BENCHMARK" == true ]] && args+=(--cudnn_benchmark) || args+=(--no-cudnn_benchmark)
  [[ "$FOLD_BATCHNORM" == true ]] && args+=(--fold_batchnorm) || args+=(--no-fold_batchnorm)
  [[ "$SKIP_MASKS" == true ]] && args+=(--skip_masks) || args+=(--no-skip_masks)
  args+=(--fft_convs="$FFT_CONVS")  # auto: on CPUs only
  [[ "$COMPILE" == true ]] && args+=(--compile)
  [[ "$CUDA_GRAPHS" == true ]] && args+=(--cuda_graphs)
  return 0
}
