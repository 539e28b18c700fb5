"""Inference, evaluation and the latency benchmark with NeMo's real .nemo QuartzNet and with a
QuartzNet config."""

from __future__ import annotations

import json

import numpy as np
import torch

import inference
from common.metrics import ctc_greedy_text
from jasper import config
from tests.conftest import AUDIO, CONFIGS, REFERENCE, recording_entry, run_launcher, write_manifest

NEMO = REFERENCE / "nemo" / "quartznet_small.nemo"
OUTPUTS = REFERENCE / "nemo" / "quartznet_small_outputs.npz"


def launch(script: str, **env: str) -> str:
    return run_launcher(script, env=env).stdout


def test_nemo_checkpoint_transcribes_like_nemo(tmp_path):
    ref = np.load(OUTPUTS)
    vocabulary = [str(v) for v in ref["vocabulary"]]
    predictions = tmp_path / "pred.txt"
    argv = ["--ckpt", str(NEMO), "--transcribe_wav", str(AUDIO / "goforward.wav"),
            str(AUDIO / "example1.wav"), "--pad_leading", "0", "--cpu",
            "--save_predictions", str(predictions), "--output_dir", str(tmp_path)]  # fmt: skip
    assert inference.main(argv) == 0
    got = dict(line.split("\t", 1) for line in predictions.read_text().splitlines())
    for name in ("goforward", "example1"):
        expected = ctc_greedy_text(ref[f"greedy_{name}"].tolist(), vocabulary)
        assert got[str(AUDIO / f"{name}.wav")] == expected


def test_evaluation_with_nemo_and_benchmark_with_quartznet(tmp_path):
    # A manifest of two recordings with their transcripts.
    entries = [
        recording_entry(AUDIO / f"{name}.wav", AUDIO, (AUDIO / f"{name}.txt").read_text().strip())
        for name in ("goforward", "librivox/sense_and_sensibility_0880")
    ]
    manifest = write_manifest(tmp_path / "eval.json", entries)
    out = launch(
        "evaluation.sh", DATA_DIR=str(AUDIO), VAL_MANIFESTS=str(manifest), MODEL_CONFIG="",
        CHECKPOINT=str(NEMO), OUTPUT_DIR=str(tmp_path), BATCH_SIZE="2", NUM_WORKERS="0",
    )  # fmt: skip
    assert "WER" in out

    cfg = config.load(CONFIGS / "quartznet_tiny.yaml")
    model = config.build_model(cfg)
    ckpt = tmp_path / "qn.pt"
    torch.save({"state_dict": model.state_dict(), "config": cfg, "labels": cfg["labels"]}, ckpt)
    launch(
        "inference_benchmark.sh", CHECKPOINT=str(ckpt), MODEL_CONFIG="", OUTPUT_DIR=str(tmp_path),
        NUM_STEPS="30", NUM_WARMUP_STEPS="1", BATCH_SIZE_SEQ="1", MAX_DURATION_SEQ="2",
    )  # fmt: skip
    rows = json.loads((tmp_path / "inference_benchmark.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["latency_ms"]["dnn_latency_0.5"] > 0
