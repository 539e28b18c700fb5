"""What int8 costs in accuracy: greedy WER of a trained checkpoint in fp32 and in int8.

Exports the checkpoint's int8 acoustic model (jasper/int8.py: ONNX Runtime static quantization,
calibrated on up to ``--calibration_count`` recordings spread over a second manifest, e.g. dev),
then transcribes the same test utterances with the fp32 PyTorch model
(``jasper.prepare.SpeedOptions()`` defaults) and with the int8 model, both on the CPU through
``jasper.transcribe.Transcriber`` (whole recordings, greedy, the checkpoint's ``pad_leading``).
Reports the WER of each, overall and per speaker (the first dash-separated field of the file
name; ``--speakers`` names them), and how many transcripts differ. The wall times are a
by-product, not a benchmark (``bench/cpu_rtf.py`` measures speed).

    python bench/int8_wer.py --ckpt results/Jasper_best_checkpoint.pt \\
        --manifest /datasets/LibriSpeech/librispeech-test-clean-wav.json \\
        --dataset_dir /datasets/LibriSpeech \\
        --calibration_manifest /datasets/LibriSpeech/librispeech-dev-clean-wav.json \\
        --speakers /datasets/LibriSpeech/SPEAKERS.TXT --out bench/results/int8_quickstart

writes ``PREFIX.md`` and ``PREFIX.json`` (``--out PREFIX``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import onnxruntime

from common import machine
from common.dataset import Utterance, read_manifests
from common.metrics import word_error_rate
from jasper import decoding_settings
from jasper.int8 import Int8Model, export_int8
from jasper.prepare import SpeedOptions, prepare
from jasper.transcribe import Transcriber, load_model
from utils.make_demo_corpus import read_speakers, speaker_of


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--ckpt", required=True, help="checkpoint of this recipe (config inside)")
    p.add_argument("--model_config", default=None, help="config, if the checkpoint has none")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="the EMA weights (as inference.py)")  # fmt: skip
    p.add_argument("--manifest", required=True, help="test manifest with transcripts")
    p.add_argument("--dataset_dir", default=".", help="folder the manifests' paths are relative to")
    p.add_argument("--calibration_manifest", required=True, help="manifest of calibration audio")
    p.add_argument("--calibration_dir", default=None, help="its folder (default: --dataset_dir)")
    p.add_argument("--calibration_count", type=int, default=20, help="calibration recordings")
    p.add_argument("--int8", default=None, help="write the int8 model here (default: a temp dir)")
    p.add_argument("--pad_leading", type=int, default=None,
                   help="default: the checkpoint's decoding settings, else 16")  # fmt: skip
    p.add_argument("--speakers", default=None, help="SPEAKERS.TXT: 'id | ... | name' lines")
    p.add_argument("--limit", type=int, default=0, help="at most this many utterances a speaker")
    p.add_argument("--out", default=None, metavar="PREFIX", help="write PREFIX.md, PREFIX.json")
    return p


def speaker(utt: Utterance) -> str:
    return speaker_of(utt.speed_one_file().path)


def evaluation_utterances(args: argparse.Namespace, labels: list[str]) -> list[Utterance]:
    utts = read_manifests([args.manifest], args.dataset_dir, labels, min_duration=0.0)
    if not args.limit:
        return utts
    taken: dict[str, int] = defaultdict(int)
    kept = []
    for u in utts:
        taken[speaker(u)] += 1
        if taken[speaker(u)] <= args.limit:
            kept.append(u)
    return kept


def calibration_files(args: argparse.Namespace, labels: list[str]) -> list[Path]:
    """``--calibration_count`` recordings spread evenly over the calibration manifest."""
    data_dir = args.calibration_dir or args.dataset_dir
    utts = read_manifests([args.calibration_manifest], data_dir, labels, min_duration=0.0)
    n = min(args.calibration_count, len(utts))
    return [utts[i * len(utts) // n].speed_one_file().path for i in range(n)]


def transcribe(utts: list[Utterance], transcribers: dict[str, Transcriber]) -> dict:
    """``{variant: [transcript]}`` and ``{variant: seconds}``: each recording read once."""
    texts: dict[str, list[str]] = {name: [] for name in transcribers}
    seconds = dict.fromkeys(transcribers, 0.0)
    first = next(iter(transcribers.values()))
    for i, u in enumerate(utts):
        samples = first.load(u.speed_one_file().path)
        for name, transcriber in transcribers.items():
            start = time.perf_counter()
            texts[name].append(transcriber.transcribe(samples))
            seconds[name] += time.perf_counter() - start
        if (i + 1) % 100 == 0:
            print(f"{i + 1} / {len(utts)} utterances", flush=True)
    return {"texts": texts, "seconds": seconds}


def score(rows_of: dict[str, list[int]], refs: list[str], texts: dict, names: dict) -> list[dict]:
    """One row per speaker, then ``all``: utterances, words, WER % of each variant, differing."""
    rows = []
    for spk, idx in [*sorted(rows_of.items()), ("all", range(len(refs)))]:
        ref = [refs[i] for i in idx]
        row = {"speaker": spk, "name": names.get(spk, ""), "utterances": len(ref)}
        for variant, hyps in texts.items():
            _, errors, words = word_error_rate([hyps[i] for i in idx], ref)
            row["words"] = words
            row[f"{variant}_wer"] = 100.0 * errors / words if words else float("nan")
        row["differing"] = sum(texts["fp32"][i] != texts["int8"][i] for i in idx)
        rows.append(row)
    return rows


def markdown(rows: list[dict], info: dict) -> str:
    lines = [
        f"# int8 vs fp32 greedy WER: `{info['ckpt']}`",
        "",
        f"Test: `{info['manifest']}`, {info['utterances']} utterances "
        f"({info['audio_seconds'] / 60:.1f} min){info['limit_note']}; pad_leading "
        f"{info['pad_leading']}. int8: `jasper/int8.py` (ONNX Runtime {info['onnxruntime']}, "
        f"QDQ), calibrated on {len(info['calibration'])} recordings of "
        f"`{info['calibration_manifest']}`. fp32: PyTorch, `SpeedOptions()`. Both on the CPU, "
        "whole recordings through `Transcriber`.",
        "",
        f"Machine: {info['machine']}. Date: {info['date']}. Wall time (not a benchmark): fp32 "
        f"{info['seconds']['fp32']:.0f} s, int8 {info['seconds']['int8']:.0f} s.",
        "",
        f"Command: `{info['command']}`",
        "",
        "| speaker | name | utterances | words | fp32 WER % | int8 WER % | transcripts differing |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bold = "**" if r["speaker"] == "all" else ""
        lines.append(
            f"| {bold}{r['speaker']}{bold} | {r['name']} | {r['utterances']} | {r['words']} | "
            f"{r['fp32_wer']:.2f} | {r['int8_wer']:.2f} | {r['differing']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    command = shlex.join(["python", "bench/int8_wer.py", *(sys.argv[1:] if argv is None else argv)])
    model, cfg = load_model(args.ckpt, args.model_config, ema=args.ema)
    labels = list(cfg["labels"])
    pad = decoding_settings.pad_leading(args.ckpt, args.pad_leading)
    utts = evaluation_utterances(args, labels)
    calibration = calibration_files(args, labels)
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = Path(args.int8 or Path(tmp) / "int8.onnx")
        print(f"exporting the int8 model ({len(calibration)} calibration recordings) ...")
        export_int8(model, cfg, calibration, int8_path, pad_leading=pad)
        transcribers = {
            "fp32": Transcriber(prepare(model, SpeedOptions()), cfg, pad_leading=pad),
            "int8": Transcriber(Int8Model(int8_path), cfg, pad_leading=pad),
        }
        print(f"transcribing {len(utts)} utterances twice ...", flush=True)
        result = transcribe(utts, transcribers)
    texts = result["texts"]
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(utts):
        by_speaker[speaker(u)].append(i)
    refs = [u.transcript for u in utts]
    rows = score(by_speaker, refs, texts, read_speakers(args.speakers) if args.speakers else {})
    info = {
        "ckpt": args.ckpt, "manifest": args.manifest, "utterances": len(utts),
        "audio_seconds": sum(u.duration for u in utts),
        "limit_note": f", at most {args.limit} per speaker" if args.limit else "",
        "pad_leading": pad, "onnxruntime": onnxruntime.__version__,
        "calibration_manifest": args.calibration_manifest,
        "calibration": [str(p) for p in calibration], "machine": machine.summary(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "command": command,
        "seconds": result["seconds"],
    }  # fmt: skip
    table = markdown(rows, info)
    print(table)
    if args.out:
        differing = [
            {"name": str(u.speed_one_file().path), "reference": refs[i],
             "fp32": texts["fp32"][i], "int8": texts["int8"][i]}
            for i, u in enumerate(utts) if texts["fp32"][i] != texts["int8"][i]
        ]  # fmt: skip
        report = {**info, "machine": {**machine.describe(), "onnxruntime": onnxruntime.__version__},
                  "rows": rows, "differing": differing}  # fmt: skip
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.md").write_text(table)
        Path(f"{out}.json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"written: {out}.md, {out}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
