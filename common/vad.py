"""Voice activity detection: split long recordings at pauses, so that each piece can be
transcribed on its own (``inference.py --vad``).

Speech is found by Silero VAD (https://github.com/snakers4/silero-vad, MIT licence; the
``silero-vad`` pip package ships its model, so nothing is downloaded), run through ONNX Runtime:
a speech probability per 32 ms window, turned into speech regions by the package's
``get_speech_timestamps`` (a region ends after ``min_silence_seconds`` below the threshold).

:func:`split_at_pauses` groups consecutive speech regions into segments of at most
``max_segment_seconds`` and cuts only in the pauses between regions, at their middle; a segment
keeps at most ``margin_seconds`` of the pause on each side of its speech. So a cut never falls
inside a region the VAD calls speech; only speech that runs on without a pause of
``min_silence_seconds`` for longer than ``max_segment_seconds`` is cut inside (Silero splits it at
its longest short silence). Audio farther than ``margin_seconds`` from any speech is not
transcribed: what the VAD misses is lost, the price of skipping silence.

Segments are sample ranges ``[start, stop)`` of the recording at ``sample_rate`` (16 kHz or 8 kHz,
Silero's rates). docs/streaming.md measures what splitting costs against whole-file transcription.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

VAD_RATES = (8000, 16000)  # Hz, the rates Silero VAD runs at


class VadUnavailableError(ImportError):
    """The ``silero-vad`` package (or ONNX Runtime, which it runs on here) is not installed."""


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` of a recording."""

    start: int
    stop: int

    def seconds(self, sample_rate: int) -> tuple[float, float]:
        return self.start / sample_rate, self.stop / sample_rate


@functools.cache
def _model():
    """Silero VAD's ONNX model (bundled with the package), loaded once.

    Importing ``silero_vad`` calls ``torch.set_num_threads(1)`` (silero_vad/model.py), which would
    slow the ASR model down for the rest of the process: the thread count is put back.
    """
    threads = torch.get_num_threads()
    try:
        import onnxruntime  # noqa: F401  (silero-vad's ONNX path needs it; say so up front)
        import silero_vad
    except ImportError as e:
        raise VadUnavailableError(
            f"voice activity detection needs silero-vad and onnxruntime ({e}): "
            "pip install silero-vad onnxruntime"
        ) from e
    finally:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():  # silero_vad/model.py finds its file with a deprecated call
        warnings.simplefilter("ignore", DeprecationWarning)
        return silero_vad.load_silero_vad(onnx=True)


def speech_regions(
    samples: np.ndarray,
    sample_rate: int = 16000,
    *,
    threshold: float = 0.5,
    min_silence_seconds: float = 0.3,
    min_speech_seconds: float = 0.25,
    max_speech_seconds: float = float("inf"),
) -> list[Segment]:
    """The speech in ``samples`` (1-D float, in [-1, 1]), as Silero VAD finds it: regions whose
    speech probability rises above ``threshold``, ending after ``min_silence_seconds`` below it;
    regions shorter than ``min_speech_seconds`` are dropped, longer than ``max_speech_seconds``
    split. No padding is added around them.

    Raises:
        VadUnavailableError: silero-vad or onnxruntime is missing.
        ValueError: ``sample_rate`` is not one Silero VAD runs at.
    """
    if sample_rate not in VAD_RATES:
        raise ValueError(f"sample_rate={sample_rate}: Silero VAD runs at {VAD_RATES} Hz")
    model = _model()
    import silero_vad  # imported by _model(), with the thread count put back

    audio = torch.as_tensor(np.asarray(samples, dtype=np.float32).reshape(-1))
    if audio.numel() == 0:
        return []
    stamps = silero_vad.get_speech_timestamps(
        audio,
        model,
        threshold=threshold,
        sampling_rate=sample_rate,
        min_speech_duration_ms=round(1000 * min_speech_seconds),
        max_speech_duration_s=max_speech_seconds,
        min_silence_duration_ms=round(1000 * min_silence_seconds),
        speech_pad_ms=0,
    )
    return [Segment(int(s["start"]), int(s["end"])) for s in stamps]


def split_at_pauses(
    samples: np.ndarray,
    sample_rate: int = 16000,
    *,
    max_segment_seconds: float = 20.0,
    min_silence_seconds: float = 0.3,
    margin_seconds: float = 0.5,
    threshold: float = 0.5,
) -> list[Segment]:
    """Segments of at most ``max_segment_seconds`` that cut ``samples`` only in pauses of at least
    ``min_silence_seconds`` (see the module docstring); in order, not overlapping.

    Raises:
        VadUnavailableError: silero-vad or onnxruntime is missing.
        ValueError: ``sample_rate`` is not one Silero VAD runs at, or the margins leave no room.
    """
    if max_segment_seconds <= 2 * margin_seconds:
        raise ValueError(
            f"max_segment_seconds={max_segment_seconds} leaves no room for speech between "
            f"margins of {margin_seconds} s"
        )
    margin = round(margin_seconds * sample_rate)
    longest = round(max_segment_seconds * sample_rate)
    regions = speech_regions(
        samples, sample_rate, threshold=threshold, min_silence_seconds=min_silence_seconds,
        max_speech_seconds=max_segment_seconds - 2 * margin_seconds,
    )  # fmt: skip
    groups: list[list[Segment]] = []
    for region in regions:
        if groups and region.stop - groups[-1][0].start + 2 * margin <= longest:
            groups[-1].append(region)
        else:
            groups.append([region])
    n = len(np.asarray(samples).reshape(-1))
    # Cut in the middle of the pause between two groups; margins never cross a cut.
    cuts = [0] + [(a[-1].stop + b[0].start) // 2 for a, b in itertools.pairwise(groups)] + [n]
    return [
        Segment(max(cuts[i], group[0].start - margin), min(cuts[i + 1], group[-1].stop + margin))
        for i, group in enumerate(groups)
    ]


class SamplesTranscriber(Protocol):
    """What :func:`transcribe_with_vad` needs, e.g. a :class:`jasper.transcribe.Transcriber`."""

    sample_rate: int

    def transcribe(self, samples: np.ndarray) -> str: ...


@dataclass(frozen=True)
class VadTranscript:
    """A recording transcribed segment by segment: the joined text and each segment's."""

    text: str
    segments: tuple[Segment, ...]
    texts: tuple[str, ...]


def join_texts(texts: Sequence[str]) -> str:
    """Segment transcripts as one: words separated by single spaces."""
    return " ".join(word for text in texts for word in text.split())


def transcribe_with_vad(
    transcriber: SamplesTranscriber,
    samples: np.ndarray,
    *,
    max_segment_seconds: float = 20.0,
    min_silence_seconds: float = 0.3,
    margin_seconds: float = 0.5,
    threshold: float = 0.5,
) -> VadTranscript:
    """Split ``samples`` (at the transcriber's rate) at pauses (:func:`split_at_pauses`) and
    transcribe each segment on its own (its own normalisation statistics, as an utterance)."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    segments = split_at_pauses(
        samples, transcriber.sample_rate, max_segment_seconds=max_segment_seconds,
        min_silence_seconds=min_silence_seconds, margin_seconds=margin_seconds,
        threshold=threshold,
    )  # fmt: skip
    texts = tuple(transcriber.transcribe(samples[s.start : s.stop]) for s in segments)
    return VadTranscript(join_texts(texts), tuple(segments), texts)


__all__ = [
    "Segment",
    "VadTranscript",
    "VadUnavailableError",
    "join_texts",
    "speech_regions",
    "split_at_pauses",
    "transcribe_with_vad",
]
