"""CPU real-time factor of jasper10x5dr at batch 1: upstream-style forward vs this recipe's fast path.

RTF = seconds of computing per second of audio, from the waveform in memory to the transcript
(features, network, greedy decode). The recording is real speech (the repository's recordings,
concatenated and cut to ``--duration``); the weights are random (timing does not depend on them),
with random BatchNorm statistics so that folding them is not a no-op.

"Upstream-style" is this repository's model run the way upstream runs it (CONVENTIONS.md): eager,
conv masks on, BatchNorm unfused, features padded to a multiple of 16, ``--pad_leading 16``.
Each speed option of :mod:`jasper.prepare` is measured on its own and combined; every variant's
transcript is checked against the upstream-style one, and the largest log-prob difference on
valid frames is reported. Variants run round-robin so that background load hits them alike; the
median of ``--repeats`` runs is reported.

    python bench/cpu_rtf.py --threads 2   # writes bench/results/cpu_rtf.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from common.audio import load_audio  # noqa: E402
from common.features import FilterbankFeatures  # noqa: E402
from common.metrics import ctc_greedy_text  # noqa: E402
from jasper import config  # noqa: E402
from jasper.model import Jasper, greedy_decode  # noqa: E402
from jasper.prepare import InferenceModel, SpeedOptions, prepare  # noqa: E402

PAD_LEADING = 16


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--model_config", default=str(REPO / "configs/jasper10x5dr_speedp-online_speca.yaml")
    )
    p.add_argument("--duration", type=float, default=16.7, help="seconds of audio")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per variant first")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also measure torch.compile (a minute or two to compile; no gain measured on CPU)",
    )
    p.add_argument(
        "--bf16",
        choices=("auto", "yes", "no"),
        default="auto",
        help="measure bf16 variants (auto: when the CPU has native bf16 support)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--output",
        default=str(REPO / "bench/results/cpu_rtf"),
        help="writes OUTPUT.md and OUTPUT.json",
    )
    return p


def speech(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """The repository's recordings, concatenated (repeated if needed) and cut to ``seconds``."""
    files = sorted((REPO / "data/audio").rglob("*.wav"))
    audio = np.concatenate([load_audio(f) for f in files])
    n = round(seconds * sample_rate)
    return np.tile(audio, -(-n // audio.size))[:n]


def random_model(cfg: dict, seed: int) -> Jasper:
    torch.manual_seed(seed)
    model = Jasper(config.encoder(cfg), config.decoder(cfg, len(cfg["labels"]) + 1))
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            m.weight.data.copy_(0.8 + 0.4 * torch.rand(c, generator=generator))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=generator))
    return model.eval()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


class Pipeline:
    """Waveform -> transcript with one prepared model; :meth:`__call__` returns the transcript,
    the valid log-probs and the seconds spent in the network."""

    def __init__(self, model: nn.Module, features: FilterbankFeatures, labels: list[str]) -> None:
        self.model, self.features, self.labels = model, features, labels

    @torch.inference_mode()
    def __call__(self, audio: torch.Tensor) -> tuple[str, torch.Tensor, float]:
        feats, lens = self.features(audio[None], torch.tensor([audio.numel()]))
        feats = nn.functional.pad(feats, (PAD_LEADING, 0))
        lens = lens + PAD_LEADING
        t0 = time.perf_counter()
        log_probs, enc_lens = self.model(feats, lens)
        ids = greedy_decode(log_probs, enc_lens)
        dnn = time.perf_counter() - t0
        n = int(enc_lens[0])
        return ctc_greedy_text(ids[0, :n].tolist(), self.labels), log_probs[0, :n], dnn


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config.load(args.model_config)
    _, features_kw = config.input(cfg, "val")
    features = FilterbankFeatures(**features_kw).eval()
    labels = list(cfg["labels"])
    audio = torch.from_numpy(speech(args.duration))
    model = random_model(cfg, args.seed)
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and native_bf16())

    variants: dict[str, SpeedOptions] = {
        "upstream-style (eager, masks, BN)": SpeedOptions.upstream(),
        "+ fold_batchnorm": SpeedOptions(fold_batchnorm=True, skip_masks=False),
        "+ skip_masks": SpeedOptions(fold_batchnorm=False, skip_masks=True),
        "fast path (fold_batchnorm + skip_masks)": SpeedOptions(),
        "fast path + fft_convs": SpeedOptions(fft_convs=True),
    }
    if args.compile:
        variants["fast path + compile"] = SpeedOptions(compile=True)
    if bf16:
        variants["upstream-style bf16"] = SpeedOptions.upstream(torch.bfloat16)
        variants["fast path bf16"] = SpeedOptions(dtype=torch.bfloat16)

    pipelines = {}
    memory = {}
    prepared_weights: dict[tuple, InferenceModel] = {}
    for name, options in variants.items():
        t0 = time.perf_counter()
        # Variants whose weights are the same (the mask and compile options do not touch them)
        # share one prepared copy: seven copies of a 1.3 GB model do not fit every machine.
        key = (options.fold_batchnorm, options.fft_convs, options.dtype)
        if key not in prepared_weights:
            prepared_weights[key] = prepare(model, options)
        prepared = InferenceModel(prepared_weights[key].model, options)
        memory[name] = sum(
            t.numel() * t.element_size() for t in [*prepared.parameters(), *prepared.buffers()]
        )
        pipelines[name] = Pipeline(prepared, features, labels)
        for _ in range(args.warmup):  # compiles here, for the compile variants
            pipelines[name](audio)
        print(f"prepared {name} in {time.perf_counter() - t0:.1f} s", flush=True)

    del model, prepared_weights
    load_before = os.getloadavg()[0]  # other processes skew timings: recorded beside them
    reference_text, reference_lp, _ = pipelines[next(iter(pipelines))](audio)
    totals: dict[str, list[float]] = {name: [] for name in pipelines}
    dnns: dict[str, list[float]] = {name: [] for name in pipelines}
    checks: dict[str, tuple[bool, float]] = {}
    for _ in range(args.repeats):
        for name, pipeline in pipelines.items():  # round-robin: background load hits all alike
            t0 = time.perf_counter()
            text, log_probs, dnn = pipeline(audio)
            totals[name].append(time.perf_counter() - t0)
            dnns[name].append(dnn)
            checks[name] = (text == reference_text, float((log_probs - reference_lp).abs().max()))

    load_after = os.getloadavg()[0]
    baseline = statistics.median(totals[next(iter(totals))])
    rows = []
    for name in pipelines:
        total, dnn = statistics.median(totals[name]), statistics.median(dnns[name])
        rows.append(
            {
                "variant": name,
                "seconds_median": total,
                "seconds_min": min(totals[name]),
                "dnn_seconds_median": dnn,
                "rtf": total / args.duration,
                "speedup_vs_upstream_style": baseline / total,
                "transcript_unchanged": checks[name][0],
                "max_abs_logprob_diff": checks[name][1],
                "model_gb": memory[name] / 1e9,
            }
        )
    machine = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "native_bf16": native_bf16(),
        "avx512": any(f.startswith("avx512") for f in cpu_flags()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1min": [load_before, load_after],
    }
    result = {
        "model": Path(args.model_config).name,
        "duration_s": args.duration,
        "batch_size": 1,
        "repeats": args.repeats,
        "machine": machine,
        "rows": rows,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# CPU real-time factor: {result['model']}, batch 1, {args.duration} s of speech",
        "",
        f"Machine: {machine['cpu']}, {args.threads} threads, AVX-512: {machine['avx512']}, "
        f"native bf16: {machine['native_bf16']}; torch {machine['torch']}; 1-minute load "
        f"average {load_before:.2f} before and {load_after:.2f} after the timed runs. Median of "
        f"{args.repeats} runs (variants interleaved). RTF = seconds per second of audio, waveform to "
        "transcript; random weights.",
        "",
        "| variant | RTF | seconds (median / min) | network s | speed-up vs upstream-style | "
        "transcript unchanged | max abs log-prob diff | model memory GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['rtf']:.3f} | {r['seconds_median']:.2f} / {r['seconds_min']:.2f} "
            f"| {r['dnn_seconds_median']:.2f} | {r['speedup_vs_upstream_style']:.2f}x "
            f"| {'yes' if r['transcript_unchanged'] else 'NO'} | {r['max_abs_logprob_diff']:.1e} "
            f"| {r['model_gb']:.2f} |"
        )
    if not bf16:
        lines += ["", "bf16 not measured: this CPU has no native bf16 (AVX-512 BF16 / AMX)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
