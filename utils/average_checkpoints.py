#!/usr/bin/env python3
"""Average the weights of several checkpoints of one run into a single checkpoint.

Averaging the last few checkpoints of a run usually gives a model a little better than any one of
them (Vaswani et al. 2017, "Attention Is All You Need", section 6.1; fairseq's
``scripts/average_checkpoints.py``). Every floating-point entry of the weights, BatchNorm running
statistics included, becomes the element-wise mean, summed in float64 and stored in the newest
input's dtype; integer entries (``num_batches_tracked``) are the newest input's. The newest input is
the one with the highest global ``step`` (the last one named on a tie).

The inputs must hold the same keys with the same shapes, and the same labels and config. The output
is a checkpoint in the recipe's format: ``state_dict``, ``ema_state_dict`` (the same averaged
weights when EMA weights were averaged, else None), ``epoch``, ``step``, ``config`` and ``labels`` of
the newest input, no best WER, no optimizer, and ``averaged_from`` (the inputs, their steps and the
weights used). ``inference.py --ckpt OUT.pt`` and ``train.py --ckpt OUT.pt`` load it. It is written
atomically (common/checkpoint.py).

Usage::

    python utils/average_checkpoints.py --output averaged.pt \\
        results/Jasper_epoch430_checkpoint.pt results/Jasper_epoch440_checkpoint.pt
    python utils/average_checkpoints.py --output averaged.pt --last 5 --dir results

``--last N --dir RUN`` takes the newest N epoch and mid-epoch checkpoints of RUN by their position
in the run (epoch, then step); the best checkpoint is not one of them. Training keeps only the two
newest plus the milestone epochs (``--keep_milestones``), so averaging more needs those files kept.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import (
    CHECKPOINT_RE,
    Checkpointer,
    CheckpointError,
    atomic_save,
    best_wer_entries,
    load_checkpoint,
    model_weights,
)

WEIGHTS = ("auto", "ema", "raw")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", type=Path, help="checkpoints to average")
    parser.add_argument("--output", required=True, type=Path, help="the checkpoint to write")
    parser.add_argument(
        "--last", type=int, default=None, help="average the newest N checkpoints of --dir"
    )
    parser.add_argument("--dir", type=Path, default=None, help="a training run's output folder")
    parser.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="auto",
        help="which weights to average; auto: the EMA weights when every input has them, "
        "else the raw weights",
    )
    return parser


def last_checkpoints(run_dir: Path, n: int) -> list[Path]:
    """The newest ``n`` epoch/step checkpoints in ``run_dir``, oldest first."""
    models = sorted(
        {m.group("model") for p in run_dir.glob("*.pt") if (m := CHECKPOINT_RE.match(p.name))}
    )
    if not models:
        raise CheckpointError(f"no epoch or step checkpoints (<Model>_epoch<E>_*.pt) in {run_dir}")
    if len(models) > 1:
        raise CheckpointError(
            f"{run_dir} holds checkpoints of several models ({', '.join(models)}): "
            "name the files to average"
        )
    found = Checkpointer(run_dir, models[0]).tracked()
    if len(found) < n:
        raise CheckpointError(
            f"{run_dir} holds {len(found)} {models[0]} checkpoints, fewer than --last {n} "
            f"({', '.join(p.name for p in found)})"
        )
    return found[len(found) - n :]


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The dotted path of the first entry where two configs differ; None when they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in a or key not in b:
                return f"{where}{key}"
            found = first_difference(a[key], b[key], f"{where}{key}.")
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{where}{i}.")
            if found is not None:
                return found
        return None
    return None if a == b else (where.rstrip(".") or "the whole config")


def choose_weights(paths: Sequence[Path], ckpts: Sequence[dict], weights: str) -> str:
    """``ema`` or ``raw``; ``auto`` picks EMA when every input has EMA weights."""
    without_ema = [p for p, c in zip(paths, ckpts) if c.get("ema_state_dict") is None]
    if weights == "auto":
        return "raw" if without_ema else "ema"
    if weights == "ema" and without_ema:
        raise CheckpointError(f"{without_ema[0]} has no EMA weights: use --weights raw")
    return weights


def check_compatible(
    path: Path, ckpt: dict, state: dict, ref_path: Path, ref: dict, ref_state: dict
) -> None:
    """``path`` fits ``ref_path``: the same labels, config, keys and shapes."""
    if ckpt.get("labels") != ref.get("labels"):
        raise CheckpointError(
            f"{path} has labels {ckpt.get('labels')} but {ref_path} has {ref.get('labels')}"
        )
    difference = first_difference(ckpt.get("config"), ref.get("config"))
    if difference is not None:
        raise CheckpointError(
            f"{path} and {ref_path} were trained with different configs (first difference: "
            f"{difference}); only checkpoints of one run can be averaged"
        )
    missing = [k for k in ref_state if k not in state]
    unexpected = [k for k in state if k not in ref_state]
    if missing or unexpected:
        key = missing[0] if missing else unexpected[0]
        where = "missing from" if missing else "only in"
        raise CheckpointError(
            f"{path} does not hold the same weights as {ref_path}: {key} is {where} {path} "
            f"({len(missing)} keys missing, {len(unexpected)} extra)"
        )
    for key, tensor in ref_state.items():
        other = state[key]
        if other.shape != tensor.shape or other.is_floating_point() != tensor.is_floating_point():
            raise CheckpointError(
                f"{path}: {key} is {other.dtype} {tuple(other.shape)} but {tensor.dtype} "
                f"{tuple(tensor.shape)} in {ref_path}"
            )


def mean_state(states: Sequence[dict], newest: dict) -> dict[str, torch.Tensor]:
    """Floating entries: the element-wise mean (float64 sum, ``newest``'s dtype); others:
    ``newest``'s."""
    out = {}
    for key, tensor in newest.items():
        if not tensor.is_floating_point():
            out[key] = tensor.clone()
            continue
        total = torch.zeros(tensor.shape, dtype=torch.float64)
        for state in states:
            total += state[key].to(torch.float64)
        out[key] = (total / len(states)).to(tensor.dtype)
    return out


def average_checkpoints(paths: Sequence[Path], weights: str = "auto") -> dict[str, Any]:
    """The averaged checkpoint of ``paths`` (see the module's docstring).

    Raises:
        CheckpointError: an input is unreadable, or the inputs do not fit one another (the message
            names the file and the first mismatching key).
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    # Memory-mapped: only the running sums and the result are held in memory.
    ckpts = [load_checkpoint(p, mmap=True) for p in paths]
    choice = choose_weights(paths, ckpts, weights)
    states = [model_weights(c, ema=choice == "ema", path=p) for p, c in zip(paths, ckpts)]
    for path, ckpt, state in zip(paths[1:], ckpts[1:], states[1:]):
        check_compatible(path, ckpt, state, paths[0], ckpts[0], states[0])
    steps = [int(c.get("step", 0)) for c in ckpts]
    newest = max(range(len(paths)), key=lambda i: (steps[i], i))
    averaged = mean_state(states, states[newest])
    ref = ckpts[newest]
    return {
        "epoch": int(ref.get("epoch", 0)),
        "step": steps[newest],
        **best_wer_entries(math.inf),
        "state_dict": averaged,
        "ema_state_dict": averaged if choice == "ema" else None,
        "optimizer": None,
        "scaler": None,
        "config": ref.get("config"),
        "labels": ref.get("labels"),
        "averaged_from": {"files": [str(p) for p in paths], "steps": steps, "weights": choice},
    }


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if (args.last is None) != (args.dir is None):
        parser.error("--last and --dir go together")
    if args.inputs and args.dir is not None:
        parser.error("name checkpoints or use --last N --dir RUN, not both")
    if not args.inputs and args.dir is None:
        parser.error("name the checkpoints to average, or use --last N --dir RUN")
    if args.last is not None and args.last < 1:
        parser.error("--last must be at least 1")
    name = args.output.name
    if CHECKPOINT_RE.match(name) or name.endswith("_best_checkpoint.pt"):
        parser.error(f"--output {name}: a training checkpoint's name, which --resume would pick up")
    try:
        paths = args.inputs or last_checkpoints(args.dir, args.last)
        ckpt = average_checkpoints(paths, args.weights)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    used, n = ckpt["averaged_from"], len(paths)
    print(f"averaged the {used['weights']} weights of {n} checkpoints, steps {used['steps']}")
    if args.weights == "auto" and used["weights"] == "raw":
        print("not every input has EMA weights: --weights auto took the raw ones")
    atomic_save(ckpt, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
