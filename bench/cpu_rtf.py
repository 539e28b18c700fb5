"""CPU real-time factor of jasper10x5dr at batch 1: upstream-style forward vs this recipe's levers.

RTF = seconds of computing per second of audio, from the waveform in memory to the transcript
(features, network, greedy decode). The recordings are real speech (the repository's recordings,
concatenated and cut to each of ``--durations``); the weights are random (timing does not depend
on them), with random BatchNorm statistics so that folding them is not a no-op.

"Upstream-style" is this repository's model run the way upstream runs it (CONVENTIONS.md): eager,
conv masks on, BatchNorm unfused, features padded to a multiple of 16, ``--pad_leading 16``.
Each speed option of :mod:`jasper.prepare` is measured on its own and combined, with bf16 where
the CPU has native bf16, and the int8 ONNX Runtime model of :mod:`jasper.int8` (``--int8``).
Every variant's transcript, per-frame argmax and log-probs are compared with the upstream-style
ones. Variants run round-robin so that background load hits them alike; on a shared machine the
fastest of ``--repeats`` runs is the least disturbed one, so speed-ups are taken from it (the
median is shown beside it, with the load average).

With ``--int8`` the int8 model's accuracy cost is measured too, on a real model: the reference
small model (tests/data/reference/small_model) transcribing the repository's recordings in fp32,
bf16 and int8 (calibrated on five of them), written to ``--int8_output``.

    python bench/cpu_rtf.py   # writes bench/results/cpu_rtf.{md,json} and cpu_int8.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import machine
from common.audio import load_audio
from common.features import FilterbankFeatures
from common.metrics import char_error_rate, word_error_rate
from jasper import config
from jasper.decoding import greedy_texts
from jasper.int8 import Int8Model, export_int8
from jasper.model import Jasper
from jasper.prepare import InferenceModel, SpeedOptions, prepare
from jasper.transcribe import Transcriber, load_model

REPO = Path(__file__).resolve().parents[1]
PAD_LEADING = 16
AUDIO = REPO / "data/audio"
SMALL_MODEL = REPO / "tests/data/reference/small_model"
# int8 calibration set: the five NVIDIA example recordings; the other six (with transcripts where
# the repository has them) are held out.
CALIBRATION = ["example1.wav", "example2.wav", "example3.wav", "example4.wav", "keynote.wav"]
UPSTREAM = "upstream-style (eager, masks, BN)"
INT8 = "int8 (ONNX Runtime, QDQ)"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--model_config", default=str(REPO / "configs/jasper10x5dr_speedp-online_speca.yaml")
    )
    p.add_argument(
        "--durations", type=float, nargs="+", default=[16.7, 7.0], help="seconds of audio"
    )
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per variant and duration")
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
    p.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the int8 ONNX Runtime model (export: about a minute, 11 GB peak) and its "
        "accuracy cost on the reference small model",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--output",
        default=str(REPO / "bench/results/cpu_rtf"),
        help="writes OUTPUT.md and OUTPUT.json",
    )
    p.add_argument(
        "--int8_output",
        default=str(REPO / "bench/results/cpu_int8"),
        help="with --int8: writes INT8_OUTPUT.md and INT8_OUTPUT.json",
    )
    return p


def speech(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """The repository's recordings, concatenated (repeated if needed) and cut to ``seconds``."""
    files = sorted(AUDIO.rglob("*.wav"))
    audio = np.concatenate([load_audio(f) for f in files])
    n = round(seconds * sample_rate)
    return np.tile(audio, -(-n // audio.size))[:n]


def random_model(cfg: dict, seed: int) -> Jasper:
    torch.manual_seed(seed)
    model = config.build_model(cfg)
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            m.weight.data.copy_(0.8 + 0.4 * torch.rand(c, generator=generator))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=generator))
    return model.eval()


@dataclass
class Result:
    """One run of a pipeline: the transcript, the valid log-probs, the network's seconds."""

    text: str
    log_probs: torch.Tensor
    network_s: float


class Pipeline:
    """Waveform -> transcript with one prepared model (:class:`InferenceModel` or
    :class:`Int8Model`)."""

    def __init__(self, model: nn.Module, features: FilterbankFeatures, labels: list[str]) -> None:
        self.model, self.features, self.labels = model, features, labels

    @torch.inference_mode()
    def __call__(self, audio: torch.Tensor) -> Result:
        feats, lens = self.features(audio[None], torch.tensor([audio.numel()]))
        feats = nn.functional.pad(feats, (PAD_LEADING, 0))
        lens = lens + PAD_LEADING
        t0 = time.perf_counter()
        log_probs, enc_lens = self.model(feats, lens)
        text = greedy_texts(log_probs, enc_lens, self.labels)[0]
        network_s = time.perf_counter() - t0
        return Result(text, log_probs[0, : int(enc_lens[0])].float(), network_s)


def speed_variants(args: argparse.Namespace, bf16: bool) -> dict[str, SpeedOptions]:
    variants = {
        UPSTREAM: SpeedOptions.upstream(),
        "+ fold_batchnorm": SpeedOptions(fold_batchnorm=True, skip_masks=False),
        "+ skip_masks": SpeedOptions(fold_batchnorm=False, skip_masks=True),
        "fast path (fold_batchnorm + skip_masks)": SpeedOptions(),
        "fast path + fft_convs": SpeedOptions(fft_convs=True),
    }
    if args.compile:
        variants["fast path + compile"] = SpeedOptions(compile=True)
    if bf16:
        variants["fast path bf16"] = SpeedOptions(dtype=torch.bfloat16)
        variants["fast path bf16 + fft_convs"] = SpeedOptions(fft_convs=True, dtype=torch.bfloat16)
        if args.compile:
            variants["fast path bf16 + fft_convs + compile"] = SpeedOptions(
                fft_convs=True, dtype=torch.bfloat16, compile=True
            )
    return variants


def model_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def build_pipelines(
    args: argparse.Namespace, cfg: dict, features: FilterbankFeatures, tmp: Path
) -> tuple[dict[str, Pipeline], dict[str, float], dict[str, str]]:
    """``(pipelines, model memory GB, notes)`` of every variant, warmed up."""
    labels = list(cfg["labels"])
    model = random_model(cfg, args.seed)
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and machine.native_bf16())
    pipelines, memory, notes = {}, {}, {}
    fastest = {
        SpeedOptions.fastest_for("cpu"): "SpeedOptions.fastest_for('cpu')",
        SpeedOptions.fastest_for("cpu", half_ok=True): "fastest_for('cpu', half_ok=True)",
    }
    warm = torch.from_numpy(speech(min(args.durations)))  # then once per duration in measure()
    prepared_weights: dict[tuple, InferenceModel] = {}
    for name, options in speed_variants(args, bf16).items():
        t0 = time.perf_counter()
        # Variants whose weights are the same (the mask and compile options do not touch them)
        # share one prepared copy: eight copies of a 1.3 GB model do not fit every machine.
        key = (options.fold_batchnorm, options.fft_convs, options.dtype)
        if key not in prepared_weights:
            prepared_weights[key] = prepare(model, options)
        prepared = InferenceModel(prepared_weights[key].model, options)
        memory[name] = model_bytes(prepared) / 1e9
        pipelines[name] = Pipeline(prepared, features, labels)
        if options in fastest:
            notes[name] = fastest.pop(options)
        for _ in range(args.warmup):  # compiles here, for the compile variants
            pipelines[name](warm)
        print(f"prepared {name} in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.int8:
        t0 = time.perf_counter()
        path = export_int8(model, cfg, [AUDIO / f for f in CALIBRATION], tmp / "jasper_int8.onnx")
        int8 = Int8Model(path, threads=args.threads)
        memory[INT8] = path.stat().st_size / 1e9
        pipelines[INT8] = Pipeline(int8, features, labels)
        notes[INT8] = "jasper.int8.Int8Model"
        for _ in range(args.warmup):
            pipelines[INT8](warm)
        print(f"exported and loaded {INT8} in {time.perf_counter() - t0:.1f} s", flush=True)
    return pipelines, memory, notes


def measure(
    pipelines: dict[str, Pipeline], duration: float, repeats: int
) -> tuple[list[dict], tuple[float, float]]:
    """Rows for one duration (speed-ups against the first pipeline, upstream-style) and the
    1-minute load average before and after the timed runs."""
    audio = torch.from_numpy(speech(duration))
    for pipeline in pipelines.values():  # untimed: compile variants compile once per shape
        pipeline(audio)
    load_before = os.getloadavg()[0]  # other processes skew timings: recorded beside them
    reference = pipelines[UPSTREAM](audio)
    totals: dict[str, list[float]] = {name: [] for name in pipelines}
    networks: dict[str, list[float]] = {name: [] for name in pipelines}
    results: dict[str, Result] = {}
    for _ in range(repeats):
        for name, pipeline in pipelines.items():  # round-robin: background load hits all alike
            t0 = time.perf_counter()
            results[name] = pipeline(audio)
            totals[name].append(time.perf_counter() - t0)
            networks[name].append(results[name].network_s)
    load_after = os.getloadavg()[0]
    base_min, base_median = min(totals[UPSTREAM]), statistics.median(totals[UPSTREAM])
    rows = []
    for name, result in results.items():
        fastest, median = min(totals[name]), statistics.median(totals[name])
        same_frames = result.log_probs.argmax(-1) == reference.log_probs.argmax(-1)
        rows.append(
            {
                "variant": name,
                "rtf": fastest / duration,
                "seconds_min": fastest,
                "seconds_median": median,
                "network_seconds_min": min(networks[name]),
                "speedup_vs_upstream_style": base_min / fastest,
                "speedup_vs_upstream_style_median": base_median / median,
                "transcript_unchanged": result.text == reference.text,
                "transcript_cer_vs_upstream_style": char_error_rate(
                    [result.text], [reference.text]
                )[0],
                "frames_argmax_unchanged": float(same_frames.float().mean()),
                "max_abs_logprob_diff": float((result.log_probs - reference.log_probs).abs().max()),
            }
        )
    return rows, (load_before, load_after)


# --------------------------------------------------------------------------------------------
# int8 (and bf16) accuracy on a real model


def references() -> dict[str, str]:
    """Reference transcripts of the recordings that have one (a ``.txt`` beside the ``.wav``)."""
    return {
        w.name: w.with_suffix(".txt").read_text().strip().lower()
        for w in sorted(AUDIO.rglob("*.wav"))
        if w.with_suffix(".txt").is_file()
    }


def int8_accuracy(threads: int, tmp: Path) -> dict:
    """The small reference model on every recording in fp32, bf16 (+ fft_convs) and int8."""
    model, cfg = load_model(SMALL_MODEL / "checkpoint.pt", SMALL_MODEL / "config.yaml")
    path = export_int8(model, cfg, [AUDIO / f for f in CALIBRATION], tmp / "small_int8.onnx")
    transcribers = {
        "fp32": Transcriber(prepare(model, SpeedOptions()), cfg),
        "bf16 + fft_convs": Transcriber(
            prepare(model, SpeedOptions(fft_convs=True, dtype=torch.bfloat16)), cfg
        ),
        "int8": Transcriber(Int8Model(path, threads=threads), cfg),
    }
    refs = references()
    recordings = []
    for wav in sorted(AUDIO.rglob("*.wav")):
        out = {name: t.transcribe_file(wav) for name, t in transcribers.items()}
        fp32 = out["fp32"]
        top2 = fp32.log_probs.topk(2, dim=-1).values
        margin = top2[:, 0] - top2[:, 1]
        entry = {
            "recording": str(wav.relative_to(AUDIO)),
            "calibration": wav.name in CALIBRATION,
            "reference": refs.get(wav.name),
            "frames": int(fp32.log_probs.size(0)),
        }
        for name, t in out.items():
            flipped = t.log_probs.argmax(-1) != fp32.log_probs.argmax(-1)
            entry[name] = {
                "text": t.text,
                "cer_vs_fp32": char_error_rate([t.text], [fp32.text])[0],
                "frames_argmax_unchanged": 1.0 - float(flipped.float().mean()),
                "largest_fp32_margin_flipped": float(margin[flipped].max()) if flipped.any() else 0,
                "max_abs_logprob_diff": float((t.log_probs - fp32.log_probs).abs().max()),
            }
        recordings.append(entry)
    summary = {}
    for name in transcribers:
        for group, keep in (("held-out", False), ("calibration", True)):
            sel = [r for r in recordings if r["calibration"] == keep]
            hyps, fp32s = [r[name]["text"] for r in sel], [r["fp32"]["text"] for r in sel]
            with_ref = [r for r in sel if r["reference"]]
            summary[f"{name} / {group}"] = {
                "recordings": len(sel),
                "cer_vs_fp32": char_error_rate(hyps, fp32s)[0],
                "frames_argmax_unchanged": float(
                    np.average(
                        [r[name]["frames_argmax_unchanged"] for r in sel],
                        weights=[r["frames"] for r in sel],
                    )
                ),
                "largest_fp32_margin_flipped": max(
                    r[name]["largest_fp32_margin_flipped"] for r in sel
                ),
                "cer_vs_reference": char_error_rate(
                    [r[name]["text"] for r in with_ref], [r["reference"] for r in with_ref]
                )[0]
                if with_ref
                else None,
                "wer_vs_reference": word_error_rate(
                    [r[name]["text"] for r in with_ref], [r["reference"] for r in with_ref]
                )[0]
                if with_ref
                else None,
            }
    return {
        "model": str(SMALL_MODEL.relative_to(REPO)),
        "summary": summary,
        "recordings": recordings,
    }


# --------------------------------------------------------------------------------------------
# Tables


def speed_table(rows: list[dict]) -> list[str]:
    lines = [
        "| variant | RTF | seconds (min / median) | network s | x upstream-style (min / median) "
        "| transcript = upstream-style | frames argmax = | max abs log-prob diff | model GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = (
            "yes"
            if r["transcript_unchanged"]
            else f"no (CER {r['transcript_cer_vs_upstream_style']:.1%})"
        )
        name = f"{r['variant']} ({r['note']})" if r.get("note") else r["variant"]
        speedup = (
            f"**{r['speedup_vs_upstream_style']:.2f}x** / "
            f"{r['speedup_vs_upstream_style_median']:.2f}x"
        )
        lines.append(
            f"| {name} | {r['rtf']:.4f} | {r['seconds_min']:.3f} / {r['seconds_median']:.3f} "
            f"| {r['network_seconds_min']:.3f} | {speedup} | {same} "
            f"| {r['frames_argmax_unchanged']:.2%} | {r['max_abs_logprob_diff']:.1e} "
            f"| {r['model_gb']:.2f} |"
        )
    return lines


def header(result: dict) -> list[str]:
    m = result["machine"]
    return [
        f"Machine: {m['summary']}; AVX-512: {m['avx512']}, native bf16: {m['native_bf16']}. "
        f"Batch 1, {result['threads']} threads, {result['repeats']} runs per variant and duration, "
        "variants interleaved; RTF and speed-ups from the fastest run (the machine was shared: "
        "the 1-minute load average is given per duration), medians beside. RTF = seconds per "
        "second of audio, waveform to transcript; random weights (jasper10x5dr).",
        "",
    ]


def write_speed(result: dict, out: Path) -> None:
    lines = [f"# CPU real-time factor: {result['model']}, batch 1", "", *header(result)]
    for d in result["durations"]:
        load = d["load_average_1min"]
        lines += [
            f"## {d['duration_s']} s of speech (load average {load[0]:.2f} before, "
            f"{load[1]:.2f} after)",
            "",
            *speed_table(d["rows"]),
            "",
        ]
    if not result["machine"]["native_bf16"]:
        lines += ["bf16 not measured: this CPU has no native bf16 (AVX-512 BF16 / AMX).", ""]
    lines += [
        "Random weights put many frames near a tie, so bf16 and int8 flip some argmaxes and the "
        "transcript of this model; their accuracy cost on a real model is in cpu_int8.md.",
    ]
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def write_int8(result: dict, accuracy: dict, out: Path) -> None:
    keep = ("fast path + fft_convs", "fast path bf16", "fast path bf16 + fft_convs", INT8)
    lines = [
        "# int8 on the CPU: speed and accuracy cost",
        "",
        "## Speed: jasper10x5dr, batch 1 (from cpu_rtf.md)",
        "",
        *header(result),
    ]
    for d in result["durations"]:
        rows = [r for r in d["rows"] if r["variant"] in (UPSTREAM, *keep)]
        lines += [f"### {d['duration_s']} s of speech", "", *speed_table(rows), ""]
    lines += [
        f"## Accuracy: the reference small model ({accuracy['model']}) on the repository's "
        "recordings",
        "",
        "int8 calibrated on " + ", ".join(CALIBRATION) + "; held out: the other recordings "
        "(those with a reference transcript: goforward and the five LibriVox ones). The small "
        "model is barely trained: its transcripts are gibberish and many frames are near a tie, "
        "so the comparison with fp32 is the measure here; CER/WER against the references only "
        "shows it is not a speech recogniser. The quick-start test voice is not available "
        "offline here; these recordings stand in for it.",
        "",
        "| precision / recordings | n | CER vs fp32 transcripts | frames argmax = fp32 "
        "| largest fp32 top-2 margin flipped | CER vs reference | WER vs reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in accuracy["summary"].items():
        ref = (
            f"{s['cer_vs_reference']:.1%} | {s['wer_vs_reference']:.1%}"
            if s["cer_vs_reference"] is not None
            else "- | -"
        )
        lines.append(
            f"| {name} | {s['recordings']} | {s['cer_vs_fp32']:.1%} | "
            f"{s['frames_argmax_unchanged']:.2%} | {s['largest_fp32_margin_flipped']:.2f} | {ref} |"
        )
    lines += ["", "Per recording (CER vs fp32, frames argmax = fp32):", ""]
    lines += [
        "| recording | calibration | frames | bf16 + fft_convs | int8 |",
        "|---|---|---|---|---|",
    ]
    for r in accuracy["recordings"]:
        cells = [
            f"{r[n]['cer_vs_fp32']:.1%}, {r[n]['frames_argmax_unchanged']:.1%}"
            for n in ("bf16 + fft_convs", "int8")
        ]
        lines.append(
            f"| {r['recording']} | {'yes' if r['calibration'] else 'no'} | {r['frames']} | "
            + " | ".join(cells)
            + " |"
        )
    payload = {
        "speed": {
            **{k: v for k, v in result.items() if k != "durations"},
            "durations": [
                {**d, "rows": [r for r in d["rows"] if r["variant"] in (UPSTREAM, *keep)]}
                for d in result["durations"]
            ],
        },
        "accuracy": accuracy,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config.load(args.model_config)
    _, features_kw = config.input(cfg, "val")
    features = FilterbankFeatures(**features_kw).eval()
    with tempfile.TemporaryDirectory() as tmp:
        pipelines, memory, notes = build_pipelines(args, cfg, features, Path(tmp))
        durations = []
        for duration in args.durations:
            rows, load = measure(pipelines, duration, args.repeats)
            for r in rows:
                r["model_gb"] = memory[r["variant"]]
                r["note"] = notes.get(r["variant"], "")
            durations.append({"duration_s": duration, "load_average_1min": load, "rows": rows})
            print(f"{duration} s done (load average {load[0]:.2f} / {load[1]:.2f})", flush=True)
        del pipelines
        accuracy = int8_accuracy(args.threads, Path(tmp)) if args.int8 else None
    result = {
        "model": Path(args.model_config).name,
        "batch_size": 1,
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": {
            "summary": machine.summary(),
            "cpu": machine.cpu_name(),
            "native_bf16": machine.native_bf16(),
            "avx512": any(f.startswith("avx512") for f in machine.cpu_flags()),
        },
        "durations": durations,
    }
    write_speed(result, Path(args.output))
    print(Path(args.output).with_suffix(".md").read_text())
    if accuracy is not None:
        write_int8(result, accuracy, Path(args.int8_output))
        print(Path(args.int8_output).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
