"""Training throughput of Jasper and QuartzNet, upstream-style and ours side by side.

Each model config is trained on one synthetic batch, repeated: features (B, 64, T) of ``--duration``
seconds (T = 100 frames per second, padded to a multiple of 16 as the loaders pad them, the last
frames past the lengths) and random transcripts of 15 characters per second (LibriSpeech's rate).
Data loading is left out: this measures the model, CTC, the optimizer and the EMA. Every form of
the step runs in the same process, one after the other, on weights built from the same seed:
``--warmup`` untimed steps (cuDNN autotuning), then ``--steps`` timed ones between two CUDA
synchronisations.

The forms (:class:`TrainForm`):

- ``upstream-style``: upstream's training step: every convolution masked, each building its own
  mask and recomputing the lengths (:func:`jasper.model.upstream_masked_conv`), eager, autocast
  (fp16 with a GradScaler), CTC in fp32, one host sync per step, the launcher's optimizer, EMA.
- ``ours``: the recipe's default training path (``train.py``): every convolution masked with one
  mask per block (the same zeros, tests/test_train_levers.py), plus the check of every gradient
  for inf/NaN that train.py makes where no GradScaler does (bf16, fp32). Other levers are measured
  by naming them: ``--ours compile=true`` (``train.py --compile``), ``masks=none``.

    python bench/train_speed.py --out results/train_speed          # GPU: batches of 64 x 16.7 s
    python bench/train_speed.py --out /tmp/train_speed --device cpu --batch_size 2 --duration 1 \\
        --configs configs/jasper_tiny.yaml --precisions fp32 bf16 --warmup 1 --steps 2

writes ``OUT.json`` and ``OUT.md``: sequences/s, ms/step, peak memory and ours / upstream.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common import machine
from common.optimizers import apply_ema, build_optimizer, make_ema_model, parameter_groups
from jasper import config
from jasper.model import CTCLoss, MaskedConv1d, upstream_masked_conv

REPO = Path(__file__).resolve().parents[1]
FULL_CONFIGS = (
    "configs/jasper10x5dr_speedp-online_speca.yaml",
    "configs/quartznet15x5_speedp-online-1.15_speca.yaml",
)
FRAMES_PER_SECOND = 100  # 10 ms feature hop
PAD_ALIGN = 16  # the features' pad_align: the loaders pad T to a multiple of it
CHARS_PER_SECOND = 15  # LibriSpeech transcripts: about 15 characters per second of speech
LAUNCHER_OPTIMIZER = {"jasper": "novograd", "quartznet": "fused_novograd"}  # train*.sh defaults
LR, WEIGHT_DECAY, EMA_DECAY = 0.01, 1e-3, 0.999  # scripts/train.sh's defaults
MAX_EXTRA_WARMUP = 10  # warm-up steps added while fp16 still overflows
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TrainForm:
    """How a training step runs. Every field but ``name`` is a lever; ``ours`` names its own."""

    name: str
    # upstream: every conv masked, each building its own mask (upstream's MaskedConv1d); all: every
    # conv masked, one mask per block (this recipe's); none: no conv masks; config: the YAML's.
    masks: str = "config"
    compile: bool = False  # torch.compile of the model, forward and backward
    optimizer: str = "launcher"  # launcher: the model's launcher default, or an optimizer name
    ema: bool = True  # the recipe's EMA of the weights after every step
    # Without a GradScaler (bf16, fp32), train.py checks every gradient for inf/NaN before the
    # optimizer steps (one check per tensor and a host sync); upstream had no such check.
    grad_check: bool = True

    def levers(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}


UPSTREAM = TrainForm("upstream-style", masks="upstream", grad_check=False)
OURS = TrainForm("ours")  # train.py's default path: the config's masks (all, one per block), eager


def parse_form(base: TrainForm, settings: list[str]) -> TrainForm:
    """``base`` with ``KEY=VALUE`` settings applied (booleans as true/false)."""
    fields = {f.name: f for f in dataclasses.fields(TrainForm) if f.name != "name"}
    changes: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--ours {setting!r}: use KEY=VALUE with KEY one of {sorted(fields)}")
        if fields[key].type in ("bool", bool):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"--ours {setting!r}: {key} is true or false")
            changes[key] = value.lower() == "true"
        else:
            changes[key] = value
    form = dataclasses.replace(base, **changes)
    if form.masks not in ("upstream", "all", "none", "config"):
        raise ValueError(f"--ours masks={form.masks}: use upstream, all, none or config")
    return form


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", required=True, help="output path without extension (.json and .md)")
    p.add_argument("--configs", nargs="+", default=list(FULL_CONFIGS), help="model configs")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=sorted(DTYPES),
        default=["fp16", "bf16"],
        help="autocast dtypes (fp32: no autocast)",
    )
    p.add_argument("--batch_size", type=int, default=64, help="utterances per step")
    p.add_argument("--duration", type=float, default=16.7, help="seconds of audio per utterance")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per form")
    p.add_argument("--steps", type=int, default=10, help="timed steps per form")
    p.add_argument(
        "--ours",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help=f"levers of the ours form, e.g. masks=none compile=true (fields of {OURS})",
    )
    p.add_argument(
        "--time_budget",
        type=float,
        default=0.0,
        help="seconds: cases that would start later are skipped and reported (0: no limit)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


# --------------------------------------------------------------------------------------------
# One form of one model


@dataclass
class Batch:
    """One synthetic batch: ``feats (B, F, T)`` float32, ``feat_lens (B,)``, ``txt (B, S)``,
    ``txt_lens (B,)``, on the device."""

    feats: torch.Tensor
    feat_lens: torch.Tensor
    txt: torch.Tensor
    txt_lens: torch.Tensor


def synthetic_batch(
    n_feats: int, n_labels: int, batch_size: int, duration: float, device: torch.device
) -> Batch:
    generator = torch.Generator().manual_seed(1)
    frames = math.ceil(duration * FRAMES_PER_SECOND)
    padded = PAD_ALIGN * math.ceil(frames / PAD_ALIGN)
    feats = torch.randn(batch_size, n_feats, padded, generator=generator)
    feats[:, :, frames:] = 0  # the loaders' zeros past the lengths
    chars = max(1, round(duration * CHARS_PER_SECOND))
    txt = torch.randint(0, n_labels, (batch_size, chars), generator=generator)  # no blank
    full = torch.full((batch_size,), frames, dtype=torch.int64)
    return Batch(
        feats.to(device), full.to(device), txt.to(device), torch.full_like(full, chars).to(device)
    )


def build(cfg: dict, form: TrainForm, device: torch.device, seed: int):
    """``(model to call, model, optimizer, EMA model or None)`` for ``form``."""
    torch.manual_seed(seed)
    model = config.build_model(cfg).to(device).train()
    if form.masks != "config":
        for conv in model.modules():
            if isinstance(conv, MaskedConv1d):
                conv.masked = form.masks != "none"
                if form.masks == "upstream":
                    conv.forward = functools.partial(upstream_masked_conv, conv)
    name = form.optimizer
    if name == "launcher":
        name = LAUNCHER_OPTIMIZER[config.model_section(cfg)]
    optimizer = build_optimizer(name, parameter_groups(model), LR, WEIGHT_DECAY)
    ema_model = make_ema_model(model) if form.ema else None
    step_model = torch.compile(model, dynamic=False) if form.compile else model
    return step_model, model, optimizer, ema_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    cfg: dict,
    form: TrainForm,
    batch: Batch,
    precision: str,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """Warm-up and timed steps of one form; the row's measured fields."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step_model, model, optimizer, ema_model = build(cfg, form, device, args.seed)
    dtype = DTYPES[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ctc = CTCLoss(config.num_classes(cfg["labels"]))

    def step() -> bool:
        """One training step as train.py runs it; whether its loss was finite."""
        with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            log_probs, enc_lens = step_model(batch.feats, batch.feat_lens)
        loss = ctc(log_probs, batch.txt, enc_lens, batch.txt_lens)  # fp32 inside
        finite = math.isfinite(float(loss.detach()))  # train.py's one host sync per micro-batch
        scaler.scale(loss).backward()
        if form.grad_check and not scaler.is_enabled():
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            bool(torch.stack([g.isfinite().all() for g in grads]).all())  # as train.py does
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema_model is not None:
            apply_ema(model, ema_model, EMA_DECAY)
        return finite

    def scale() -> float:
        return scaler.get_scale() if scaler.is_enabled() else 1.0

    # Warm-up, extended while fp16 overflows: the GradScaler halves its initial scale of 2**16 at
    # every overflow and skips that optimizer step, which would make timed steps look cheaper.
    for i in range(args.warmup + MAX_EXTRA_WARMUP):
        before = scale()
        step()
        if i + 1 >= args.warmup and scale() >= before:
            break
    sync(device)
    start_scale = scale()
    start = time.perf_counter()
    nonfinite = sum(not step() for _ in range(args.steps))
    sync(device)
    seconds = time.perf_counter() - start
    # The scale only halves within the timed steps (it grows every 2000 steps): one per overflow.
    overflows = round(math.log2(start_scale / scale()))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    params = sum(p.numel() for p in model.parameters())
    return {
        "params_m": params / 1e6,
        "ms_per_step": 1000.0 * seconds / args.steps,
        "sequences_per_s": batch.feats.size(0) * args.steps / seconds,
        "peak_memory_gib": peak,
        "skipped_steps": max(overflows, nonfinite),  # fp16 overflow or a non-finite loss
    }


def model_label(path: str) -> str:
    """``configs/jasper10x5dr_speedp-online_speca.yaml`` -> ``jasper10x5dr``."""
    return Path(path).stem.split("_speedp")[0]


# --------------------------------------------------------------------------------------------
# The sweep and its tables


def add_ratios(rows: list[dict]) -> None:
    """``ours_over_upstream`` (sequences/s) on the ours rows of each (model, precision)."""
    for row in rows:
        if row["form"] == UPSTREAM.name or row.get("status") != "ok":
            continue
        base = [
            r
            for r in rows
            if r["form"] == UPSTREAM.name
            and r.get("status") == "ok"
            and (r["model"], r["precision"]) == (row["model"], row["precision"])
        ]
        if base:
            row["ours_over_upstream"] = row["sequences_per_s"] / base[0]["sequences_per_s"]


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Training throughput: upstream-style and ours side by side",
        "",
        f"Machine: {result['machine']}.",
        f"Synthetic batches of {s['batch_size']} x {s['duration_s']} s ({s['frames']} frames, "
        f"{s['chars']} characters each), {s['warmup']} warm-up then {s['steps']} timed steps "
        "per form, in one process. upstream-style: every convolution masked, eager, autocast "
        f"(fp16 with a GradScaler); ours: {result['ours']}.",
        "",
        "| model | precision | form | sequences/s | ms/step | peak memory (GiB) | skipped steps "
        "| ours / upstream |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['model']} | {r['precision']} | {r['form']} | {r['status']}: "
                f"{r.get('error', '')[:80]} | | | | |"
            )
            continue
        peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
        ratio = f"{r['ours_over_upstream']:.2f}" if "ours_over_upstream" in r else ""
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['form']} | {r['sequences_per_s']:.1f} | "
            f"{r['ms_per_step']:.1f} | {peak} | {r['skipped_steps']} | {ratio} |"
        )
    ratios = []
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        by = {r["precision"]: r for r in result["rows"]
              if (r["model"], r["form"], r.get("status")) == (model, OURS.name, "ok")}  # fmt: skip
        if "fp16" in by and "bf16" in by:
            ratio = by["bf16"]["sequences_per_s"] / by["fp16"]["sequences_per_s"]
            ratios.append(f"{model} {ratio:.2f}")
    if ratios:
        lines += ["", f"bf16 over fp16 (ours, sequences/s): {', '.join(ratios)}."]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    add_ratios(result["rows"])
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    started = time.perf_counter()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.backends.cudnn.benchmark = True  # the recipe's default (--cudnn_benchmark)
    ours = parse_form(OURS, args.ours)
    out = Path(args.out)
    frames = math.ceil(args.duration * FRAMES_PER_SECOND)
    result: dict[str, Any] = {
        "machine": machine.summary(device),
        "device": machine.describe(device),
        "settings": {
            "batch_size": args.batch_size,
            "duration_s": args.duration,
            "frames": frames,
            "chars": max(1, round(args.duration * CHARS_PER_SECOND)),
            "warmup": args.warmup,
            "steps": args.steps,
        },
        "ours": ", ".join(f"{k}={v}" for k, v in ours.levers().items()),
        "forms": {f.name: f.levers() for f in (UPSTREAM, ours)},
        "rows": [],
    }
    failed = 0
    for precision in args.precisions:
        for path in args.configs:
            cfg = config.load(REPO / path if not Path(path).is_absolute() else path)
            n_feats = cfg[config.model_section(cfg)]["encoder"]["in_feats"]
            batch = synthetic_batch(
                n_feats, len(cfg["labels"]), args.batch_size, args.duration, device
            )
            for form in (UPSTREAM, ours):
                row: dict[str, Any] = {
                    "model": model_label(path),
                    "precision": precision,
                    "form": form.name,
                    "levers": form.levers(),
                }
                elapsed = time.perf_counter() - started
                if args.time_budget and elapsed > args.time_budget:
                    row.update(status="skipped", error=f"time budget ({args.time_budget:.0f} s)")
                else:
                    try:
                        row.update(measure(cfg, form, batch, precision, args, device), status="ok")
                    except (RuntimeError, ValueError) as e:  # e.g. out of memory
                        row.update(status="failed", error=str(e).splitlines()[0][:300])
                        failed += 1
                gc.collect()
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
                write(result, out)  # after every row: a run stopped early keeps what it measured
            del batch
    write(result, out)
    print(out.with_suffix(".md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
