"""Fine-tuning (INIT_CHECKPOINT= / --init_from): start a new run from another model's weights,
also to a label set with other characters (upstream's most asked question: "size mismatch for
decoder" after changing the labels)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from common.checkpoint import load_checkpoint
from tests.conftest import REFERENCE, REPO, make_corpus

SMALL = REFERENCE / "small_model"
# German-like labels: no q, x, z; four new letters. Upstream's checkpoint names no labels: its
# 29 classes are English's (space, a-z, apostrophe, blank).
NEW_LABELS = [" ", *"abcdefghijklmnoprstuvwy", "ä", "ö", "ü", "ß", "'"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("finetune")
    cfg = yaml.safe_load((SMALL / "config.yaml").read_text())
    cfg["labels"] = NEW_LABELS
    config = root / "german.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    make_corpus(root, 8, seed=31, name="train")
    return {"root": root, "config": config}


def run_train(setup: dict, out: Path, **env: str) -> subprocess.CompletedProcess:
    full = {
        **os.environ, "PYTHON": sys.executable, "DATA_DIR": str(setup["root"]),
        "MODEL_CONFIG": str(setup["config"]), "OUTPUT_DIR": str(out),
        "TRAIN_MANIFESTS": str(setup["root"] / "train.json"),
        "VAL_MANIFESTS": str(setup["root"] / "train.json"),
        "BATCH_SIZE": "4", "GRAD_ACCUMULATION_STEPS": "1", "EPOCHS": "1", "WARMUP_EPOCHS": "0",
        "HOLD_EPOCHS": "1", "EMA": "0", "NUM_WORKERS": "0", "SAVE_FREQUENCY": "1", **env,
    }  # fmt: skip
    return subprocess.run(
        ["bash", "scripts/train.sh"], cwd=REPO, env=full, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_finetune_an_upstream_checkpoint_to_other_labels(setup, tmp_path):
    out = tmp_path / "german"
    # LR 1e-9 (no floor): a few real steps that leave the weights within 1e-6 of where they started.
    run = run_train(
        setup,
        out,
        INIT_CHECKPOINT=str(SMALL / "checkpoint.pt"),
        LEARNING_RATE="1e-9",
        MIN_LEARNING_RATE="0",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"initialised from {SMALL / 'checkpoint.pt'}: kept" in run.stdout
    assert (
        "keeping the rows of the 25 labels both share and the blank; new: 'ä' 'ö' 'ü' 'ß'"
        in run.stdout
    )

    source = load_checkpoint(SMALL / "checkpoint.pt")["ema_state_dict"]  # EMA: the better model
    tuned = load_checkpoint(out / "Jasper_epoch1_checkpoint.pt")
    assert tuned["step"] == 2 and tuned["labels"] == NEW_LABELS
    weights = tuned["state_dict"]
    for key, value in weights.items():
        if key.startswith("encoder.") and value.is_floating_point() and "running" not in key:
            assert torch.allclose(value, source[key], atol=1e-6), key
    english = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]
    w_new, w_old = weights["decoder.layers.0.weight"], source["decoder.layers.0.weight"]
    assert w_new.shape[0] == len(NEW_LABELS) + 1
    for i, label in enumerate(NEW_LABELS):
        if label in english:
            assert torch.allclose(w_new[i], w_old[english.index(label)], atol=1e-6), label
        else:
            assert not torch.allclose(w_new[i], w_old[0], atol=1e-3), label  # fresh rows
    assert torch.allclose(w_new[-1], w_old[-1], atol=1e-6)  # the blank
    assert "optimizer" in tuned and int(tuned["optimizer"]["state"][0]["step"]) == 2  # afresh


def test_finetune_with_the_same_labels_keeps_everything(setup, tmp_path):
    out = tmp_path / "english"
    run = run_train(
        setup, out, MODEL_CONFIG=str(SMALL / "config.yaml"), INIT_CHECKPOINT=str(SMALL / "checkpoint.pt"),
        LEARNING_RATE="0.001", EPOCHS="1",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "(the classifier included)" in run.stdout


def test_a_checkpoint_of_another_shape_is_a_clear_error(setup, tmp_path):
    tiny = REPO / "configs" / "jasper_tiny.yaml"
    run = run_train(setup, tmp_path / "bad", MODEL_CONFIG=str(tiny),
                    INIT_CHECKPOINT=str(SMALL / "checkpoint.pt"))  # fmt: skip
    assert run.returncode == 2
    assert "fine-tune with the config the checkpoint was trained with" in run.stderr
    assert "Traceback" not in run.stderr
