"""Training at scale: exact resume on every rank, evaluation with uneven shards, non-finite
gradients, the weight-decay option, gradient clipping and the best checkpoint's WER.

Several processes run through ``torchrun`` with gloo on the CPU, each with one thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train
from common.checkpoint import load_checkpoint
from common.logger import parse_json_log
from tests.conftest import REFERENCE, REPO, TINY_CONFIG, make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("scale_corpus")
    return {
        "root": root,
        "train": make_corpus(root, 24, seed=11, name="train"),
        "val": make_corpus(root, 3, seed=12, name="val"),
        "one": make_corpus(root, 1, seed=13, name="one"),
    }


@pytest.fixture(scope="module")
def noisy_config(tmp_path_factory) -> Path:
    """The tiny config with dropout in every block and SpecAugment: random draws every step."""
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    for block in cfg["jasper"]["encoder"]["blocks"]:
        block["dropout"] = 0.2
    cfg["input_train"]["filterbank_features"]["spec_augment"] = {
        "freq_masks": 2, "max_freq": 8, "time_masks": 2, "max_time": 10,
    }  # fmt: skip
    path = tmp_path_factory.mktemp("cfg") / "noisy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def args_for(corpus: dict, out: Path, *extra: str, config: Path = TINY_CONFIG) -> list[str]:
    return [
        "--model_config", str(config), "--dataset_dir", str(corpus["root"]),
        "--train_manifests", str(corpus["train"]), "--val_manifests", str(corpus["val"]),
        "--output_dir", str(out), "--dali_device", "none", "--device", "cpu",
        "--num_workers", "0", "--batch_size", "4", "--grad_accumulation_steps", "1",
        "--epochs", "2", "--lr", "0.01", "--warmup_epochs", "0", "--hold_epochs", "1",
        "--ema", "0", "--seed", "5", "--log_frequency", "1", "--prediction_frequency", "1",
        "--eval_frequency", "1000", "--save_frequency", "1", "--save_best_from", "0",
        "--no-resume", *extra,
    ]  # fmt: skip


def torchrun(nproc: int, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "train.py", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def test_two_process_resume_continues_every_ranks_random_draws(corpus, noisy_config, tmp_path):
    """4 steps straight = 2 steps, stop, resume, 2 steps, with dropout and SpecAugment drawing
    different numbers on each rank (before, every rank got rank 0's random state back)."""
    common = ("--dtype", "float64", "--epochs", "1")
    straight, split = tmp_path / "straight", tmp_path / "split"
    torchrun(2, args_for(corpus, straight, *common, config=noisy_config))
    torchrun(2, args_for(corpus, split, *common, "--max_steps_this_job", "1", config=noisy_config))
    stopped = load_checkpoint(split / "Jasper_epoch1_step1_checkpoint.pt")
    rngs = stopped["train_state"]["rank_rngs"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch_rng"], rngs[1]["torch_rng"])
    torchrun(2, args_for(corpus, split, *common, "--resume", config=noisy_config))
    a, b = (
        weights(straight / "Jasper_epoch1_checkpoint.pt"),
        weights(split / "Jasper_epoch1_checkpoint.pt"),
    )
    assert load_checkpoint(straight / "Jasper_epoch1_checkpoint.pt")["step"] == 3
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-12), key


def test_evaluation_with_a_rank_that_has_no_utterance(corpus, tmp_path):
    """One validation utterance for two processes: rank 1 evaluates nothing and must not hang
    (evaluation through DDP broadcast buffers in a collective that rank 1 never joined)."""
    out = tmp_path / "uneven"
    args = args_for(corpus, out, "--epochs", "1", "--eval_frequency", "1")
    args[args.index("--val_manifests") + 1] = str(corpus["one"])
    torchrun(2, args, timeout=180)
    records = [r["data"] for r in parse_json_log(out / "nvlog.json") if r["type"] == "LOG"]
    assert sum("dev_wer" in r for r in records) >= 3


def test_nonfinite_gradients_skip_the_step(corpus, tmp_path, monkeypatch, capsys):
    """A finite loss whose backward overflows must not reach the weights (fp32: no GradScaler)."""
    out = tmp_path / "nan_grad"
    calls = {"n": 0}
    original = train.train_step

    def poisoned(run, batch, last_micro_batch):
        result = original(run, batch, last_micro_batch)
        calls["n"] += 1
        if calls["n"] == 2:
            next(run.model.parameters()).grad.fill_(float("inf"))
        return result

    monkeypatch.setattr(train, "train_step", poisoned)
    assert train.main(args_for(corpus, out, "--epochs", "1")) == 0
    ckpt = load_checkpoint(out / "Jasper_epoch1_checkpoint.pt")
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
    assert ckpt["step"] == 5  # 6 micro-batches of 4, one step skipped
    assert "non-finite gradient at step 2; step skipped" in capsys.readouterr().out


@pytest.mark.parametrize("decay", [True, False])
def test_weight_decay_of_norms_and_biases_is_an_option(corpus, tmp_path, decay):
    out = tmp_path / f"wd{decay}"
    flag = "--weight_decay_norm_and_bias" if decay else "--no-weight_decay_norm_and_bias"
    assert (
        train.main(args_for(corpus, out, "--epochs", "1", "--max_steps_this_job", "1", flag)) == 0
    )
    groups = load_checkpoint(out / "Jasper_epoch1_step1_checkpoint.pt")["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == ([1e-3] if decay else [1e-3, 0.0])
    assert train.get_parser().get_default("weight_decay_norm_and_bias") is True  # upstream's


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_clip_norm_clips_the_gradients_the_optimizer_sees(corpus, tmp_path, monkeypatch, clip):
    norms = []
    original = train.optimizer_step

    def spy(run):
        step = run.optimizer.step

        def record(*a, **kw):
            grads = [p.grad for p in run.model.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            return step(*a, **kw)

        run.optimizer.step = record
        try:
            return original(run)
        finally:
            del run.optimizer.step

    monkeypatch.setattr(train, "optimizer_step", spy)
    extra = ("--epochs", "1", "--max_steps_this_job", "3", "--clip_norm", str(clip))
    assert train.main(args_for(corpus, tmp_path / "clip", *extra)) == 0
    assert len(norms) == 3
    if clip:
        assert max(norms) <= clip * (1 + 1e-4)
    else:
        assert min(norms) > 1e-2  # the tiny model's raw gradients are far larger


def test_best_checkpoint_records_the_wer_that_made_it_best(corpus, tmp_path):
    out = tmp_path / "best"
    assert train.main(args_for(corpus, out, "--epochs", "1", "--eval_frequency", "2")) == 0
    dev = [r["data"]["dev_wer"] for r in parse_json_log(out / "nvlog.json")
           if r["type"] == "LOG" and "dev_wer" in r["data"]]  # fmt: skip
    best = load_checkpoint(out / "Jasper_best_checkpoint.pt")
    assert best["best_wer_unit"] == "fraction"  # upstream's unit
    assert best["best_wer"] == pytest.approx(min(dev) / 100, rel=1e-4)


def test_parameter_groups_cover_every_parameter_once():
    model = train.config.build_model(yaml.safe_load(TINY_CONFIG.read_text()))
    groups = train.parameter_groups(model, decay_norm_and_bias=False)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    assert json.dumps([g.get("weight_decay") for g in groups]) == "[null, 0.0]"


def test_an_upstream_checkpoint_continued_writes_a_best_checkpoint(corpus, tmp_path, monkeypatch):
    """Upstream stores best_wer as a fraction: its 0.75 is 75 %, which a dev WER of 60 % beats
    (read as percent, as before, 0.75 % was never beaten and no best file was ever written)."""
    source = load_checkpoint(REFERENCE / "small_model" / "checkpoint.pt")
    assert "best_wer_unit" not in source and 0 < source["best_wer"] <= 1  # upstream's format
    source["best_wer"] = 0.75
    upstream = tmp_path / "upstream.pt"
    torch.save(source, upstream)
    # The small model does not know the tone corpus: give the evaluation a WER that a real
    # continued run could reach, to test the comparison and the unit it is stored in.
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: {"loss": 1.0, "wer": 60.0, "took": 0.0})
    out = tmp_path / "continued"
    args = args_for(corpus, out, "--ckpt", str(upstream), "--epochs", "4", "--eval_frequency", "2")
    args[args.index("--model_config") + 1] = str(REFERENCE / "small_model" / "config.yaml")
    assert train.main(args) == 0
    best = load_checkpoint(out / "Jasper_best_checkpoint.pt")
    assert best["best_wer"] == pytest.approx(0.60) and best["best_wer_unit"] == "fraction"
    assert best["step"] == 44  # the first evaluation after step 42
