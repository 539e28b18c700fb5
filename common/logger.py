"""Logging facade: one object per process writes metrics to stdout, JSON lines and TensorBoard.

Upstream (NVIDIA DeepLearningExamples, PyTorch/SpeechRecognition/Jasper: common/tb_dllogger.py,
called from train.py and inference.py) logs through NVIDIA DLLogger plus TensorBoard. DLLogger is
not on PyPI, so this module writes the same JSON stream itself: one line per event,

    DLLL {"timestamp": "<unix seconds>", "datetime": "<ISO 8601>", "elapsedtime": "<seconds>",
          "type": "LOG", "step": <step>, "data": {<metric>: <value>}}

where a step is "PARAMETER", [epoch, iter, iters_per_epoch], [epoch], [] or an int. Before a
metric's first value comes a ``"type": "METADATA"`` line with ``"metric"`` and
``"metadata": {"name", "unit", "format"}``. As in DLLogger 1.0.0, ``timestamp`` and
``elapsedtime`` are JSON strings holding a float; :func:`parse_json_log` returns them as floats.

Metric names, stdout labels, units and formats are declared once, in :data:`METRICS`; the JSON
names are upstream's, the stdout line shows each value once, with its unit. Only rank 0 logs: a
disabled :class:`Logger` creates no file and prints nothing.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

Step = str | int | Sequence[int]
"""``"PARAMETER"``, ``(epoch, iter, iters_per_epoch)``, ``(epoch,)``, ``()`` or a plain counter."""


@dataclass(frozen=True)
class Metric:
    """How one metric is shown: stdout label, unit (None = no unit) and ``str.format`` spec."""

    label: str
    unit: str | None
    format: str

    def render(self, value: Any) -> str:
        """``| label value unit`` as upstream's stdout backend prints it."""
        try:
            text = f"{{{self.format}}}".format(value)
        except (TypeError, ValueError):  # e.g. None or a string where a number was declared
            text = str(value)
        fields = [self.label, text] if self.unit is None else [self.label, text, self.unit]
        return "| " + " ".join(fields)


# Training subsets and the stdout prefix that tells their lines apart (upstream's tb_dllogger).
SUBSET_PREFIXES = {
    "train": "",
    "train_avg": "avg train ",
    "dev": "  avg dev ",
    "dev_ema": "  EMA dev ",
}

# Inference latency stages (keys) and their stdout names; ratio 0.5 holds the mean, the others
# percentiles (upstream inference.py).
LATENCY_STAGES = {"dnn": "DNN", "data+dnn": "data+DNN", "data": "data"}
LATENCY_RATIOS = (0.99, 0.95, 0.9, 0.5)


def latency_metric(stage: str, ratio: float) -> str:
    """The one key for a latency figure, e.g. ``dnn_latency_0.99``.

    Upstream's inference.py registers metadata under this name but logs ``dnn_latency_0_99``, so
    its latency lines lose their formatting; here metadata and data share this key.
    """
    return f"{stage}_latency_{ratio}"


def _latency_label(stage: str, ratio: float) -> str:
    share = "avg" if ratio == 0.5 else f"{round(100 * ratio)}%"
    return f"{LATENCY_STAGES[stage]} latency {share}"


METRICS: dict[str, Metric] = {
    # train.py, with upstream's names. Upstream printed the throughput as "utts/s 512 samples/s"
    # (the unit twice, and samples for utterances); here it is "throughput 512 utts/s".
    # `took` (seconds) keeps its bare label in every subset, as upstream.
    "train_lrate": Metric("lrate", None, ":>3.2e"),
    **{f"{s}_loss": Metric(f"{p}loss", None, ":>7.2f") for s, p in SUBSET_PREFIXES.items()},
    **{f"{s}_wer": Metric(f"{p}wer", "%", ":>6.2f") for s, p in SUBSET_PREFIXES.items()},
    **{
        f"{s}_throughput": Metric(f"{p}throughput", "utts/s", ":>5.0f")
        for s, p in SUBSET_PREFIXES.items()
    },
    **{f"{s}_took": Metric("took", "s", ":>5.2f") for s in SUBSET_PREFIXES},
    # Micro-batches whose loss was not finite and were skipped, counted over the run (train.py).
    "train_nonfinite": Metric("skipped", "batches", ":>3"),
    # Logged once after training: the throughput above is the mean over this many last epochs.
    "train_avg_benchmark_epochs_num": Metric("over the last", "epochs", ":>3"),
    # inference.py, with upstream's names.
    "eval_wer": Metric("WER", "%", ":>3.2f"),
    **{
        latency_metric(stage, ratio): Metric(_latency_label(stage, ratio), "ms", ":>7.2f")
        for stage in LATENCY_STAGES
        for ratio in LATENCY_RATIOS
    },
}


def unique_log_path(path: str | Path) -> Path:
    """``<path>.N`` with N one above the largest numeric suffix already there (upstream's scheme).

    Every run keeps its own copy next to the appended ``<path>``; files such as ``<path>.bak``
    are not counted.
    """
    path = Path(path)
    taken = [0]
    if path.parent.is_dir():
        stem = path.name + "."
        for sibling in path.parent.iterdir():
            suffix = sibling.name[len(stem) :]
            if sibling.name.startswith(stem) and suffix.isdigit():
                taken.append(int(suffix))
    return path.with_name(f"{path.name}.{max(taken) + 1}")


def _jsonable(value: Any) -> Any:
    """Plain JSON types for tensors, numpy values, paths and containers; anything else as str."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "tolist"):  # torch.Tensor, numpy array or scalar: 0-d gives a Python number
        return _jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _format_step(step: Any) -> str:
    """Upstream's stdout step: ``epoch    3 | iter  120/544``; strings pass through."""
    if isinstance(step, str):
        return step
    if isinstance(step, int):
        return f"step {step:>6}"
    fields = []
    if len(step) > 0:
        fields.append(f"epoch {step[0]:>4}")
    if len(step) > 1:
        fields.append(f"iter {step[1]:>4}")
    if len(step) > 2:
        fields[-1] += f"/{step[2]}"
    return " | ".join(fields)


def _summary_writer_class() -> type | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        warnings.warn(
            f"TensorBoard is unavailable ({error}); logging to stdout and JSON only",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return SummaryWriter


class Logger:
    """Rank-0 logging to stdout, DLLogger-style JSON lines and TensorBoard.

    JSON goes to ``log_file`` (default ``output_dir/json_name``), appended, and to a fresh
    ``<that>.N`` copy for this run. TensorBoard writes one folder per subset in
    ``tensorboard_subsets`` under ``output_dir`` (``train``, ``dev``, ``dev_ema`` as upstream;
    ``train_avg`` goes to stdout and JSON only). With ``enabled=False`` (ranks other than 0) every
    method does nothing and nothing is created.
    """

    def __init__(
        self,
        output_dir: str | Path,
        log_file: str | Path | None = None,
        enabled: bool = True,
        tensorboard_subsets: Sequence[str] = ("train", "dev", "dev_ema"),
        stdout: bool = True,
        json: bool = True,
        tb: bool = True,
        json_name: str = "nvlog.json",
    ) -> None:
        self.enabled = enabled
        self.json_paths: tuple[Path, ...] = ()
        self._stdout = stdout
        self._files: list[TextIO] = []
        self._writers: dict[str, Any] = {}
        self._declared: set[str] = set()
        self._start = datetime.now().astimezone()
        if not enabled:
            return
        output_dir = Path(output_dir)
        if json:
            path = Path(log_file) if log_file else output_dir / json_name
            path.parent.mkdir(parents=True, exist_ok=True)
            self.json_paths = (path, unique_log_path(path))
            # Line-buffered, so that `tail -f` and a crashed run still show every finished line.
            self._files = [
                open(self.json_paths[0], "a", buffering=1, encoding="utf-8"),  # noqa: SIM115
                open(self.json_paths[1], "w", buffering=1, encoding="utf-8"),  # noqa: SIM115
            ]
        if tb and tensorboard_subsets:
            writer_class = _summary_writer_class()
            if writer_class is not None:
                self._writers = {
                    subset: writer_class(
                        log_dir=str(output_dir / subset), flush_secs=120, max_queue=200
                    )
                    for subset in tensorboard_subsets
                }
        # A script that ends without close() still gets its TensorBoard queue written.
        atexit.register(self.close)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """One ``PARAMETER`` line per entry (JSON and stdout), plus TensorBoard hparams and text."""
        if not self.enabled:
            return
        params = {str(k): _jsonable(v) for k, v in params.items()}
        for key, value in params.items():
            stamp = self._write_json(type="LOG", step="PARAMETER", data={key: value})
            self._print(stamp, f"PARAMETER | {key} : {value}")
        if self._writers:
            writer = next(iter(self._writers.values()))
            # hparams take scalars only; lists (e.g. manifests) show in the text table.
            scalars = {k: v for k, v in params.items() if isinstance(v, bool | int | float | str)}
            writer.add_hparams(scalars, {}, run_name="hparams")
            rows = [f"| {k} | {str(v).replace('|', '&#124;')} |" for k, v in params.items()]
            writer.add_text("parameters", "\n".join(["| name | value |", "|---|---|", *rows]), 0)

    def log(
        self, step: Step, data: Mapping[str, Any], subset: str = "", tb_step: int | None = None
    ) -> None:
        """Log ``data`` at ``step``; keys get the ``<subset>_`` prefix (``loss`` -> ``train_loss``).

        Every resulting name must be declared in :data:`METRICS`. With ``tb_step`` (the global
        optimizer step) the unprefixed values also go to the subset's TensorBoard writer, if any.
        """
        if not self.enabled:
            return
        values = {key: _jsonable(value) for key, value in data.items()}
        named = {(f"{subset}_{key}" if subset else key): value for key, value in values.items()}
        unknown = sorted(name for name in named if name not in METRICS)
        if unknown:
            raise KeyError(f"metrics {unknown} are not declared in common.logger.METRICS")
        for name in named:
            if name not in self._declared:
                self._declared.add(name)
                metric = METRICS[name]
                self._write_json(
                    type="METADATA",
                    metric=name,
                    metadata={"name": metric.label, "unit": metric.unit, "format": metric.format},
                )
        step = _jsonable(step)
        stamp = self._write_json(type="LOG", step=step, data=named)
        rendered = " ".join(METRICS[name].render(value) for name, value in named.items())
        self._print(stamp, " ".join(filter(None, [_format_step(step), rendered])))
        writer = self._writers.get(subset)
        if writer is not None and tb_step is not None:
            for key, value in values.items():
                if isinstance(value, int | float):
                    writer.add_scalar(key, value, tb_step)

    def info(self, text: str) -> None:
        """A plain message on stdout (no JSON, no TensorBoard): notices, sample predictions."""
        if self.enabled and self._stdout:
            print(text, flush=True)

    def flush(self) -> None:
        """Push buffered TensorBoard events (JSON lines are written as they come)."""
        for file in self._files:
            file.flush()
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flush and close every sink; later calls do nothing."""
        for file in self._files:
            file.close()
        for writer in self._writers.values():
            writer.close()
        self._files, self._writers = [], {}
        self.enabled = False
        atexit.unregister(self.close)

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write_json(self, **fields: Any) -> str:
        """Write one ``DLLL`` line (timestamps first, as DLLogger) and return the ISO time."""
        now = datetime.now().astimezone()
        stamp = now.isoformat(sep=" ")
        if self._files:
            record = {
                "timestamp": str(now.timestamp()),
                "datetime": stamp,
                "elapsedtime": str((now - self._start).total_seconds()),
                **fields,
            }
            line = "DLLL " + json.dumps(record) + "\n"
            for file in self._files:
                file.write(line)
        return stamp

    def _print(self, stamp: str, text: str) -> None:
        if self._stdout:
            print(f"DLL {stamp} - {text}", flush=True)


T = TypeVar("T")


def progress(
    iterable: Iterable[T], total: int | None = None, desc: str | None = None, enabled: bool = True
) -> Iterable[T]:
    """A tqdm bar over ``iterable`` in an interactive terminal; the iterable itself otherwise.

    Redirected output (CI, ``nohup``, log files) gets no carriage-return noise.
    """
    if enabled and sys.stderr is not None and sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True)
    return iterable


def parse_json_log(path: str | Path) -> list[dict[str, Any]]:
    """Read a DLLogger JSON log back: one dict per ``DLLL`` line, timestamps as floats."""
    records = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            if not line.startswith("DLLL "):
                raise ValueError(f"{path}:{number}: not a DLLogger line: {line[:60]!r}")
            record = json.loads(line[len("DLLL ") :])
            for key in ("timestamp", "elapsedtime"):
                if key in record:
                    record[key] = float(record[key])
            records.append(record)
    return records
