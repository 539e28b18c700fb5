"""The logging facade: DLLogger JSON lines with upstream's metric names, upstream's stdout shape
(DeepLearningExamples Jasper, common/tb_dllogger.py) with one unit per value, TensorBoard."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.logger import (
    LATENCY_RATIOS,
    LATENCY_STAGES,
    METRICS,
    Logger,
    latency_metric,
    parse_json_log,
    progress,
    unique_log_path,
)

TRAIN_STEP = {"loss": 45.2134, "wer": 38.1, "throughput": 512.0, "took": 1.0, "lrate": 1e-2}
EVAL = {"loss": 40.0, "wer": 30.0, "took": 2.5}
PARAMS = {
    "lr": 0.01,
    "epochs": 3,
    "amp": True,
    "model_config": "configs/jasper10x5dr_speedp-online_speca.yaml",
    "val_manifests": ["a.json", "b.json"],
    "seed": None,
    "output_dir": Path("results"),
}


def run_training_log(output_dir: Path, **kwargs) -> Logger:
    """What train.py logs for one step, one evaluation of each model and one epoch average."""
    logger = Logger(output_dir, **kwargs)
    logger.log_params(PARAMS)
    step = {**TRAIN_STEP, "loss": torch.tensor(45.2134), "wer": np.float32(38.1)}
    logger.log((3, 120, 544), step, subset="train", tb_step=1208)
    logger.log((3,), EVAL, subset="dev", tb_step=1208)
    logger.log((3,), EVAL, subset="dev_ema", tb_step=1208)
    logger.log((3,), {"throughput": 500.0, "took": 300.0, "loss": 44.0}, subset="train_avg")
    logger.close()
    return logger


def test_json_log_holds_upstream_metric_names_with_metadata(tmp_path):
    run_training_log(tmp_path, stdout=False)
    lines = (tmp_path / "nvlog.json").read_text().splitlines()
    assert lines and all(line.startswith("DLLL {") for line in lines)
    # DLLogger 1.0.0's exact record: key order, and times as strings holding a float.
    raw = json.loads(lines[0].removeprefix("DLLL "))
    assert list(raw) == ["timestamp", "datetime", "elapsedtime", "type", "step", "data"]
    assert all(isinstance(raw[key], str) for key in ("timestamp", "datetime", "elapsedtime"))
    records = parse_json_log(tmp_path / "nvlog.json")
    assert len(records) == len(lines)

    logged, declared = [], set()
    for record in records:
        assert isinstance(record["timestamp"], float) and record["elapsedtime"] >= 0.0
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", record["datetime"])
        if record["type"] == "METADATA":
            declared.add(record["metric"])
            assert record["metadata"]["format"] == METRICS[record["metric"]].format
        elif record["step"] != "PARAMETER":
            # Metadata comes before the first value, so a reader can format every line.
            assert set(record["data"]) <= declared
            logged.append(record)

    assert [(r["step"], r["data"]) for r in logged] == [
        (
            [3, 120, 544],
            {
                "train_loss": pytest.approx(45.2134),
                "train_wer": pytest.approx(38.1),
                "train_throughput": 512.0,
                "train_took": 1.0,
                "train_lrate": 0.01,
            },
        ),
        ([3], {"dev_loss": 40.0, "dev_wer": 30.0, "dev_took": 2.5}),
        ([3], {"dev_ema_loss": 40.0, "dev_ema_wer": 30.0, "dev_ema_took": 2.5}),
        ([3], {"train_avg_throughput": 500.0, "train_avg_took": 300.0, "train_avg_loss": 44.0}),
    ]
    wer_meta = next(r for r in records if r.get("metric") == "train_wer")["metadata"]
    assert wer_meta == {"name": "wer", "unit": "%", "format": ":>6.2f"}


def test_parameter_lines_hold_every_param_as_json(tmp_path):
    run_training_log(tmp_path, stdout=False)
    params = {}
    for record in parse_json_log(tmp_path / "nvlog.json"):
        if record.get("step") == "PARAMETER":
            assert len(record["data"]) == 1  # one line per argument, as upstream
            params.update(record["data"])
    assert params == {**PARAMS, "output_dir": "results"}


def test_each_run_appends_and_keeps_a_numbered_copy(tmp_path):
    (tmp_path / "nvlog.json.bak").write_text("not a run copy\n")
    run_training_log(tmp_path, stdout=False)
    run_training_log(tmp_path, stdout=False)
    first = parse_json_log(tmp_path / "nvlog.json.1")
    second = parse_json_log(tmp_path / "nvlog.json.2")
    assert len(first) == len(second) > 0
    assert parse_json_log(tmp_path / "nvlog.json") == first + second
    (tmp_path / "nvlog.json.17").touch()
    assert unique_log_path(tmp_path / "nvlog.json") == tmp_path / "nvlog.json.18"


def test_log_file_names_the_json_path(tmp_path):
    log_file = tmp_path / "logs" / "perf-train.json"
    run_training_log(tmp_path / "out", log_file=log_file, stdout=False, tb=False)
    assert parse_json_log(log_file) == parse_json_log(log_file.with_name("perf-train.json.1"))
    assert not (tmp_path / "out").exists()


def test_tensorboard_scalars_per_subset(tmp_path):
    run_training_log(tmp_path, stdout=False)
    expected = {"train": TRAIN_STEP, "dev": EVAL, "dev_ema": EVAL}
    for subset, values in expected.items():
        events = EventAccumulator(str(tmp_path / subset))
        events.Reload()
        assert set(events.Tags()["scalars"]) == set(values)
        for tag, value in values.items():
            (scalar,) = events.Scalars(tag)
            assert scalar.step == 1208
            assert scalar.value == pytest.approx(value, rel=1e-6)
    assert not (tmp_path / "train_avg").exists()  # averages go to stdout and JSON only
    hparams = EventAccumulator(str(tmp_path / "train" / "hparams"))
    hparams.Reload()
    assert hparams.summary_metadata  # the hparams plugin's experiment and session records


def test_stdout_lines_have_upstream_shape(tmp_path, capsys):
    run_training_log(tmp_path, tb=False)
    out = capsys.readouterr().out.splitlines()
    prefix = r"DLL \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\S* - "
    expected = [
        "PARAMETER | lr : 0.01",
        "epoch    3 | iter  120/544 | loss   45.21 | wer  38.10 % | throughput   512 utts/s"
        " | took  1.00 s | lrate 1.00e-02",
        "epoch    3 |   avg dev loss   40.00 |   avg dev wer  30.00 % | took  2.50 s",
        "epoch    3 |   EMA dev loss   40.00 |   EMA dev wer  30.00 % | took  2.50 s",
        "epoch    3 | avg train throughput   500 utts/s | took 300.00 s | avg train loss   44.00",
    ]
    for text in expected:
        assert any(re.fullmatch(prefix + re.escape(text), line) for line in out), text


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("train_throughput", 512.0, "| throughput   512 utts/s"),
        ("train_avg_throughput", 500.0, "| avg train throughput   500 utts/s"),
        ("dev_took", 2.5, "| took  2.50 s"),
        ("train_lrate", 1e-2, "| lrate 1.00e-02"),
        ("train_nonfinite", 3, "| skipped   3 batches"),
        ("train_avg_benchmark_epochs_num", 2, "| over the last   2 epochs"),
        ("eval_wer", 12.345, "| WER 12.35 %"),
        ("data_latency_0.9", 4.0, "| data latency 90%    4.00 ms"),
    ],
)
def test_each_value_is_printed_once_with_its_unit(name, value, shown):
    assert METRICS[name].render(value) == shown


def test_no_label_repeats_its_unit():
    for name, metric in METRICS.items():
        assert metric.unit is None or metric.unit not in metric.label, name


def test_inference_metadata_keys_match_logged_keys(tmp_path, capsys):
    """Upstream's inference.py lost the format of its latency lines: it declared
    ``dnn_latency_0.99`` but logged ``dnn_latency_0_99``."""
    latencies = {
        latency_metric(stage, ratio): 10.0 + i
        for i, (stage, ratio) in enumerate(
            (stage, ratio) for stage in LATENCY_STAGES for ratio in LATENCY_RATIOS
        )
    }
    assert "dnn_latency_0.99" in latencies and "data+dnn_latency_0.5" in latencies
    with Logger(tmp_path, json_name="nvlog_infer.json", tensorboard_subsets=()) as logger:
        logger.log((), {"eval_wer": 12.345})
        logger.log((), latencies)
    records = parse_json_log(tmp_path / "nvlog_infer.json")
    declared = {r["metric"] for r in records if r["type"] == "METADATA"}
    logged = {key for r in records if r["type"] == "LOG" for key in r["data"]}
    assert declared == logged == {"eval_wer", *latencies}
    out = capsys.readouterr().out
    assert "| WER 12.35 %" in out
    assert "| DNN latency 99%   10.00 ms" in out
    assert "| data+DNN latency avg   17.00 ms" in out
    assert not list(tmp_path.glob("*/events.*"))


def test_undeclared_metric_is_an_error(tmp_path):
    with Logger(tmp_path, stdout=False, tb=False) as logger, pytest.raises(KeyError, match="trian"):
        logger.log((1,), {"loss": 1.0}, subset="trian")


def test_disabled_logger_writes_nothing(tmp_path, capsys):
    run_training_log(tmp_path / "out", enabled=False)
    assert not (tmp_path / "out").exists()
    assert capsys.readouterr().out == ""


def test_runs_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.warns(RuntimeWarning, match="TensorBoard") as caught:
        run_training_log(tmp_path, stdout=False)
    assert len(caught) == 1
    assert parse_json_log(tmp_path / "nvlog.json")
    assert not (tmp_path / "train").exists()


def test_progress_bar_only_in_a_terminal(monkeypatch):
    items = [1, 2, 3]
    assert progress(items, total=3, desc="eval") is items  # pytest's stderr is not a terminal

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress(items, enabled=False) is items
    bar = progress(items, total=3, desc="eval")
    assert bar is not items and list(bar) == items
    assert "eval" in sys.stderr.getvalue()


def test_parse_json_log_rejects_foreign_lines(tmp_path):
    path = tmp_path / "log.json"
    path.write_text('DLLL {"type": "LOG", "step": [], "data": {}}\nhello\n')
    with pytest.raises(ValueError, match=r"log\.json:2"):
        parse_json_log(path)
