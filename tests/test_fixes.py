"""Fixes that had no test: the default speed-perturbation probability, the platform presets' AMP
and precision, the DALI thread split per local rank, and bucketing on the DALI path."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.audio import SpeedPerturbation
from common.dali import dali_available
from common.loader import build_loader
from jasper import config
from tests.conftest import REPO, TINY_CONFIG, make_corpus


def test_speed_perturbation_perturbs_every_utterance_by_default():
    """p = 1.0 as DALI does (upstream's PyTorch loader perturbed 1 utterance in 10)."""
    speed = SpeedPerturbation()
    assert speed.p == 1.0
    rng = np.random.default_rng(0)
    factors = [speed.draw(rng) for _ in range(200)]
    assert all(f != 1.0 and 0.85 <= f <= 1.15 for f in factors)
    assert sum(SpeedPerturbation(p=0.1).draw(rng) != 1.0 for _ in range(2000)) < 300


PRESETS = sorted((REPO / "scripts" / "platform").glob("*.sh"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_platform_presets_turn_amp_on_with_their_precision(preset, tmp_path):
    """Each preset's command line (an interpreter that only exits 0 stands for CUDA's)."""
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\nexit 0\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "OUTPUT_DIR": str(tmp_path / "out")}
    run = subprocess.run(["bash", str(preset)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    command = next(line for line in run.stdout.splitlines() if "train.py" in line)
    name = preset.stem
    if "_TF32_" in name:
        assert "--amp" not in command
    else:
        precision = "bf16" if "_BF16_" in name else "fp16"
        assert f"--amp --precision={precision}" in command
    assert "--nproc_per_node=8" in command
    model = "quartznet" if "QuartzNet" in name else "jasper10x5dr"
    assert f"configs/{model}" in command


@pytest.mark.dali
@pytest.mark.skipif(not dali_available(), reason="needs NVIDIA DALI")
def test_dali_threads_are_split_between_the_ranks_of_a_node(monkeypatch):
    from common.dali.data_loader import default_num_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_num_threads(world_size=16) == 2  # 16 cores for 8 ranks on this node
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_num_threads(world_size=4) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert default_num_threads() == 1  # never zero


def batch_durations(loader, utts) -> list[list[float]]:
    """The durations of each batch's utterances, by index into the loader's utterances."""
    by_id = {u.index: u.duration for u in utts}
    plan = loader.sampler if hasattr(loader, "sampler") else loader.loader.batch_sampler
    return [[by_id[utts[i].index] for i in batch] for batch in plan]


@pytest.mark.dali
@pytest.mark.skipif(not dali_available(), reason="needs NVIDIA DALI")
def test_bucketing_groups_lengths_on_the_dali_path(tmp_path):
    """--bucketing was accepted and ignored on the DALI path."""
    make_corpus(tmp_path, 48, seed=41, name="train", max_words=6)
    cfg = config.load(TINY_CONFIG)
    dataset_kw, features_kw = config.input(cfg, "train")

    def spread(bucketing: bool) -> float:
        loader = build_loader(
            [tmp_path / "train.json"], cfg["labels"], dataset_kw, features_kw,
            dataset_dir=tmp_path, batch_size=4, train=True, device=torch.device("cpu"),
            backend="cpu", seed=1, bucketing=bucketing,
        )  # fmt: skip
        loader.set_epoch(1)
        batches = batch_durations(loader, loader.utts)
        return float(np.mean([max(b) - min(b) for b in batches]))

    assert spread(bucketing=True) < 0.5 * spread(bucketing=False)


def test_train_without_data_says_what_to_do_in_one_line(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(tmp_path / "LibriSpeech"),
           "OUTPUT_DIR": str(tmp_path / "out")}  # fmt: skip
    for name in ("TRAIN_MANIFESTS", "VAL_MANIFESTS"):
        env.pop(name, None)
    run = subprocess.run(["bash", "scripts/train.sh"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2
    errors = run.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: manifest not found")
    assert "scripts/download_librispeech.sh" in errors[0] and "quickstart" in errors[0]
