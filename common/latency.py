"""Latency measurement of inference (``inference.py --steps``, ``scripts/inference_benchmark.sh``).

After the warm-up, each step records ``data`` (the loader's next batch: audio reading and
features), ``dnn`` (leading pad, network, argmax; the device synchronised before and after) and
``data+dnn``. The first :data:`DROP_FIRST` records are dropped and the 90/95/99th percentiles and
the mean are reported in ms, as upstream's ``inference.py`` does. Rows accumulate in a table
(``PREFIX.json`` and ``PREFIX.md``) headed by the machine they were measured on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from common.features import FilterbankFeatures
from common.logger import LATENCY_RATIOS, LATENCY_STAGES, latency_metric

DROP_FIRST = 5  # first recorded steps left out of the figures (upstream's warm-up margin)
MIN_SAMPLES = 20  # steps needed after those for the 99th percentile to mean something


class NotEnoughData(ValueError):
    """The data cannot give the batches a measurement needs; the message says what to change."""


class SyntheticBatches:
    """One batch of Gaussian noise of exactly ``duration`` seconds per utterance, its features
    computed on the device at every iteration (the ``data`` latency is feature extraction)."""

    def __init__(
        self,
        features: FilterbankFeatures,
        batch_size: int,
        duration: float,
        seed: int,
        device: torch.device,
    ) -> None:
        n = round(duration * features.sample_rate)
        generator = torch.Generator().manual_seed(seed)
        self.audio = (0.1 * torch.randn(batch_size, n, generator=generator)).to(device)
        self.lens = torch.full((batch_size,), n, dtype=torch.int64, device=device)
        self.features = features.to(device).eval()
        self.utterances = [(i, f"synthetic-{i}") for i in range(batch_size)]

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        with torch.no_grad():
            feats, lens = self.features(self.audio, self.lens)
        empty = torch.zeros(len(self.lens), 0, dtype=torch.int64, device=feats.device)
        yield feats, lens, empty, torch.zeros_like(lens)


def min_steps(warmup_steps: int) -> int:
    """The fewest ``--steps`` that give figures: the first timed step is dropped when there is no
    warm-up (it includes the loader's start), then :data:`DROP_FIRST`, then :data:`MIN_SAMPLES`."""
    return DROP_FIRST + MIN_SAMPLES + (1 if warmup_steps == 0 else 0)


def full_batches(loader, batch_size: int) -> Iterator:
    """Batches of exactly ``batch_size`` utterances, over and over (latencies are of equal
    batches only). The loader's full batches are used as they are; when it has none (fewer
    utterances than a batch), batches are made by cycling over its utterances."""
    utterances = []
    for batch in loader:
        if batch[0].size(0) == batch_size:
            break
        utterances += split_batch(batch)
    else:
        if not utterances:
            raise NotEnoughData("the data hold no utterance to time")
        yield from cycled_batches(utterances, batch_size)
    while True:
        for batch in loader:
            if batch[0].size(0) == batch_size:
                yield batch


def split_batch(batch: tuple) -> list[tuple]:
    """``(feats (F, T_i), feat_len, txt (S_i,), txt_len)`` of each utterance of a batch."""
    feats, feat_lens, txt, txt_lens = batch
    return [
        (feats[i, :, : int(feat_lens[i])], feat_lens[i], txt[i, : int(txt_lens[i])], txt_lens[i])
        for i in range(feats.size(0))
    ]


def _stack_padded(tensors: list[torch.Tensor], align: int = 1) -> torch.Tensor:
    """Tensors of different last dimensions, zero-padded to the longest (rounded up to ``align``)."""
    n = max(t.size(-1) for t in tensors)
    n = align * -(-n // align)
    return torch.stack([torch.nn.functional.pad(t, (0, n - t.size(-1))) for t in tensors])


def cycled_batches(utterances: list[tuple], batch_size: int) -> Iterator:
    """Batches of ``batch_size`` of ``utterances`` taken in turn, forever; features padded to a
    multiple of 16 frames, the features' ``pad_align``, as the loaders pad them."""
    start = 0
    while True:
        chosen = [utterances[(start + i) % len(utterances)] for i in range(batch_size)]
        start = (start + batch_size) % len(utterances)
        feats = _stack_padded([u[0] for u in chosen], align=16)
        txt = _stack_padded([u[2] for u in chosen])
        yield feats, torch.stack([u[1] for u in chosen]), txt, torch.stack([u[3] for u in chosen])


class Latencies:
    """Per-step seconds of the three stages; :meth:`summary` gives the reported figures in ms."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {stage: [] for stage in LATENCY_STAGES}

    def add(self, data: float, dnn: float) -> None:
        self.samples["data"].append(data)
        self.samples["dnn"].append(dnn)
        self.samples["data+dnn"].append(data + dnn)

    def summary(self) -> dict[str, float] | None:
        """``{latency_metric(stage, r): ms}`` for r in 0.99/0.95/0.9 (nearest-rank percentiles,
        what upstream's index arithmetic computes) and 0.5 (the mean, as upstream); None when
        fewer than :data:`MIN_SAMPLES` steps remain after dropping the first :data:`DROP_FIRST`."""
        out = {}
        for stage, values in self.samples.items():
            ms = sorted(1000.0 * v for v in values[DROP_FIRST:])
            if len(ms) < MIN_SAMPLES:
                return None
            for ratio in LATENCY_RATIOS:
                if ratio == 0.5:
                    value = sum(ms) / len(ms)
                else:
                    value = ms[math.ceil(ratio * len(ms) - 1e-9) - 1]
                out[latency_metric(stage, ratio)] = value
        return out


def _duration_key(duration: float | str) -> tuple[int, float]:
    return (1, 0.0) if isinstance(duration, str) else (0, float(duration))


def update_table(prefix: str, row: dict, machine: dict) -> None:
    """Add ``row`` to ``PREFIX.json`` (replacing a row with the same settings) and rewrite
    ``PREFIX.md`` from it, sorted by duration then batch size. ``machine`` is
    :func:`common.machine.describe`'s."""
    json_path, md_path = Path(prefix + ".json"), Path(prefix + ".md")
    table = json.loads(json_path.read_text()) if json_path.exists() else {"rows": []}
    keys = ("batch_size", "duration", "precision", "options")
    rows = [r for r in table["rows"] if any(r.get(k) != row[k] for k in keys)] + [row]
    rows.sort(
        key=lambda r: (r["options"], r["precision"], _duration_key(r["duration"]), r["batch_size"])
    )
    table = {"machine": machine, "rows": rows}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(table, indent=1) + "\n")

    stages = list(LATENCY_STAGES)
    ratios = sorted(r for r in LATENCY_RATIOS if r != 0.5) + [0.5]  # 90%, 95%, 99%, mean
    header = ["batch", "audio (s)", "precision", "options"] + [
        f"{LATENCY_STAGES[s]} {'avg' if r == 0.5 else f'{round(100 * r)}%'}"
        for s in stages
        for r in ratios
    ]
    lines = [
        f"Latency per batch in ms on {machine['device']} ({machine['device_type']}, "
        f"torch {machine['torch']}, {machine['cpu_threads']} CPU threads).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        cells = [str(r["batch_size"]), str(r["duration"]), r["precision"], r["options"]]
        cells += [f"{r['latency_ms'][latency_metric(s, q)]:.2f}" for s in stages for q in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
