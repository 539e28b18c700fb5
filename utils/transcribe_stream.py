#!/usr/bin/env python3
"""Transcribe a stream with bounded latency: a file played as a stream, raw PCM on standard input,
or a microphone. Words are printed as they become final, with their times in the stream::

    python utils/transcribe_stream.py --ckpt CKPT data/audio/keynote.wav
    sox speech.wav -t raw -r 16000 -b 16 -e signed -c 1 - | python utils/transcribe_stream.py --ckpt CKPT -
    python utils/transcribe_stream.py --ckpt CKPT --mic          # needs: pip install sounddevice

Each output line is ``START END WORD`` (seconds). Standard input must be headerless 16-bit
little-endian mono PCM at the model's rate (16 kHz). ``--save_predictions PATH`` writes the whole
transcript as ``<name>\\t<transcript>`` (inference.py's format) when the stream ends: end of file,
end of input, or Ctrl-C for the microphone. How it works, and the latency and accuracy each
setting gives: docs/streaming.md (``jasper.streaming``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from common.audio import AudioLoadError
from common.checkpoint import CheckpointError
from jasper import config
from jasper.decoding import Word
from jasper.prepare import add_speed_arguments, speed_options
from jasper.streaming import (
    MicrophoneUnavailableError,
    StreamingTranscriber,
    file_chunks,
    microphone_chunks,
    pcm16_chunks,
)
from jasper.transcribe import Transcriber, add_checkpoint_arguments


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Streaming greedy CTC transcription with bounded latency.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "input",
        nargs="?",
        default=None,
        metavar="FILE|-",
        help="audio file played as a stream, or - for raw 16-bit mono PCM on standard input",
    )
    p.add_argument("--mic", action="store_true", help="record from the microphone instead")
    p.add_argument(
        "--mic_device",
        default=None,
        help="sounddevice input device (name or index; default: the system's)",
    )
    add_checkpoint_arguments(p)
    s = p.add_argument_group("streaming")
    s.add_argument(
        "--chunk_seconds", type=float, default=1.0, help="audio per model step whose output is kept"
    )
    s.add_argument(
        "--left_context",
        type=float,
        default=2.0,
        help="seconds of audio the model sees before a chunk",
    )
    s.add_argument(
        "--right_context",
        type=float,
        default=1.0,
        help="seconds of audio the model sees after a chunk (latency: chunk + right context)",
    )
    s.add_argument(
        "--warmup_seconds",
        type=float,
        default=2.0,
        help="audio received before the first step (the running normalisation settles)",
    )
    s.add_argument(
        "--stats_seconds",
        type=float,
        default=None,
        help="normalise with the statistics of the last this many seconds (default: all so far)",
    )
    s.add_argument(
        "--pad_leading",
        type=int,
        default=None,
        help="zero feature frames in front of the stream (default: the checkpoint's decoding "
        "settings, else 16)",
    )
    s.add_argument(
        "--block_seconds", type=float, default=0.1, help="audio read from the source at a time"
    )
    s.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="play a file at the speed it would be heard (a live demo)",
    )
    r = p.add_argument_group("device and speed")
    r.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto: CUDA when available",
    )
    r.add_argument(
        "--cpu", action="store_const", const="cpu", dest="device", help="same as --device cpu"
    )
    # FFT convolutions pay on long CPU inputs, not on the short buffers of a stream.
    add_speed_arguments(r, fft_convs="false")
    o = p.add_argument_group("output")
    o.add_argument(
        "--save_predictions",
        default=None,
        metavar="PATH",
        help="write '<name>\\t<transcript>' here when the stream ends",
    )
    return p


def build_streamer(args: argparse.Namespace) -> StreamingTranscriber:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is visible")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    speed = speed_options(args, device)
    # Streaming decodes greedily; the checkpoint's decoding settings give the leading padding.
    offline = Transcriber.from_checkpoint(
        args.ckpt, args.model_config, ema=args.ema, device=device, speed=speed,
        overrides=args.override_config, decoding={"decoder": "greedy"},
        pad_leading=args.pad_leading,
    )  # fmt: skip
    return StreamingTranscriber(
        offline.model, offline.cfg, device,
        chunk_seconds=args.chunk_seconds, left_seconds=args.left_context,
        right_seconds=args.right_context, warmup_seconds=args.warmup_seconds,
        stats_seconds=args.stats_seconds, pad_leading=offline.pad_leading,
    )  # fmt: skip


def source(args: argparse.Namespace, sample_rate: int) -> tuple[str, Iterator[np.ndarray]]:
    """``(name, blocks of samples)`` of the stream the arguments ask for."""
    if args.mic:
        return "microphone", microphone_chunks(sample_rate, args.block_seconds, args.mic_device)
    if args.input == "-":
        return "-", pcm16_chunks(sys.stdin.buffer, sample_rate, args.block_seconds)
    return args.input, file_chunks(
        args.input, sample_rate, args.block_seconds, realtime=args.realtime
    )


def print_words(words: list[Word]) -> None:
    for w in words:
        print(f"{w.start:8.2f} {w.end:8.2f}  {w.word}", flush=True)


def run(args: argparse.Namespace) -> int:
    if args.mic == (args.input is not None):
        raise ValueError("give one source: an audio FILE, - (standard input) or --mic")
    streamer = build_streamer(args)
    name, blocks = source(args, streamer.sample_rate)
    print(
        f"# streaming {name}: chunk {args.chunk_seconds} s, context {args.left_context} s left "
        f"and {args.right_context} s right; latency {streamer.latency_seconds:.2f} s + compute",
        file=sys.stderr,
        flush=True,
    )
    try:
        for block in blocks:
            print_words(streamer.feed(block))
    except KeyboardInterrupt:  # the way to end a microphone stream
        pass
    print_words(streamer.finish())
    if args.save_predictions:
        path = Path(args.save_predictions)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name}\t{streamer.text}\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        return run(args)
    except (
        AudioLoadError,
        CheckpointError,
        config.ConfigError,
        MicrophoneUnavailableError,
        ValueError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
