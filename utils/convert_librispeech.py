#!/usr/bin/env python3
"""Convert one LibriSpeech split from FLAC to 16-bit PCM WAV and write its JSON manifest.

Reads ``<input_dir>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` (lines ``<utt_id> <TEXT>``)
and the FLAC files beside them, and writes ``<dest_dir>/<speaker>/<chapter>/<utt_id>.wav`` at
``--target_sr`` (16 kHz) plus, for each ``--speed`` s != 1, ``<utt_id>-<s>.wav``. Audio is decoded
and resampled with ``common.audio`` (soundfile + soxr), so no sox binary is needed.

Offline speed perturbation has sox ``speed`` semantics, as upstream's pysox
``Transformer().speed(s)``: factor s plays the audio s times faster (pitch and tempo together), so
the duration becomes duration / s. The signal is resampled as if it had been recorded at
``target_sr * s``. (The online augmentation in ``common.audio.SpeedPerturbation`` follows DALI
instead, and multiplies the length by s.)

The manifest is upstream's (docs/upstream.md#manifests), so upstream's manifests and ours are
interchangeable::

    [{"transcript": "lower-cased, stripped text",
      "files": [{"channels": 1, "sample_rate": 16000.0, "bitdepth": 16, "bitrate": 256000.0,
                 "duration": 14.53, "num_samples": 232480, "encoding": "Signed Integer PCM",
                 "silent": false, "fname": "train-clean-100-wav/103/1240/103-1240-0000.wav",
                 "speed": 1}],
      "original_duration": 14.53, "original_num_samples": 232480}, ...]

- ``fname`` is relative to the dataset folder, i.e. the parent of ``dest_dir``
  (``basename(dest_dir)/<speaker>/<chapter>/<file>``, as upstream).
- ``files`` lists the perturbed versions in increasing speed and the speed-1 file LAST (the DALI
  path and upstream's readers take ``files[-1]`` as the original: docs/upstream.md#u18);
  ``original_*`` describe the speed-1 file. ``bitrate`` is bits per second, ``silent`` is pysox's
  test (mean absolute amplitude below 0.001).
- Entries follow the sorted transcript files and their line order; the JSON is indented by 2.

Robust and idempotent, unlike upstream: an unreadable or corrupt FLAC is reported (path and reason)
and left out of the manifest, and the run goes on and prints how many were left out. WAVs are
written to a temporary file and renamed, so an interrupted run never leaves a truncated WAV that
looks finished; a second run reuses every valid WAV (``--overwrite`` converts again) and rewrites a
byte-identical manifest.

Usage::

    python utils/convert_librispeech.py --input_dir /datasets/LibriSpeech/train-clean-100 \\
        --dest_dir /datasets/LibriSpeech/train-clean-100-wav \\
        --output_json /datasets/LibriSpeech/librispeech-train-clean-100-wav.json \\
        [--speed 0.9 1.1] [--target_sr 16000] [--overwrite] [--parallel N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf
from tqdm import tqdm

from common.audio import SAMPLE_RATE, AudioLoadError, load_audio, resample

BITDEPTH = 16  # bits per sample of the WAVs written (PCM_16)
ENCODING = "Signed Integer PCM"  # what sox reports for PCM_16 WAV
SILENCE_THRESHOLD = 0.001  # pysox's file_info.silent(): mean |x| below this (x in [-1, 1])


@dataclass(frozen=True)
class Job:
    """One utterance to convert (plain data: it crosses process boundaries)."""

    flac: Path
    out_dir: Path  # <dest_dir>/<speaker>/<chapter>
    rel_dir: PurePosixPath  # basename(dest_dir)/<speaker>/<chapter>, for the manifest's fname
    utt_id: str
    transcript: str
    speeds: tuple[float, ...]  # perturbation factors, increasing, 1 excluded
    target_sr: int
    overwrite: bool


def scan_split(
    input_dir: Path, dest_dir: Path, speeds: tuple[float, ...], target_sr: int, overwrite: bool
) -> list[Job]:
    """One ``Job`` per transcript line, in sorted transcript-file order then line order."""
    jobs = []
    for trans in sorted(input_dir.rglob("*.trans.txt")):
        rel = trans.parent.relative_to(input_dir)
        with open(trans, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                # "<utt_id> <transcript>", split at the first space, as upstream's converter does.
                utt_id, _, transcript = line.partition(" ")
                jobs.append(
                    Job(
                        flac=trans.parent / f"{utt_id}.flac",
                        out_dir=dest_dir / rel,
                        rel_dir=PurePosixPath(dest_dir.name) / rel.as_posix(),
                        utt_id=utt_id,
                        transcript=transcript.lower().strip(),
                        speeds=speeds,
                        target_sr=target_sr,
                        overwrite=overwrite,
                    )
                )
    return jobs


def wav_name(utt_id: str, speed: float) -> str:
    """Upstream's names: ``<utt>.wav`` for speed 1, ``<utt>-<speed>.wav`` (e.g. ``-0.9``) else."""
    return f"{utt_id}.wav" if speed == 1 else f"{utt_id}-{speed}.wav"


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> int16, clipped (resampling can overshoot full scale). The scale 32768
    is libsndfile's, so a 16-bit FLAC read as float and written back is bit-exact."""
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)


def write_wav_atomic(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    """Write a PCM_16 WAV through a temporary file and ``os.replace``: a crash never leaves a
    truncated file under the final name."""
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(tmp, pcm, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def read_existing_wav(path: Path, sample_rate: int) -> np.ndarray | None:
    """The int16 samples of a finished WAV from an earlier run, or None when it has to be
    (re)written: missing, unreadable, or not mono 16-bit at ``sample_rate``."""
    if not path.is_file():
        return None
    try:
        info = sf.info(str(path))
        if info.samplerate != sample_rate or info.channels != 1 or info.subtype != "PCM_16":
            return None
        pcm, _ = sf.read(str(path), dtype="int16")
    except (RuntimeError, sf.LibsndfileError, ValueError):
        return None
    return pcm if pcm.size > 0 else None


def file_entry(pcm: np.ndarray, sample_rate: int, fname: str, speed: float) -> dict:
    """One ``files`` item, with pysox 1.4.1's ``file_info.info()`` keys in its order
    (docs/upstream.md#manifests)."""
    num_samples = int(pcm.shape[0])
    mean_norm = float(np.mean(np.abs(pcm.astype(np.float64)))) / 32768.0
    return {
        "channels": 1,
        "sample_rate": float(sample_rate),
        "bitdepth": BITDEPTH,
        "bitrate": float(sample_rate * BITDEPTH),  # bits/s of mono PCM
        "duration": num_samples / sample_rate,
        "num_samples": num_samples,
        "encoding": ENCODING,
        "silent": mean_norm < SILENCE_THRESHOLD,
        "fname": fname,
        "speed": 1 if speed == 1 else speed,
    }


def convert_utterance(job: Job) -> tuple[dict | None, str | None]:
    """Write the WAVs of one utterance; returns (manifest entry, None) or (None, error message).

    Runs in Pool workers, so it returns plain Python values only.
    """
    job.out_dir.mkdir(parents=True, exist_ok=True)
    source: np.ndarray | None = None  # decoded lazily: not needed when every WAV exists
    files = []
    for speed in (*job.speeds, 1):
        name = wav_name(job.utt_id, speed)
        path = job.out_dir / name
        pcm = None if job.overwrite else read_existing_wav(path, job.target_sr)
        if pcm is None:
            if source is None:
                try:
                    source = load_audio(job.flac, target_sr=job.target_sr)
                except AudioLoadError as e:
                    return None, str(e)
            # sox "speed s": read the samples as if recorded at sr * s, resample back to sr.
            audio = source if speed == 1 else resample(source, job.target_sr * speed, job.target_sr)
            pcm = to_pcm16(audio)
            write_wav_atomic(path, pcm, job.target_sr)
        files.append(file_entry(pcm, job.target_sr, str(job.rel_dir / name), speed))
    original = files[-1]
    entry = {
        "transcript": job.transcript,
        "files": files,
        "original_duration": original["duration"],
        "original_num_samples": original["num_samples"],
    }
    return entry, None


def write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def convert(
    input_dir: Path,
    dest_dir: Path,
    output_json: Path,
    speeds: tuple[float, ...] = (),
    target_sr: int = SAMPLE_RATE,
    overwrite: bool = False,
    parallel: int = 1,
    progress: bool = True,
) -> tuple[int, list[str]]:
    """Convert a split and write its manifest; returns (utterances written, error messages)."""
    perturbed = tuple(sorted({float(s) for s in speeds if s != 1}))
    jobs = scan_split(input_dir, dest_dir, perturbed, target_sr, overwrite)
    if not jobs:
        raise FileNotFoundError(f"no *.trans.txt files with utterances under {input_dir}")
    print(f"[{output_json}] {len(jobs)} utterances, speeds {[*perturbed, 1]}, {parallel} processes")
    errors: list[str] = []
    bar = tqdm(total=len(jobs), unit=" utts", desc=input_dir.name, disable=not progress)
    with bar:
        if parallel > 1:
            chunksize = max(1, min(64, len(jobs) // (parallel * 8)))
            with multiprocessing.Pool(parallel) as pool:
                results = list(_track(pool.imap(convert_utterance, jobs, chunksize), bar, errors))
        else:
            results = list(_track(map(convert_utterance, jobs), bar, errors))
    entries = [entry for entry in results if entry is not None]
    write_json_atomic(output_json, entries)
    return len(entries), errors


def _track(results, bar: tqdm, errors: list[str]):
    """Yield the entries in order, reporting each failure as it arrives."""
    for entry, error in results:
        if error is not None:
            errors.append(error)
            tqdm.write(f"ERROR: left out of the manifest: {error}", file=sys.stderr)
        bar.update(1)
        yield entry


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"speed factors must be > 0, got {text}")
    return value


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--input_dir", type=Path, required=True, help="a LibriSpeech split folder")
    parser.add_argument("--dest_dir", type=Path, required=True, help="folder for the WAV files")
    parser.add_argument("--output_json", type=Path, required=True, help="manifest to write")
    parser.add_argument(
        "-s",
        "--speed",
        type=_positive_float,
        nargs="*",
        default=[],
        help="offline speed perturbation factors (sox 'speed': duration / s); 1 is always added",
    )
    parser.add_argument("--target_sr", type=int, default=SAMPLE_RATE, help="output rate in Hz")
    parser.add_argument(
        "--overwrite", action="store_true", help="convert again even where a valid WAV exists"
    )
    parser.add_argument(
        "--parallel", type=int, default=os.cpu_count() or 1, help="worker processes"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show a tqdm progress bar",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if not args.input_dir.is_dir():
        print(f"ERROR: {args.input_dir} is not a folder", file=sys.stderr)
        return 1
    written, errors = convert(
        input_dir=args.input_dir,
        dest_dir=args.dest_dir,
        output_json=args.output_json,
        speeds=tuple(args.speed),
        target_sr=args.target_sr,
        overwrite=args.overwrite,
        parallel=args.parallel,
        progress=args.progress,
    )
    print(f"[{args.output_json}] {written} utterances written")
    if errors:
        print(
            f"WARNING: {len(errors)} of {written + len(errors)} utterances had unreadable audio "
            "and were left out of the manifest (listed above)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
