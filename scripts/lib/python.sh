# Shared by the launchers in scripts/: the Python interpreter they run. Sourced, not run, from the
# repository root, before the launcher's `: "${PYTHON:=python3}"`.
# PYTHON set in the environment always wins. Unset, it is the virtualenv's interpreter that
# scripts/setup_env.sh (the quick start, scripts/test.sh) creates, ${VENV:-.venv}/bin/python, when
# that exists; otherwise the launcher's default, python3 on PATH.
if [[ -z "${PYTHON:-}" && -x "${VENV:-.venv}/bin/python" ]]; then
  PYTHON="${VENV:-.venv}/bin/python"
fi
