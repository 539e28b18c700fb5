#!/usr/bin/env python3
"""Latency and accuracy of streaming transcription (jasper.streaming) and of VAD splitting
(common.vad) against whole-file transcription, on the real recordings of data/audio.

    .venv/bin/python bench/streaming_table.py            # writes bench/results/streaming.{md,json}

Accuracy rows stream each recording in 0.1 s blocks through the model of ``--ckpt`` (default: the
small reference model of tests/data/reference, which is NOT trained on speech: its transcripts are
deterministic gibberish, so its CER measures how far the streamed output strays from the offline
one, a stress test, not a trained model's WER cost) and compare with the offline transcript of the
same samples (jasper.transcribe.Transcriber: exact, whole-recording normalisation):

- latency: audio after a frame before its output is final (chunk + right context + 30 ms of
  feature margin); compute per step (mean and 95th percentile, per chunk), real-time factor; word
  latency: audio received when a word is emitted minus its end, plus that step's compute (words
  of ``finish()`` left out);
- CER / WER of the streamed transcript against the offline one (and against the reference text
  where the recording has one);
- feature error: RMS difference (in units of the offline std) between the normalised features
  the stream gives the model for each chunk's frames and the offline features: the cost of
  running normalisation statistics, independent of the model.

Timing rows stream ``--timing_seconds`` of audio through full-size models with random weights
(jasper10x5dr, quartznet15x5; fold_batchnorm + skip_masks), only for compute per step.

VAD rows split the recording with 1 s pauses inserted between its files (low noise, -60 dBFS) at
pauses (common.vad.split_at_pauses), check that every cut falls inside an inserted pause or
another pause of the VAD and that no file is cut, and compare the segment-by-segment transcript
with the whole-file one; the control row transcribes each file alone (cuts exactly between files).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common import machine
from common.audio import load_audio
from common.metrics import char_error_rate, word_error_rate
from common.vad import join_texts, split_at_pauses, transcribe_with_vad
from jasper import config
from jasper.prepare import SpeedOptions, prepare
from jasper.streaming import StreamingTranscriber
from jasper.transcribe import Transcriber, load_model, receptive_field

REPO = Path(__file__).resolve().parents[1]

AUDIO = REPO / "data" / "audio"
SMALL = REPO / "tests" / "data" / "reference" / "small_model"
LIBRIVOX = sorted((AUDIO / "librivox").glob("*.wav"))
EXAMPLES = [AUDIO / f"example{i}.wav" for i in (1, 2, 3)]
SAMPLE_RATE = 16000  # Hz
BLOCK_SECONDS = 0.1  # audio handed to feed() at a time, as a sound card would
PARTS = ("accuracy", "vad", "timing")


@dataclass(frozen=True)
class Setting:
    chunk: float
    left: float
    right: float
    stats: str = "running"  # running | window10 | oracle
    warmup: float = 2.0  # seconds of audio before the first step

    @property
    def label(self) -> str:
        return f"{self.chunk:g} / {self.left:g} / {self.right:g}"


ACCURACY_SETTINGS = [
    Setting(0.5, 1.0, 0.5),
    Setting(1.0, 2.0, 1.0),
    Setting(2.0, 4.0, 2.0),
    Setting(1.0, 2.0, 1.0, warmup=0.0),
    Setting(1.0, 2.0, 1.0, warmup=5.0),
    Setting(1.0, 2.0, 1.0, "window10"),
    Setting(1.0, 2.0, 1.0, "oracle"),
    Setting(1.0, 2.0, 0.2, "oracle"),
]
TIMING_SETTINGS = [Setting(0.5, 1.0, 0.5), Setting(1.0, 2.0, 1.0), Setting(2.0, 4.0, 2.0)]
STATS_LABEL = {
    "running": "running, all audio so far",
    "window10": "running, last 10 s",
    "oracle": "whole recording (not causal)",
}


@dataclass
class Recording:
    name: str
    files: list[Path]
    reference: str | None = None
    samples: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.samples = np.concatenate([load_audio(f) for f in self.files])

    @property
    def seconds(self) -> float:
        return self.samples.size / SAMPLE_RATE


def recordings() -> list[Recording]:
    # The transcripts are lower case, without punctuation: the model's alphabet already.
    librivox_text = " ".join(" ".join(f.with_suffix(".txt").read_text().split()) for f in LIBRIVOX)
    return [
        Recording("librivox + example1-3", LIBRIVOX + EXAMPLES),
        Recording("librivox", LIBRIVOX, librivox_text),
        Recording("keynote", [AUDIO / "keynote.wav"]),
        Recording("all 9 files (example4: 0.5 s of digital silence)", LIBRIVOX + EXAMPLES[:3]
                  + [AUDIO / "example4.wav"]),
    ]  # fmt: skip


class Probe(StreamingTranscriber):
    """Records, for each model step, the normalised features of the chunk's frames (the frames
    whose outputs are kept), to compare with the offline features."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chunk_features: list[tuple[int, torch.Tensor]] = []

    def _features(self, lo: int, hi: int) -> torch.Tensor:
        x = super()._features(lo, hi)
        start = self._next  # the chunk this buffer is for starts here (padded frames)
        self.chunk_features.append((start, x[:, start - lo : start - lo + self.chunk]))
        return x


def stream(streamer: StreamingTranscriber, samples: np.ndarray) -> dict:
    """Feed ``samples`` in blocks as they would arrive; timings and the transcript."""
    block = round(BLOCK_SECONDS * SAMPLE_RATE)
    chunk_seconds = streamer.chunk * streamer.hop / SAMPLE_RATE
    step_seconds, word_latency, total = [], [], 0.0
    for i in range(0, samples.size, block):
        before = streamer.final_seconds
        t0 = time.perf_counter()
        words = streamer.feed(samples[i : i + block])
        spent = time.perf_counter() - t0
        total += spent
        steps = math.ceil((streamer.final_seconds - before) / chunk_seconds - 1e-9)
        if steps:
            step_seconds += [spent / steps] * steps
        received = min(samples.size, i + block) / SAMPLE_RATE
        word_latency += [received - w.end + spent for w in words]
    t0 = time.perf_counter()
    streamer.finish()
    total += time.perf_counter() - t0
    return {
        "text": streamer.text,
        "step_seconds": step_seconds,
        "word_latency": word_latency,
        "rtf": total / (samples.size / SAMPLE_RATE),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def build_streamer(model, cfg, setting: Setting, offline: Transcriber, samples: np.ndarray):
    kwargs = {}
    if setting.stats == "window10":
        kwargs["stats_seconds"] = 10.0
    elif setting.stats == "oracle":
        x, _ = offline.log_mel.compute(
            torch.from_numpy(samples)[None], torch.tensor([samples.size])
        )
        x = x[0].double()
        kwargs["statistics"] = (x.mean(dim=1), x.std(dim=1))
    return Probe(
        model, cfg, chunk_seconds=setting.chunk, left_seconds=setting.left,
        right_seconds=setting.right, warmup_seconds=setting.warmup, **kwargs,
    )  # fmt: skip


def feature_error(probe: Probe, offline: Transcriber, samples: np.ndarray) -> float:
    """RMS of (streamed - offline) normalised features over the chunks' frames."""
    x, lens = offline.features.compute(
        torch.from_numpy(samples)[None], torch.tensor([samples.size])
    )
    reference = torch.nn.functional.pad(x[0, :, : int(lens[0])], (probe.pad_leading, 0))
    squares, count = 0.0, 0
    for start, got in probe.chunk_features:
        want = reference[:, start : start + got.size(1)]
        squares += float(((got - want) ** 2).sum())
        count += got.numel()
    return math.sqrt(squares / max(count, 1))


@torch.inference_mode()
def sensitivity(model, cfg, rec: Recording, shift: float = 0.01) -> float:
    """CER between the offline transcript and the one of the same features shifted by ``shift``
    std everywhere: how far the model's letters move for a tiny change of its input."""
    offline = Transcriber(model, cfg)
    audio = torch.from_numpy(rec.samples)[None]
    x, lens = offline.features.compute(audio, torch.tensor([rec.samples.size]))
    texts = []
    for delta in (0.0, shift):
        feats = torch.nn.functional.pad(x[0, :, : int(lens[0])] + delta, (offline.pad_leading, 0))
        log_probs, _ = model(feats[None], torch.tensor([feats.size(1)]))
        texts.append(" ".join(offline.decode(log_probs[0]).split()))
    return char_error_rate([texts[1]], [texts[0]])[0]


def accuracy_rows(model, cfg, recs: list[Recording]) -> list[dict]:
    offline = Transcriber(model, cfg)
    rows = []
    for rec in recs:
        whole = " ".join(offline.transcribe(rec.samples).split())
        ref_wer = word_error_rate([whole], [rec.reference])[0] if rec.reference else None
        for setting in ACCURACY_SETTINGS:
            probe = build_streamer(model, cfg, setting, offline, rec.samples)
            out = stream(probe, rec.samples)
            rows.append({
                "recording": rec.name,
                "seconds": round(rec.seconds, 2),
                "chunk_left_right": setting.label,
                "statistics": STATS_LABEL[setting.stats],
                "warmup_s": setting.warmup,
                "latency_s": round(probe.latency_seconds, 3),
                "cer_vs_offline": char_error_rate([out["text"]], [whole])[0],
                "wer_vs_offline": word_error_rate([out["text"]], [whole])[0],
                "wer_vs_reference": (
                    word_error_rate([out["text"]], [rec.reference])[0] if rec.reference else None
                ),
                "offline_wer_vs_reference": ref_wer,
                "feature_rms_error": feature_error(probe, offline, rec.samples),
                "step_ms_median": 1000 * statistics.median(out["step_seconds"]),
                "step_ms_p95": 1000 * percentile(out["step_seconds"], 0.95),
                "rtf": out["rtf"],
                "words_emitted_live": len(out["word_latency"]),
                "word_latency_mean_s": (
                    statistics.mean(out["word_latency"]) if out["word_latency"] else None
                ),
                "word_latency_max_s": max(out["word_latency"]) if out["word_latency"] else None,
            })  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def timing_rows(samples: np.ndarray) -> list[dict]:
    rows = []
    for config_file in (
        "configs/jasper10x5dr_speedp-online_speca.yaml",
        "configs/quartznet15x5_speedp-online-1.15_speca.yaml",
    ):
        cfg = config.load(REPO / config_file)
        model = prepare(config.build_model(cfg).eval(), SpeedOptions(), inplace=True)
        half_width, _ = receptive_field(model)
        for setting in TIMING_SETTINGS:
            streamer = StreamingTranscriber(
                model, cfg, chunk_seconds=setting.chunk, left_seconds=setting.left,
                right_seconds=setting.right, warmup_seconds=0.0,
            )  # fmt: skip
            out = stream(streamer, samples)
            steps = out["step_seconds"][2:]  # the first steps allocate
            rows.append({
                "model": Path(config_file).stem.split("_")[0] + " (random weights)",
                "receptive_field_s": round(half_width / 100, 2),
                "chunk_left_right": setting.label,
                "latency_s": round(streamer.latency_seconds, 3),
                "step_ms_median": 1000 * statistics.median(steps),
                "step_ms_p95": 1000 * percentile(steps, 0.95),
                "rtf": out["rtf"],
                "latency_with_compute_s": streamer.latency_seconds + percentile(steps, 0.95),
            })  # fmt: skip
            print(rows[-1], flush=True)
        del model
    return rows


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def level_db(samples: np.ndarray, at: int, half_width: int = 800) -> float:
    """RMS level of 100 ms around sample ``at``, in dB against the whole recording's RMS."""
    around = samples[max(0, at - half_width) : at + half_width]
    return round(20 * math.log10(max(rms(around), 1e-10) / rms(samples)), 1)


def vad_rows(model, cfg) -> list[dict]:
    """Files of librivox + example1-3 joined with 1 s of -60 dBFS noise between them."""
    offline = Transcriber(model, cfg)
    rng = np.random.default_rng(0)
    parts, files, pauses, position = [], [], [], 0
    for path in LIBRIVOX + EXAMPLES:
        x = load_audio(path)
        parts.append(x)
        files.append((position, position + x.size))
        position += x.size
        pause = (1e-3 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
        parts.append(pause)
        pauses.append((position, position + pause.size))
        position += pause.size
    samples = np.concatenate(parts)
    whole = " ".join(offline.transcribe(samples).split())
    rows = []
    for longest in (10.0, 20.0, 30.0):
        segments = split_at_pauses(samples, max_segment_seconds=longest)
        # Between two segments: the cut, and the pause audio that neither keeps.
        gaps = [(a.stop, b.start) for a, b in itertools.pairwise(segments)]
        in_pause = [any(g0 <= p1 and p0 <= g1 for p0, p1 in pauses) for g0, g1 in gaps]
        result = transcribe_with_vad(offline, samples, max_segment_seconds=longest)
        rows.append({
            "split": f"VAD, segments <= {longest:g} s",
            "segments": len(segments),
            "cuts": len(gaps),
            "cuts_in_inserted_pauses": sum(in_pause),
            # Cuts inside a file: where, and how loud 100 ms around the cut is against the
            # recording's RMS (a pause is far below it).
            "other_cuts_s": [
                (round((g0 + g1) / 2 / SAMPLE_RATE, 2), level_db(samples, (g0 + g1) // 2))
                for (g0, g1), p in zip(gaps, in_pause)
                if not p
            ],
            "cer_vs_whole": char_error_rate([result.text], [whole])[0],
            "wer_vs_whole": word_error_rate([result.text], [whole])[0],
        })  # fmt: skip
        print(rows[-1], flush=True)
    per_file = join_texts([offline.transcribe(samples[a:b]) for a, b in files])
    rows.append({
        "split": "each file alone (cuts exactly between files)",
        "segments": len(files), "cuts": len(files) - 1,
        "cuts_in_inserted_pauses": len(files) - 1, "other_cuts_s": [],
        "cer_vs_whole": char_error_rate([per_file], [whole])[0],
        "wer_vs_whole": word_error_rate([per_file], [whole])[0],
    })  # fmt: skip
    return rows


def fmt(value, digits: int = 1, percent: bool = False) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.{digits}f}%" if percent else f"{value:.{digits}f}"


def write_markdown(path: Path, table: dict) -> None:
    lines = [
        f"Streaming transcription (`jasper.streaming`) against whole-file transcription. Machine: "
        f"{table['machine']}. 1-minute load average at the start and end of each table: "
        + "; ".join(f"{part} {a} to {b}" for part, (a, b) in table["load_average"].items())
        + " (other work shares the CPUs: compute times are upper bounds). Command: "
        "`.venv/bin/python bench/streaming_table.py` (`--parts timing` remeasures one table).",
        "",
        f"Accuracy: model `{table['model']}` (not trained on speech: a consistency stress test, "
        "see docs/streaming.md). Chunk / left / right context in seconds; latency = audio after a "
        "frame before its output is final (chunk + right + 30 ms), compute aside. How sensitive "
        f"this model is: adding 0.01 std to every feature of {table['accuracy'][0]['recording']} "
        f"changes {fmt(table['sensitivity_cer_at_0.01_std'], percent=True)} of its offline "
        "transcript's letters (CER).",
        "",
        "| recording | s | chunk / left / right | statistics | warm-up (s) | latency (s) | CER vs offline "
        "| WER vs offline | feature error (σ) | ms / step (median, p95) | RTF | word latency (s, mean, max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table["accuracy"]:
        lines.append(
            f"| {r['recording']} | {r['seconds']:.1f} | {r['chunk_left_right']} | {r['statistics']} "
            f"| {r['warmup_s']:g} | {r['latency_s']:.2f} | {fmt(r['cer_vs_offline'], percent=True)} "
            f"| {fmt(r['wer_vs_offline'], percent=True)} | {fmt(r['feature_rms_error'], 3)} "
            f"| {fmt(r['step_ms_median'])}, {fmt(r['step_ms_p95'])} | {fmt(r['rtf'], 3)} "
            f"| {fmt(r['word_latency_mean_s'], 2)}, {fmt(r['word_latency_max_s'], 2)} "
            f"({r['words_emitted_live']} words) |"
        )
    refs = [r for r in table["accuracy"] if r["wer_vs_reference"] is not None]
    if refs:
        lines += [
            "",
            f"Against the reference text ({refs[0]['recording']}): offline WER "
            f"{fmt(refs[0]['offline_wer_vs_reference'], percent=True)}; streamed: "
            + ", ".join(
                f"{r['chunk_left_right']} ({r['statistics']}) {fmt(r['wer_vs_reference'], percent=True)}"
                for r in refs
            )
            + ". The untrained model recognises no word either way.",
        ]
    lines += [
        "",
        "Compute per step of full-size models (random weights: timing only; fold_batchnorm + "
        f"skip_masks, {table['threads']} threads). Receptive field: half width of one encoder "
        "frame's view, each side.",
        "",
        "| model | receptive field (s) | chunk / left / right | latency (s) | ms / step (median, p95) "
        "| RTF | latency + p95 compute (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table["timing"]:
        lines.append(
            f"| {r['model']} | {r['receptive_field_s']:.2f} | {r['chunk_left_right']} "
            f"| {r['latency_s']:.2f} | {fmt(r['step_ms_median'])}, {fmt(r['step_ms_p95'])} "
            f"| {fmt(r['rtf'], 3)} | {fmt(r['latency_with_compute_s'], 2)} |"
        )
    lines += [
        "",
        "VAD splitting (`common.vad`, Silero VAD): librivox + example1-3 joined with 1 s pauses "
        f"({table['model']}); CER/WER of the segment-by-segment transcript against the whole-file one.",
        "",
        "| split | segments | cuts in inserted pauses | other cuts: s (level vs recording RMS) "
        "| CER vs whole | WER vs whole |",
        "|---|---|---|---|---|---|",
    ]
    for r in table["vad"]:
        lines.append(
            f"| {r['split']} | {r['segments']} | {r['cuts_in_inserted_pauses']} of {r['cuts']} "
            f"| {', '.join(f'{t} ({db} dB)' for t, db in r['other_cuts_s']) or '—'} "
            f"| {fmt(r['cer_vs_whole'], percent=True)} "
            f"| {fmt(r['wer_vs_whole'], percent=True)} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--ckpt", default=str(SMALL / "checkpoint.pt"), help="model for accuracy rows")
    p.add_argument("--model_config", default=str(SMALL / "config.yaml"), help="its config")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--timing_seconds", type=float, default=20.0, help="audio per timing row")
    p.add_argument(
        "--out", default=str(REPO / "bench" / "results" / "streaming"), help="PREFIX of .md/.json"
    )
    p.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="tables to measure; the others are kept from PREFIX.json",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    json_path = out.with_suffix(".json")
    table = json.loads(json_path.read_text()) if json_path.exists() else {}
    model, cfg = load_model(args.ckpt, args.model_config)
    recs = recordings()
    table.update({
        "machine": machine.summary(),
        "model": str(
            Path(args.ckpt).relative_to(REPO) if Path(args.ckpt).is_relative_to(REPO) else args.ckpt
        ),
        "threads": args.threads,
    })  # fmt: skip
    measure = {
        "accuracy": lambda: accuracy_rows(model, cfg, recs),
        "vad": lambda: vad_rows(model, cfg),
        "timing": lambda: timing_rows(recs[0].samples[: round(args.timing_seconds * SAMPLE_RATE)]),
    }
    for part in args.parts:
        start = os.getloadavg()[0]
        if part == "accuracy":
            table["sensitivity_cer_at_0.01_std"] = sensitivity(model, cfg, recs[0])
        table[part] = measure[part]()
        table.setdefault("load_average", {})[part] = [round(start, 2), round(os.getloadavg()[0], 2)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(table, indent=1) + "\n")
    write_markdown(out.with_suffix(".md"), table)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
