"""The launchers' interpreter: PYTHON when set, else the quick start's virtualenv, else python3.

After the quick start, ``bash scripts/train.sh`` must run the virtualenv's Python (with torch), not
whatever ``python3`` is first on PATH. Each launcher runs here in a copy of scripts/ whose
``.venv/bin/python`` is a stand-in that records how it was called.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

# Stands in for an interpreter: "no CUDA" to the launchers' torch probe, and otherwise a line that
# names how it was called (plus the table file inference_benchmark.sh prints at the end).
FAKE_PYTHON = """#!/usr/bin/env bash
[[ "$1" == -c ]] && exit 1
for a in "$@"; do [[ "$a" == --latency_table=* ]] && : > "${a#--latency_table=}.md"; done
echo "ran: [$0] $*"
"""

# Every launcher that runs Python, with what it needs to get there in an empty folder.
LAUNCHERS = {
    "train.sh": {"OUTPUT_DIR": "out"},
    "train_quartznet.sh": {"OUTPUT_DIR": "out"},
    "train_benchmark.sh": {"OUTPUT_DIR": "out", "NUM_GPUS_SEQ": "1", "DALI_DEVICE": "none"},
    "inference.sh": {"OUTPUT_DIR": "out"},
    "evaluation.sh": {"OUTPUT_DIR": "out"},
    "inference_benchmark.sh": {"OUTPUT_DIR": "out", "BATCH_SIZE_SEQ": "1", "MAX_DURATION_SEQ": "2"},
    "preprocess_librispeech.sh": {"DATA_DIR": "LibriSpeech", "SPLITS": "dev-clean"},
    "download_librispeech.sh": {"DATA_DIR": "LibriSpeech"},
    "download_quartznet.sh": {"CHECKPOINT_DIR": "ckpt"},
    "download_lm.sh": {"LM_DIR": "lm"},
    "tune_lm.sh": {},
    "transcribe_stream.sh": {},
}
# These set PYTHON themselves: the interpreter that creates the virtualenv (setup_env.sh, test.sh)
# or the virtualenv's own (quickstart.sh, after creating it).
MAKE_THE_VIRTUALENV = {"setup_env.sh", "test.sh", "quickstart.sh"}
# Runs pip of PYTHON into a log to download wheels for another machine: tests/test_gpu_check.py.
DOWNLOADS_WHEELS = {"prepare_device.sh"}


def fake_interpreter(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of scripts/ with a stand-in .venv/bin/python beside it."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", root / "scripts")
    fake_interpreter(root / ".venv" / "bin" / "python")
    (root / "LibriSpeech" / "dev-clean").mkdir(parents=True)
    subprocess.run(
        ["git", "init", "-q"], cwd=root, check=True
    )  # prepare_device.sh writes .git/info/exclude
    return root


def interpreters(repo: Path, script: str, **env: str) -> set[Path]:
    """Run ``scripts/<script>`` of ``repo`` with only PATH, LAUNCHERS' variables and ``env``;
    the interpreters it ran."""
    full = {"PATH": os.environ["PATH"], **LAUNCHERS[script], **env}
    run = subprocess.run(
        ["bash", f"scripts/{script}"], cwd=repo, env=full, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    ran = re.findall(r"^ran: \[(.*?)\] ", run.stdout, re.MULTILINE)
    assert ran, run.stdout
    return {(repo / path).resolve() for path in ran}


def test_every_launcher_that_runs_python_is_checked():
    runs_python = {
        p.name
        for p in (REPO / "scripts").glob("*.sh")
        if '"$PYTHON"' in p.read_text() or "run_python_maybe_distributed" in p.read_text()
    }
    assert runs_python - MAKE_THE_VIRTUALENV - DOWNLOADS_WHEELS <= set(LAUNCHERS)


@pytest.mark.parametrize("script", sorted(LAUNCHERS))
def test_launcher_runs_the_virtualenv_python_unless_python_is_set(repo, script):
    assert interpreters(repo, script) == {(repo / ".venv" / "bin" / "python").resolve()}
    mine = fake_interpreter(repo.parent / "my python" / "python3.12")
    assert interpreters(repo, script, PYTHON=str(mine)) == {mine.resolve()}


@pytest.mark.parametrize(
    ("venvs", "env", "expected"),
    [
        ([".venv"], {}, ".venv/bin/python"),
        ([".venv"], {"PYTHON": "/opt/py/bin/python3"}, "/opt/py/bin/python3"),
        ([".venv", "env2"], {"VENV": "env2"}, "env2/bin/python"),
        ([], {}, "python3"),
        ([], {"VENV": "env2"}, "python3"),
    ],
)
def test_python_lib_resolves_the_interpreter(tmp_path, venvs, env, expected):
    for venv in venvs:
        fake_interpreter(tmp_path / venv / "bin" / "python")
    lib = shlex.quote(str(REPO / "scripts" / "lib" / "python.sh"))
    script = f'source {lib}; : "${{PYTHON:=python3}}"; printf %s "$PYTHON"'
    run = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env={"PATH": os.environ["PATH"], **env},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert run.stdout == expected
