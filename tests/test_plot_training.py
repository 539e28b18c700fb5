"""utils/plot_training.py: the quick start's training-curve picture from a DLLogger JSON log."""

from __future__ import annotations

import json

from utils.plot_training import curves, plot


def write_log(path, records) -> None:
    lines = [json.dumps({"type": "LOG", "step": step, "data": data}) for step, data in records]
    lines.insert(0, json.dumps({"type": "LOG", "step": "PARAMETER", "data": {"epochs": 2}}))
    path.write_text("".join(f"DLLL {line}\n" for line in lines))


def test_curves_use_global_steps_and_keep_train_and_dev_wer(tmp_path):
    log = tmp_path / "nvlog.json"
    write_log(
        log,
        [
            ([1, 5, 10], {"train_loss": 80.0, "train_wer": 100.0, "train_lrate": 0.003}),
            ([1, 10, 10], {"dev_wer": 70.0}),
            ([1, 10, 10], {"dev_ema_wer": 75.0}),
            ([2, 5, 10], {"train_loss": 20.0, "train_wer": 40.0}),
            ([2, 10, 10], {"dev_wer": 30.0}),
            ([], {"train_avg_loss": 50.0}),  # a summary line: no step of its own
        ],
    )
    got = curves(log)
    assert got["train_loss"] == [(5, 80.0), (15, 20.0)]
    assert got["train_wer"] == [(5, 100.0), (15, 40.0)]
    assert got["dev_wer"] == [(10, 70.0), (20, 30.0)]
    assert got["dev_ema_wer"] == [(10, 75.0)]

    png = tmp_path / "out" / "curve.png"
    plot(log, png, title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
