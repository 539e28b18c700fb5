"""Summarise training benchmark logs (one DLLogger JSON per run) into a markdown and JSON table:
sequences/s of the last epoch and the mean optimizer-step time, with the machine they ran on.

    python bench/train_table.py --out results/train_benchmark perf-train_*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from common import machine
from common.logger import parse_json_log


def summarise(path: Path) -> dict:
    records = parse_json_log(path)
    params = {k: v for r in records if r.get("step") == "PARAMETER" for k, v in r["data"].items()}
    logs = [r["data"] for r in records if r.get("type") == "LOG" and r.get("step") != "PARAMETER"]
    took = [d["train_took"] for d in logs if "train_took" in d]
    epoch_tp = [d["train_avg_throughput"] for d in logs if "train_avg_throughput" in d]
    warm = took[len(took) // 10 :] or took  # the first steps include cuDNN autotuning
    return {
        "log": path.name,
        "num_gpus": params.get("world_size"),
        "batch_size": params.get("batch_size"),
        "amp": params.get("amp"),
        "precision": params.get("precision") if params.get("amp") else "fp32/tf32",
        "sequences_per_s": epoch_tp[-1] if epoch_tp else None,
        "mean_step_s": statistics.fmean(warm) if warm else None,
        "steps": len(took),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("logs", nargs="+", type=Path)
    p.add_argument("--out", required=True, help="output path without extension (.md and .json)")
    args = p.parse_args()
    rows = [summarise(path) for path in args.logs]
    where = machine.summary("cuda" if torch.cuda.is_available() else "cpu")
    lines = [
        f"Training throughput on {where}",
        "",
        "| GPUs | batch/GPU | precision | sequences/s | mean step (s) | steps |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        tp = f"{r['sequences_per_s']:.1f}" if r["sequences_per_s"] else "n/a"
        st = f"{r['mean_step_s']:.3f}" if r["mean_step_s"] else "n/a"
        lines.append(
            f"| {r['num_gpus']} | {r['batch_size']} | {r['precision']} | {tp} | {st} | {r['steps']} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": where, "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
