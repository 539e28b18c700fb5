"""Plot a training run's curves from its DLLogger JSON log: training loss, and the WER of the
logged training batches beside dev WER (raw and EMA), against the optimizer step, as one PNG.

    python utils/plot_training.py OUTPUT_DIR/nvlog.json training_curve.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.logger import parse_json_log


def global_step(step: list) -> int | None:
    """train.py logs steps as [epoch, iteration in epoch, steps per epoch]."""
    if isinstance(step, list) and len(step) == 3:
        epoch, iteration, per_epoch = step
        return (epoch - 1) * per_epoch + iteration
    return None


def curves(log_path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{name: [(global step, value)]}`` for the logged training loss and WER and the dev WERs."""
    names = ("train_loss", "train_wer", "dev_wer", "dev_ema_wer")
    out: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    for record in parse_json_log(log_path):
        if record.get("type") != "LOG":
            continue
        step = global_step(record.get("step"))
        if step is None:
            continue
        for name, points in out.items():
            if name in record["data"]:
                points.append((step, float(record["data"][name])))
    return out


def plot(log_path: str | Path, png_path: str | Path, title: str = "Training curve") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(log_path)
    fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(11, 4))
    if data["train_loss"]:
        steps, values = zip(*data["train_loss"])
        ax_loss.plot(steps, values, lw=1, color="tab:blue")
    ax_loss.set(xlabel="optimizer step", ylabel="CTC loss", title="training loss", yscale="log")
    if data["train_wer"]:
        steps, values = zip(*data["train_wer"])
        ax_wer.plot(steps, values, lw=1, color="tab:gray", alpha=0.6, label="training batch")
    for name, label, color in (
        ("dev_wer", "dev", "tab:orange"),
        ("dev_ema_wer", "dev (EMA)", "tab:green"),
    ):
        if data[name]:
            steps, values = zip(*data[name])
            ax_wer.plot(steps, values, marker="o", label=label, color=color)
    ax_wer.set(xlabel="optimizer step", ylabel="WER (%)", title="WER (greedy)")
    ax_wer.set_ylim(0, 105)  # early training batches can exceed 100% (insertions)
    ax_wer.legend()
    for ax in (ax_loss, ax_wer):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("log", help="nvlog.json of a training run")
    p.add_argument("png", help="output picture")
    p.add_argument("--title", default="Training curve")
    args = p.parse_args()
    plot(args.log, args.png, args.title)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
