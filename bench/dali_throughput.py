"""Utterances per second of the DALI data path (training settings: online speed perturbation, trim,
dither, SpecAugment) on the CPU and the GPU, optionally beside the PyTorch path; writes a markdown
table.

    python bench/dali_throughput.py results/dali_throughput.md                   # synthetic audio
    python bench/dali_throughput.py out.md --manifest librispeech-dev-clean-wav.json \\
        --data_dir /datasets/LibriSpeech --devices cpu gpu --pytorch

Without a manifest, each requested duration gets synthetic 16 kHz speech-like audio (a harmonic
signal with a syllable-rate envelope between stretches of silence, so the trim has work to do). Each
row runs one untimed warm-up epoch (pipeline build, page cache), then times ``--epochs`` epochs of
features consumed on the device (CUDA synchronised before the clock stops).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from common import machine
from common.dali import DaliDataLoader, require_dali
from common.dataset import AudioDataset, FeatureLoader, get_data_loader
from common.features import FilterbankFeatures
from common.text import DEFAULT_LABELS
from jasper import config

DEFAULT_CONFIG = (
    Path(__file__).resolve().parents[1] / "configs/jasper10x5dr_speedp-online_speca.yaml"
)
SAMPLE_RATE = 16000  # Hz


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("output", type=Path, help="markdown file to write the table to")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="model config (input_train)")
    p.add_argument("--manifest", nargs="*", default=[], help="manifests (else synthetic audio)")
    p.add_argument("--data_dir", type=Path, default=Path("."), help="data_dir of the manifests")
    p.add_argument("--max_utts", type=int, default=2048, help="utterances read from the manifests")
    p.add_argument(
        "--durations", type=float, nargs="+", default=[2.0, 5.0, 10.0, 15.0],
        help="synthetic utterance durations, seconds",
    )  # fmt: skip
    p.add_argument("--num_utts", type=int, default=512, help="synthetic utterances per duration")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--devices", nargs="+", default=["cpu", "gpu"], choices=["cpu", "gpu"])
    p.add_argument(
        "--num_threads", type=int, default=None, help="DALI threads (default: all cores)"
    )
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per row")
    p.add_argument(
        "--pytorch", action=argparse.BooleanOptionalAction, default=False,
        help="also time the PyTorch path (AudioDataset + FeatureLoader) on the same devices",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the PyTorch path")
    p.add_argument("--seed", type=int, default=0)
    return p


def synthetic_speech(duration: float, rng: np.random.Generator) -> np.ndarray:
    """``duration`` seconds: 0.3 s of silence, then harmonics of a drifting pitch under a 4 Hz
    envelope, then 0.3 s of silence; float32 in [-1, 1]."""
    n = int(duration * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.5 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 2
    x = 0.3 * voiced * envelope + 0.003 * rng.standard_normal(n)
    edge = min(int(0.3 * SAMPLE_RATE), n // 4)
    x[:edge] = 0
    x[n - edge :] = 0
    return (x / max(1e-9, np.abs(x).max()) * 0.5).astype(np.float32)


def synthetic_manifest(folder: Path, duration: float, num_utts: int, seed: int) -> Path:
    """A manifest of ``num_utts`` entries over 16 distinct synthetic files of ``duration`` s."""
    rng = np.random.default_rng(seed)
    names = []
    for k in range(16):
        name = f"synthetic_{duration:g}s_{k}.wav"
        sf.write(folder / name, synthetic_speech(duration, rng), SAMPLE_RATE, subtype="PCM_16")
        names.append(name)
    entries = [
        {
            "transcript": "synthetic speech",
            "files": [{"fname": names[i % 16], "speed": 1.0, "duration": duration}],
            "original_duration": duration,
        }
        for i in range(num_utts)
    ]
    path = folder / f"synthetic_{duration:g}s.json"
    path.write_text(json.dumps(entries))
    return path


def time_loader(loader, device: str, epochs: int) -> tuple[float, int]:
    """(seconds, utterances) over ``epochs`` timed epochs after one warm-up epoch."""
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)
    for _ in loader:  # warm-up: builds the pipeline, fills the page cache
        pass
    sync()
    count, start = 0, time.perf_counter()
    for e in range(1, epochs + 1):
        loader.set_epoch(e)
        for feats, *_ in loader:
            count += feats.shape[0]
    sync()
    return time.perf_counter() - start, count


def machine_line() -> str:
    import nvidia.dali

    return f"{machine.summary('cuda' if torch.cuda.is_available() else 'cpu')}, DALI {nvidia.dali.__version__}"


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    require_dali()
    devices = [d for d in args.devices if d == "cpu" or torch.cuda.is_available()]
    if devices != args.devices:
        print("no CUDA device: timing the CPU only")
    cfg = config.load(args.config)
    dataset_kw, features_kw = config.input(cfg, "train")
    labels = cfg.get("labels", DEFAULT_LABELS)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.manifest:
            sets = [(", ".join(Path(m).name for m in args.manifest), args.manifest, args.data_dir)]
            dataset_kw = {**dataset_kw, "max_utts": args.max_utts}
        else:
            sets = [
                (f"{d:g} s synthetic", [synthetic_manifest(Path(tmp), d, args.num_utts, args.seed)],
                 Path(tmp))
                for d in args.durations
            ]  # fmt: skip
        for name, manifests, data_dir in sets:
            for device in devices:
                loader = DaliDataLoader(
                    manifests, data_dir, labels, dataset_kw, features_kw, args.batch_size,
                    train=True, device=device, device_id=0 if device == "gpu" else None,
                    seed=args.seed, num_threads=args.num_threads,
                )  # fmt: skip
                mean = sum(u.duration for u in loader.utts) / len(loader.utts)  # seconds
                seconds, count = time_loader(loader, device, args.epochs)
                rows.append((name, f"DALI {device}", count, seconds, count * mean))
                print(rows[-1], flush=True)
                del loader
                if args.pytorch:
                    kw = {k: v for k, v in dataset_kw.items() if k != "seed"}
                    dataset = AudioDataset(data_dir, manifests, labels, seed=args.seed, **kw)
                    dl = get_data_loader(
                        dataset, args.batch_size, train=True, seed=args.seed,
                        num_workers=args.workers,
                    )  # fmt: skip
                    features = FilterbankFeatures(**features_kw).train()
                    dev = "cuda" if device == "gpu" else "cpu"
                    seconds, count = time_loader(
                        FeatureLoader(dl, features, dev), device, args.epochs
                    )
                    mean = sum(dataset.durations) / len(dataset)
                    label = f"PyTorch {device} ({args.workers} workers)"
                    rows.append((name, label, count, seconds, count * mean))
                    print(rows[-1], flush=True)

    lines = [
        "# Data-path throughput (training settings)",
        "",
        f"Machine: {machine_line()}.",
        f"Config: `{args.config.name}` input_train (speed perturbation "
        f"{dataset_kw.get('speed_perturbation')}, trim {dataset_kw.get('trim_silence')}, "
        f"SpecAugment {features_kw.get('spec_augment')}); batch {args.batch_size}; "
        f"{args.epochs} timed epochs after one warm-up epoch; DALI threads "
        f"{args.num_threads or 'default (cores / ranks)'}.",
        "",
        "| data | path | utterances | seconds | utterances/s | audio s per s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, path, count, seconds, audio_s in rows:
        lines.append(
            f"| {name} | {path} | {count} | {seconds:.2f} | {count / seconds:.1f} | "
            f"{audio_s / seconds:.0f} |"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
