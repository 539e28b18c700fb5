"""utils/average_checkpoints.py: the element-wise mean of a run's checkpoints, a checkpoint that
inference and training load, and clear errors for inputs that do not belong together."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import train
from common.checkpoint import (
    CheckpointError,
    atomic_save,
    best_wer_from_checkpoint,
    load_checkpoint,
)
from jasper.transcribe import Transcriber, load_model
from tests.conftest import TINY_CONFIG, make_corpus
from utils.average_checkpoints import average_checkpoints, main


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A 2-epoch tiny run that saves after each epoch (with EMA weights)."""
    root = tmp_path_factory.mktemp("corpus")
    corpus = {
        "root": root,
        "train": make_corpus(root, 24, seed=1, name="train"),
        "val": make_corpus(root, 8, seed=2, name="val"),
    }
    out = tmp_path_factory.mktemp("run")
    args = [
        "--model_config", str(TINY_CONFIG),
        "--dataset_dir", str(root),
        "--train_manifests", str(corpus["train"]),
        "--val_manifests", str(corpus["val"]),
        "--output_dir", str(out),
        "--dali_device", "none", "--device", "cpu", "--num_workers", "0",
        "--batch_size", "8", "--epochs", "2", "--lr", "0.01", "--warmup_epochs", "1",
        "--hold_epochs", "0", "--ema", "0.9", "--seed", "3", "--eval_frequency", "1000",
        "--save_frequency", "1", "--save_best_from", "1000",
    ]  # fmt: skip
    assert train.main(args) == 0
    return {
        "dir": out,
        "args": args,
        "epochs": [out / "Jasper_epoch1_checkpoint.pt", out / "Jasper_epoch2_checkpoint.pt"],
        "wav": root / "val" / "utt000.wav",
    }


def assert_mean(averaged: dict, first: dict, second: dict) -> None:
    """Floating entries: the float64 mean, exactly; integer entries: the newest (``second``)."""
    assert averaged.keys() == first.keys()
    integers = 0
    for key, value in averaged.items():
        a, b = first[key], second[key]
        if value.is_floating_point():
            assert value.dtype == b.dtype, key
            assert torch.equal(value, ((a.double() + b.double()) / 2).to(b.dtype)), key
        else:
            integers += 1
            assert torch.equal(value, b), key
    assert integers  # the BatchNorm counts were checked


def test_last_two_checkpoints_average_the_ema_weights(run, tmp_path, capsys):
    out = tmp_path / "averaged.pt"
    assert main(["--output", str(out), "--last", "2", "--dir", str(run["dir"])]) == 0
    assert "averaged the ema weights of 2 checkpoints, steps [3, 6]" in capsys.readouterr().out
    first, second = (load_checkpoint(p) for p in run["epochs"])
    averaged = load_checkpoint(out)
    assert_mean(averaged["state_dict"], first["ema_state_dict"], second["ema_state_dict"])
    assert any("running_mean" in k for k in averaged["state_dict"])
    bn_count = next(k for k in averaged["state_dict"] if k.endswith("num_batches_tracked"))
    assert first["ema_state_dict"][bn_count] != second["ema_state_dict"][bn_count]
    for key, value in averaged["ema_state_dict"].items():
        assert torch.equal(value, averaged["state_dict"][key])
    assert averaged["optimizer"] is None
    assert (averaged["epoch"], averaged["step"]) == (second["epoch"], second["step"])
    assert averaged["config"] == second["config"] and averaged["labels"] == second["labels"]
    assert best_wer_from_checkpoint(averaged) == math.inf
    assert averaged["averaged_from"]["weights"] == "ema"


def test_named_raw_weights_take_integers_from_the_newest_in_any_order(run, tmp_path):
    first, second = (load_checkpoint(p) for p in run["epochs"])
    newest_last = average_checkpoints(run["epochs"], "raw")
    newest_first = average_checkpoints(run["epochs"][::-1], "raw")
    assert newest_last["ema_state_dict"] is None
    assert_mean(newest_last["state_dict"], first["state_dict"], second["state_dict"])
    for key, value in newest_last["state_dict"].items():
        assert torch.equal(value, newest_first["state_dict"][key]), key


def test_the_average_transcribes_and_starts_training(run, tmp_path, capsys):
    out = tmp_path / "averaged.pt"
    assert main(["--output", str(out), *map(str, run["epochs"])]) == 0
    model, cfg = load_model(out, ema=True)
    assert torch.equal(model.state_dict()["decoder.layers.0.weight"],
                       load_checkpoint(out)["state_dict"]["decoder.layers.0.weight"])  # fmt: skip
    text = Transcriber(model, cfg).transcribe_file(run["wav"]).text
    assert isinstance(text, str) and set(text) <= set(cfg["labels"])
    capsys.readouterr()
    fresh = tmp_path / "fine-tune"
    args = [*run["args"], "--output_dir", str(fresh), "--ckpt", str(out)]
    assert train.main(args) == 0
    assert f"resumed from {out}: epoch 3, step 6" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Inputs that do not fit


def synthetic(path: Path, **changes) -> Path:
    ckpt = {
        "epoch": 1,
        "step": 3,
        "state_dict": {"conv.weight": torch.ones(2, 3), "bn.num_batches_tracked": torch.tensor(3)},
        "ema_state_dict": None,
        "config": {"jasper": {"encoder": {"activation": "relu"}}},
        "labels": [" ", "a"],
    }
    atomic_save({**ckpt, **changes}, path)
    return path


SHAPE = {"conv.weight": torch.ones(2, 4), "bn.num_batches_tracked": torch.tensor(6)}
MISMATCHES = [
    ({"state_dict": SHAPE}, "auto",
     r"b\.pt: conv\.weight is torch\.float32 \(2, 4\) but torch\.float32 \(2, 3\)"),
    ({"state_dict": {"conv.weight": torch.ones(2, 3)}}, "auto",
     r"bn\.num_batches_tracked is missing from .*b\.pt"),
    ({"labels": [" ", "b"]}, "auto", r"b\.pt has labels \[' ', 'b'\]"),
    ({"config": {"jasper": {"encoder": {"activation": "hardtanh"}}}}, "auto",
     r"different configs \(first difference: jasper\.encoder\.activation\)"),
    ({"ema_state_dict": {"conv.weight": torch.ones(2, 3)}}, "ema",
     r"a\.pt has no EMA weights: use --weights raw"),
]  # fmt: skip


@pytest.mark.parametrize("changes, weights, message", MISMATCHES)
def test_mismatched_inputs_are_errors_naming_the_file_and_key(tmp_path, changes, weights, message):
    a = synthetic(tmp_path / "a.pt")
    b = synthetic(tmp_path / "b.pt", step=6, **changes)
    with pytest.raises(CheckpointError, match=message):
        average_checkpoints([a, b], weights)


def test_command_line_errors(run, tmp_path, capsys):
    out = str(tmp_path / "averaged.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(run["epochs"][0].read_bytes()[:1000])
    assert main(["--output", out, str(run["epochs"][0]), str(broken)]) == 1
    assert f"error: cannot read checkpoint {broken}" in capsys.readouterr().err
    assert main(["--output", out, "--last", "3", "--dir", str(run["dir"])]) == 1
    assert "holds 2 Jasper checkpoints, fewer than --last 3" in capsys.readouterr().err
    for argv, message in [
        (["--last", "2"], "--last and --dir go together"),
        ([str(run["epochs"][0]), "--last", "2", "--dir", str(run["dir"])], "not both"),
        ([], "name the checkpoints to average"),
    ]:
        with pytest.raises(SystemExit):
            main(["--output", out, *argv])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--output", str(run["dir"] / "Jasper_epoch3_checkpoint.pt"), "--last", "2",
              "--dir", str(run["dir"])])  # fmt: skip
    assert "which --resume would pick up" in capsys.readouterr().err


def test_files_in_torch_legacy_format_are_averaged(tmp_path):
    # Checkpoints saved before torch 1.6 (or with _use_new_zipfile_serialization=False) cannot be
    # memory-mapped; they are read whole.
    paths = []
    for step, value in [(3, 1.0), (6, 4.0)]:
        paths.append(tmp_path / f"legacy{step}.pt")
        ckpt = {"step": step, "state_dict": {"w": torch.full((2,), value, dtype=torch.float64)}}
        torch.save(ckpt, paths[-1], _use_new_zipfile_serialization=False)
    averaged = average_checkpoints(paths)
    assert torch.equal(averaged["state_dict"]["w"], torch.full((2,), 2.5, dtype=torch.float64))
    assert averaged["averaged_from"]["weights"] == "raw"
