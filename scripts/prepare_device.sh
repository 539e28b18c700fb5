#!/usr/bin/env bash
# Makes ready, on this machine, what the GPU machine lacks for bench/gpu_check.sh, and prints the
# exact device runs that carry it there (docs/gpu_check.md). The GPU machine has torch, numpy, onnx,
# onnxruntime, pyyaml, tqdm, tensorboard and pytest, and no package index: the recipe's other
# imports travel as wheels for CPython 3.12 on x86-64 Linux, in WHEEL_DIR (git-ignored), within the
# 64 MiB that one run may carry together with the working tree. librosa is not needed (the recipe
# does not import it) and neither is espeakng-loader (the check's corpus is made of tones).
#   bash scripts/prepare_device.sh                  # the small wheels (2.3 MB)
#   WITH_DALI=true bash scripts/prepare_device.sh   # and DALI, in parts (../shared/tools/device_wheels.sh)
# Offline, pip fails: the message names the package it could not fetch.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python.sh

: "${WITH_DALI:=false}"
: "${WHEEL_DIR:=.whl}"
: "${CHECK_DIR:=gpu_check}"   # the folder under the run's $OUT that bench/gpu_check.sh fills
: "${PYTHON:=python3}"  # unless .venv/bin/python exists: scripts/lib/python.sh

carry_limit=$((64 * 1024 * 1024))  # bytes one device run may carry, working tree included
dali_dir=.device-wheels            # ../shared/tools/device_wheels.sh's folder
# The versions the recipe's tests run with; no dependency of theirs is on the GPU machine either.
wheels=(
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12  # common/audio.py: libsndfile (inside the wheel)
  soxr==1.1.0                                    # common/audio.py: resampling, speed perturbation
  anyascii==0.3.3                                # common/text/cleaners.py, imported with the text code
  inflect==7.6.0 more-itertools==11.2.1 typeguard==4.6.1  # common/text/numbers.py: digits in text
)
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)

rm -rf "$WHEEL_DIR"
mkdir -p "$WHEEL_DIR"
pip_log=$(mktemp)
trap 'rm -f "$pip_log"' EXIT
for spec in "${wheels[@]}"; do
  if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${platforms[@]}" -d "$WHEEL_DIR" "$spec" > "$pip_log" 2>&1; then
    echo "error: pip could not download $spec (no network or package index here, or no wheel" \
      "for CPython 3.12 on manylinux x86-64); pip said:" >&2
    tail -n 4 "$pip_log" >&2
    exit 1
  fi
done

# Ignored by git, so that the folders travel only when a run's carry names them.
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for folder in "$WHEEL_DIR" "$dali_dir"; do
  if ! git check-ignore -q "$folder/x.whl"; then
    echo "/${folder#./}/" >> "$exclude"
  fi
done

size() { du -cb "$@" 2>/dev/null | tail -n 1 | cut -f 1; }
mib() { echo "$(( ($1 + 1048575) / 1048576 )) MiB"; }
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null \
  | awk '$2 == "total" { s += $1 } END { print s + 0 }')
small=$(size "$WHEEL_DIR")
echo "Wheels in $WHEEL_DIR ($(mib "$small")): $(cd "$WHEEL_DIR" && echo *.whl)"
echo "The working tree that travels with every run: $(mib "$tree")."

parts=()
final_carry="[\"$WHEEL_DIR\"]"
install="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEEL_DIR/*.whl"
if [[ "$WITH_DALI" == true ]]; then
  bash ../shared/tools/device_wheels.sh > "$pip_log" 2>&1 || true
  if ! compgen -G "$dali_dir/parts/*/part-*" > /dev/null; then
    echo "error: ../shared/tools/device_wheels.sh could not download DALI (nvidia-dali-cuda130);" \
      "it said:" >&2
    cat "$pip_log" >&2
    exit 1
  fi
  # device_wheels.sh cuts 50 MB parts; a part must fit beside this working tree in one run.
  part_bytes=$(( (carry_limit - tree - 2 * 1048576) / 1048576 * 1048576 ))
  for folder in "$dali_dir"/parts/*/; do
    name=$(basename "$folder")
    if (( $(stat -c %s "$(ls "$folder"part-* | head -n 1)") > part_bytes )); then
      cat "$folder"part-* > "$dali_dir/$name.joined"
      rm "$folder"part-*
      split -b "$part_bytes" -d -a 2 "$dali_dir/$name.joined" "${folder}part-"
      rm "$dali_dir/$name.joined"
    fi
    for part in "$folder"part-*; do parts+=("$part"); done
  done
  echo "DALI in ${#parts[@]} parts of at most $(mib "$part_bytes") ($dali_dir); its small" \
    "dependencies in $dali_dir/small ($(mib "$(size "$dali_dir/small")"))."
  final_carry="[\"$WHEEL_DIR\", \"$dali_dir/small\"]"
  install="for d in /tmp/big/*/; do cat \$d/part-* > /tmp/\$(basename \$d); done && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/*.whl $dali_dir/small/*.whl $WHEEL_DIR/*.whl"
fi
if (( small + tree > carry_limit )); then
  echo "error: $WHEEL_DIR and the working tree ($(mib $((small + tree)))) exceed one run's 64 MiB" >&2
  exit 1
fi

echo
echo "Device runs (the run tool), back to back: the machine keeps /tmp only while it stays warm,"
echo "about 30 s after each run. Device time: 1-2 minutes to start, 8 for the check, and about"
echo "20 s per part before it."
n=0
for part in "${parts[@]}"; do
  n=$((n + 1))
  dir=/tmp/big/$(basename "$(dirname "$part")")
  echo "  run $n: carry [\"$part\"], timeout_s 120, command:"
  echo "    mkdir -p $dir && cp $part $dir/"
done
echo "  run $((n + 1)): carry $final_carry, timeout_s 600, command:"
echo "    $install && export PYTHONPATH=/tmp/site || exit; bash bench/gpu_check.sh \$OUT/$CHECK_DIR"
echo "It returns \$OUT/$CHECK_DIR/gpu_check.log, summary.json and summary.md (docs/gpu_check.md)."
echo "Every latency cell of every variant takes a session of its own (about 9 minutes with the"
echo "start): the same install, then STAGES=latency BUDGET_LATENCY=420 bash bench/gpu_check.sh \$OUT/latency"
