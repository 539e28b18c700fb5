"""Shared paths, manifest and corpus helpers, and the launcher runner.

Tests read repository files only (tests/data, data/audio, configs) and write what they make to
``tmp_path``. Test modules import the helpers from here (``from tests.conftest import ...``), never
from one another.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
REFERENCE = DATA / "reference"
AUDIO = REPO / "data" / "audio"
CONFIGS = REPO / "configs"
TINY_CONFIG = CONFIGS / "jasper_tiny.yaml"
FULL_CONFIG = CONFIGS / "jasper10x5dr_speedp-online_speca.yaml"
SAMPLE_RATE = 16000  # Hz, the recipe's rate
WORDS = ["go", "stop", "left", "right", "up", "down", "yes", "no"]  # make_corpus's vocabulary

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------
# Manifests in upstream's schema: the entries utils/convert_librispeech.py writes (a JSON list of
# {transcript, files: [{fname, speed, duration, num_samples, ...}], original_duration,
# original_num_samples}, fname relative to the dataset folder).


def file_entry(
    fname: str, n_samples: int, speed: float = 1, sample_rate: int = SAMPLE_RATE
) -> dict:
    """One item of an entry's ``files``: a 16-bit mono PCM WAV of ``n_samples``."""
    return {"fname": fname, "speed": speed, "duration": n_samples / sample_rate,
            "num_samples": n_samples, "sample_rate": float(sample_rate), "channels": 1,
            "bitdepth": 16, "bitrate": 16.0 * sample_rate, "encoding": "Signed Integer PCM",
            "silent": False}  # fmt: skip


def manifest_entry(transcript: str | None, files: list[dict]) -> dict:
    """An utterance: its ``files`` (speed variants) and the speed-1.0 file's length.

    ``transcript=None`` leaves the key out, as for audio to transcribe without a reference.
    """
    one = next(f for f in files if f["speed"] == 1)
    entry = {"transcript": transcript, "files": files, "original_duration": one["duration"],
             "original_num_samples": one["num_samples"]}  # fmt: skip
    if transcript is None:
        del entry["transcript"]
    return entry


def recording_entry(path: Path, data_dir: Path, transcript: str | None) -> dict:
    """The entry of an existing recording (e.g. one of data/audio), fname relative to data_dir."""
    info = sf.info(str(path))
    fname = str(path.relative_to(data_dir))
    return manifest_entry(transcript, [file_entry(fname, info.frames, 1, info.samplerate)])


def write_manifest(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps(entries, indent=2))
    return path


def make_corpus(root: Path, n: int, seed: int, name: str, max_words: int = 3) -> Path:
    """``n`` utterances of 1 to ``max_words`` of :data:`WORDS`, each word a 0.25 s tone whose pitch
    the word picks (+ 50 ms of silence), with a little noise: WAVs in ``root/name/`` and the
    manifest ``root/name.json``. Learnable in a few CPU steps; the same for the same seed."""
    rng = np.random.default_rng(seed)
    (root / name).mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        words = list(rng.choice(WORDS, size=rng.integers(1, max_words + 1)))
        pieces = []
        for w in words:
            t = np.arange(int(0.25 * SAMPLE_RATE)) / SAMPLE_RATE
            pieces.append(0.3 * np.sin(2 * np.pi * (200 + 80 * WORDS.index(w)) * t))
            pieces.append(np.zeros(800))
        audio = np.concatenate(pieces).astype(np.float32)
        audio += 0.01 * rng.standard_normal(audio.size).astype(np.float32)
        fname = f"{name}/utt{i:03d}.wav"
        sf.write(root / fname, audio, SAMPLE_RATE, subtype="PCM_16")
        entries.append(manifest_entry(" ".join(words), [file_entry(fname, audio.size)]))
    return write_manifest(root / f"{name}.json", entries)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """The training tests' corpus: 24 training and 8 validation utterances of :func:`make_corpus`
    (a module may define its own ``corpus``, which then takes precedence)."""
    root = tmp_path_factory.mktemp("corpus")
    return {
        "root": root,
        "train": make_corpus(root, 24, seed=1, name="train"),
        "val": make_corpus(root, 8, seed=2, name="val"),
    }


# --------------------------------------------------------------------------------------------
# Launchers


def run_launcher(
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    unset: Sequence[str] = (),
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """``bash scripts/<script> args...`` from the repository root with this interpreter as
    ``PYTHON``, the variables in ``unset`` removed from the environment and ``env`` added; the
    launcher must succeed (the assertion shows the ends of its output)."""
    full = {k: v for k, v in os.environ.items() if k not in unset}
    full.update(PYTHON=sys.executable, **(env or {}))
    run = subprocess.run(
        ["bash", f"scripts/{script}", *args], cwd=REPO, env=full, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def load_script(folder: str, name: str):
    """``REPO/folder/name.py`` (triton/ and bench/ hold scripts, not packages) as a module named
    ``<folder>_<name>``, with its folder on sys.path for the script's own plain imports."""
    path = str(REPO / folder)
    if path not in sys.path:
        sys.path.insert(0, path)
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
