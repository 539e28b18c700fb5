"""QuartzNet trains through the recipe's launcher with each of its optimizers."""

from __future__ import annotations

import numpy as np
import pytest

from common.logger import parse_json_log
from tests.conftest import CONFIGS, make_corpus, run_launcher


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("qn_corpus")
    return root, make_corpus(root, 16, seed=7, name="train")


@pytest.mark.parametrize(
    ("optimizer", "lr"),
    [("novograd", 0.01), ("fused_novograd", 0.01), ("lamb", 0.01), ("adamw", 0.003)],
)
def test_tiny_quartznet_trains_with_each_optimizer(corpus, tmp_path, optimizer, lr):
    root, manifest = corpus
    env = {
        "DATA_DIR": str(root),
        "MODEL_CONFIG": str(CONFIGS / "quartznet_tiny.yaml"),
        "OUTPUT_DIR": str(tmp_path),
        "TRAIN_MANIFESTS": str(manifest),
        "VAL_MANIFESTS": str(manifest),
        "NUM_GPUS": "1",
        "GPU_BATCH_SIZE": "4",
        "GRAD_ACCUMULATION": "1",
        "OPTIMIZER": optimizer,
        "LEARNING_RATE": str(lr),
        "EPOCHS": "3",
        "WARMUP_EPOCHS": "0",
        "HOLD_EPOCHS": "10",
        "EMA": "0",
        "EVAL_FREQUENCY": "1000",
        "SAVE_FREQUENCY": "100",
        "NUM_WORKERS": "0",
    }
    run_launcher("train_quartznet.sh", env=env)
    records = [r for r in parse_json_log(tmp_path / "nvlog.json") if r["type"] == "LOG"]
    assert any(r["data"].get("optimizer") == optimizer for r in records if r["step"] == "PARAMETER")
    losses = [r["data"]["train_loss"] for r in records if "train_loss" in r["data"]]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    assert (tmp_path / "QuartzNet_epoch3_checkpoint.pt").exists()
