#!/usr/bin/env bash
# One prepared check of the recipe on the GPU it is made for (docs/gpu_check.md): the GPU tests,
# training throughput upstream-style next to ours, a short real training run that resumes, the
# inference latency table of four speed variants with their transcripts compared, DALI feature
# throughput, and the exports checked against PyTorch. Each stage runs under its own time budget
# (`timeout`); a failing stage never stops the next one, and the summary names the failures.
#   bash bench/gpu_check.sh OUT_DIR              # on one H100/H200: about 8 minutes
#   bash bench/gpu_check.sh --dry-run OUT_DIR    # every stage's CPU form at tiny sizes (CI)
# OUT_DIR gets three files: gpu_check.log (everything printed), summary.json and summary.md.
# Intermediate files go to WORK_DIR (default: a new folder under /tmp), which is kept.
# Exit status: 0 when every stage is ok, partial (its budget ran out before every case or latency
# cell was measured; the others are named) or skipped with a reason (no CUDA, no DALI), else 1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python.sh

: "${DRY_RUN:=false}"          # true or 1: the same as --dry-run
: "${WORK_DIR:=}"
: "${STAGES:=gpu_tests train_speed train_run dali export latency}"
: "${OURS_TRAIN:=}"           # levers of train_speed's "ours" form, e.g. "masks=none compile=true"
: "${BUDGET_PREPARE:=25}"     # seconds per stage; a stage also gets what earlier ones left
: "${BUDGET_GPU_TESTS:=40}"
: "${BUDGET_TRAIN_SPEED:=90}"
: "${BUDGET_TRAIN_RUN:=55}"
: "${BUDGET_DALI:=25}"
: "${BUDGET_EXPORT:=45}"
: "${BUDGET_LATENCY:=190}"  # last: the sweep measures what its budget allows, most telling first
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

if [[ "${1:-}" == --dry-run ]]; then
  DRY_RUN=true
  shift
fi
[[ "$DRY_RUN" == 1 ]] && DRY_RUN=true
if [[ $# -ne 1 ]]; then
  echo "usage: bash bench/gpu_check.sh [--dry-run] OUT_DIR" >&2
  exit 2
fi
out_dir=$1
read -r -a stages <<< "$STAGES"
for stage in "${stages[@]}"; do
  budget_var="BUDGET_${stage^^}"
  if [[ ! "$stage" =~ ^[a-z_]+$ || -z "${!budget_var:-}" ]]; then
    echo "error: STAGES: unknown stage $stage (gpu_tests train_speed train_run dali export latency)" >&2
    exit 2
  fi
done
mkdir -p "$out_dir"
[[ -n "$WORK_DIR" ]] || WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
mkdir -p "$WORK_DIR/stages"
log="$out_dir/gpu_check.log"
: > "$log"

# The bench and triton/ scripts import the recipe's packages from this checkout.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
common=(--work "$WORK_DIR")
if [[ "$DRY_RUN" == true ]]; then
  export CUDA_VISIBLE_DEVICES=""  # the CPU form, even on a machine with a GPU
  common+=(--dry-run)
fi
[[ -n "$OURS_TRAIN" ]] && { read -r -a ours <<< "$OURS_TRAIN"; common+=(--ours_train "${ours[@]}"); }

# The CPU forms on a shared 2-core CI runner take up to 3 times what the GPU stages take: there the
# budgets only guard against a hang.
budget_factor=1
[[ "$DRY_RUN" == true ]] && budget_factor=3

# run_stage NAME BUDGET: bench/gpu_check.py NAME with BUDGET seconds plus those the stages before
# left unused, stopped 15 s after that at the latest (it keeps to its budget itself and reports
# what it measured); its exit status, seconds and budget are kept for the summary.
saved=0
run_stage() {
  local name=$1 budget=$(($2 * budget_factor + saved)) start=$SECONDS rc=0
  printf '\n==== %s (budget %s s) %s\n' "$name" "$budget" "$(date -u +%FT%TZ)" | tee -a "$log"
  timeout -k 10 $((budget + 15)) "$PYTHON" bench/gpu_check.py "$name" --budget "$budget" \
    "${common[@]}" 2>&1 | tee -a "$log" || rc=${PIPESTATUS[0]}
  local took=$((SECONDS - start))
  echo "$rc $took $budget" > "$WORK_DIR/stages/$name.exit"
  saved=$((budget > took ? budget - took : 0))
}

echo "GPU check: output $out_dir, work $WORK_DIR, dry run $DRY_RUN, stages: prepare ${stages[*]}" | tee -a "$log"
run_stage prepare "$BUDGET_PREPARE"
for stage in "${stages[@]}"; do
  budget_var="BUDGET_${stage^^}"
  run_stage "$stage" "${!budget_var}"
done
printf '\n==== summary\n' | tee -a "$log"
set +e
"$PYTHON" bench/gpu_check.py summary --out "$out_dir" --stages prepare "${stages[@]}" "${common[@]}" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
exit "$rc"
