#!/usr/bin/env bash
# Creates (or reuses) the environment of the CPU Triton server used for development and CI: a
# virtualenv with nvidia-pytriton (whose wheel bundles the `tritonserver` binary and its Python
# backend), numpy<2 (what pytriton and the backend stub need), torch and onnxruntime (what the
# Python-backend models run), plus a backend folder holding the stub for this Python version and an
# env file that run_server.sh reads. Kept apart from .venv because of the numpy<2 pin.
# Idempotent: a second run with the same settings returns at once.
#   TRITON_VENV          the server's virtualenv     (default: .venv-triton)
#   PYTHON               interpreter that creates it (default: python3)
#   TORCH_VERSION        torch for the models        (default: 2.13.0)
#   PYTRITON_PACKAGE     the server                  (default: nvidia-pytriton==0.7.0)
#   ONNXRUNTIME_PACKAGE  ONNX models                 (default: onnxruntime)
# Exit status 3: nvidia-pytriton has no build for this platform (it needs Linux x86_64 or aarch64
# with glibc >= 2.35, and a backend stub for this Python version).
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${TRITON_VENV:=.venv-triton}"
: "${PYTHON:=python3}"
: "${TORCH_VERSION:=2.13.0}"
: "${PYTRITON_PACKAGE:=nvidia-pytriton==0.7.0}"
: "${ONNXRUNTIME_PACKAGE:=onnxruntime}"

stamp="$TRITON_VENV/.installed"
want="$PYTRITON_PACKAGE torch=$TORCH_VERSION $ONNXRUNTIME_PACKAGE numpy<2 at $(pwd)"  # env.sh holds absolute paths
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$TRITON_VENV/server/env.sh" ]]; then
  exit 0
fi

# The wheel's platform: refuse clearly rather than let pip say "no matching distribution".
if ! "$PYTHON" - <<'PY'
import platform, sys
libc, version = platform.libc_ver()
glibc = tuple(int(x) for x in version.split(".")[:2]) if libc == "glibc" else (0, 0)
ok = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64") and glibc >= (2, 35)
if not ok:
    print(f"nvidia-pytriton needs Linux x86_64/aarch64 with glibc >= 2.35; this is "
          f"{sys.platform} {platform.machine()} {libc} {version}", file=sys.stderr)
sys.exit(0 if ok else 3)
PY
then
  exit 3
fi

[[ -x "$TRITON_VENV/bin/python" ]] || "$PYTHON" -m venv "$TRITON_VENV"
pip=("$TRITON_VENV/bin/python" -m pip install --disable-pip-version-check -q)
cmd=("${pip[@]}" "numpy<2" "$PYTRITON_PACKAGE" "torch==$TORCH_VERSION" "$ONNXRUNTIME_PACKAGE")
printf '%q ' "${cmd[@]}"; echo
"${cmd[@]}"

# The server folder: the bundled binary runs in place (its libraries are found through
# LD_LIBRARY_PATH); the backend folder gets the stub built for this Python version. The stub embeds
# libpython, so Python's own lib folder goes first on LD_LIBRARY_PATH (on Debian a system
# libpython3.X would otherwise be picked); the venv's bin goes first on PATH, which is how the
# embedded interpreter finds the venv's site-packages.
"$TRITON_VENV/bin/python" - "$TRITON_VENV" <<'PY'
import os, shlex, sys, sysconfig
from pathlib import Path
import pytriton

venv = Path(sys.argv[1]).resolve()
dist = Path(pytriton.__file__).resolve().parent / "tritonserver"
libs = dist.parent.parent / "nvidia_pytriton.libs"
version = f"{sys.version_info.major}.{sys.version_info.minor}"
stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
if not stub.is_file():
    print(f"nvidia-pytriton has no backend stub for Python {version}", file=sys.stderr)
    sys.exit(3)
backend = venv / "server" / "backends" / "python"
backend.mkdir(parents=True, exist_ok=True)
for source in (dist / "backends" / "python" / "libtriton_python.so",
               dist / "backends" / "python" / "triton_python_backend_utils.py", stub):
    link = backend / source.name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(source)
env = {
    "TRITONSERVER_BIN": dist / "bin" / "tritonserver",
    "TRITON_BACKEND_DIR": backend.parent,
    "TRITON_LD_LIBRARY_PATH": f"{sysconfig.get_config_var('LIBDIR')}:{libs}",
    "TRITON_PYTHON_BIN": venv / "bin",
}
lines = [f"{k}={shlex.quote(str(v))}" for k, v in env.items()]
(venv / "server" / "env.sh").write_text("\n".join(lines) + "\n")
PY
echo "$want" > "$stamp"
echo "Triton server environment ready: $TRITON_VENV"
