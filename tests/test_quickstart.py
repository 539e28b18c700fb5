"""A shortened quick start, end to end through the real launchers, and its re-run behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jasper import decoding_settings
from tests.conftest import REPO
from utils.make_demo_corpus import TEST_VOICES


def run_quickstart(qs_dir: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "QUICKSTART_DIR": str(qs_dir),
        "VENV": str(Path(sys.executable).parents[1]),  # the environment running the tests
        "TRAIN_UTTS": "96",
        "EVAL_UTTS": "12",
        "EPOCHS": "2",
        "BATCH_SIZE": "16",
        **extra,
    }
    return subprocess.run(
        ["bash", "scripts/quickstart.sh"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip


def test_shortened_quickstart_runs_end_to_end_and_reruns_cleanly(tmp_path):
    qs = tmp_path / "qs"
    first = run_quickstart(qs)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    for stage in ("corpus", "preprocessing", "training", "word LM", "evaluation", "transcribing",
                  "summary"):  # fmt: skip
        assert stage in out
    assert "Test WER by voice (synthetic test-clean" in first.stdout
    assert "goforward.wav" in first.stdout  # the real recordings were transcribed
    results = qs / "results"
    assert (results / "training_curve.png").stat().st_size > 10_000
    assert (results / "Jasper_epoch2_checkpoint.pt").exists()
    # The LM and its tuned weights are stored in the checkpoint: evaluation.sh used them unasked.
    settings = decoding_settings.read(results / "Jasper_best_checkpoint.pt")
    assert settings["decoder"] == "beam" and settings["pad_leading"] == 0
    assert settings["lm"] == str(results / "lm" / "words.3gram.arpa")
    assert "lm_alpha, lm_beta from the checkpoint" in out
    assert len((results / "test-clean.predictions").read_text().splitlines()) == 12 * 3
    table = (results / "test_wer_by_voice.md").read_text()
    for voice in (*TEST_VOICES, "all"):
        assert f"| {voice} |" in table or f"| **{voice}** |" in table
    manifest = qs / "LibriSpeech" / "librispeech-train-clean-100-wav.json"
    manifest_bytes = manifest.read_bytes()
    wav = next((qs / "LibriSpeech" / "train-clean-100-wav").rglob("*.wav"))
    wav_mtime = wav.stat().st_mtime_ns

    # Again: the corpus and manifests are reused, training resumes from its last checkpoint (the
    # schedule is already complete, so it only evaluates) and the later stages run again.
    second = run_quickstart(qs)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert manifest.read_bytes() == manifest_bytes and wav.stat().st_mtime_ns == wav_mtime
    assert "already complete for these arguments: skipped" in second.stdout
    assert "resumed from" in second.stdout
    assert "Test WER by voice (synthetic test-clean" in second.stdout
