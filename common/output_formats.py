"""Transcripts with word times as text, JSON, subtitles (SRT, WebVTT) and NIST CTM.

A transcript is anything with ``text`` and ``words`` (each with ``word``, ``start`` and ``end`` in
seconds and ``confidence`` in [0, 1]), such as :class:`jasper.decoding.Hypothesis`; a result is a
``(name, transcript)`` pair, ``name`` being the audio file as the run names it.
:func:`write_outputs` writes a run's results, one file per format for the whole run and one
subtitle file per audio file:

- ``<prefix>.txt``: ``<name>\\t<text>`` per line (as ``inference.py --save_predictions`` writes).
- ``<prefix>.json``: a list with one object per audio file, valid against :data:`JSON_SCHEMA`.
- ``<prefix>.ctm``: ``<utterance> 1 <start> <duration> <word> <confidence>`` per word, as NIST
  sclite reads it (``sclite -h x.ctm ctm -r ref.stm stm``); ``<utterance>`` is the name's file
  name without extension (LibriSpeech's utterance ids), channel ``1``, times in seconds.
- ``<prefix>.srt/<name>.srt`` and ``<prefix>.vtt/<name>.vtt``: subtitles, ``<name>`` with its
  extension replaced; absolute names and names reaching upwards keep their file name only.

Subtitle cues (:func:`subtitle_cues`) last at most ``MAX_CUE_SECONDS`` and hold at most
``MAX_CUE_CHARS`` characters on at most two lines of ``MAX_LINE_CHARS`` (the usual broadcast
limits), the lines as even as possible. They break at word boundaries: at every pause of
``PAUSE_SECONDS`` or more, and where a cue must break anyway, at the longest pause in the second
half of what fits. A cue runs from its first word's start to its last word's end, so cue times
never overlap and never go backwards.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Protocol

FORMATS = ("txt", "json", "srt", "vtt", "ctm")
MAX_CUE_SECONDS = 7.0
MAX_CUE_CHARS = 84
MAX_LINE_CHARS = 42
PAUSE_SECONDS = 1.0  # a silence this long always ends a cue

JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Transcripts of a run, one object per audio file",
    "type": "array",
    "items": {
        "type": "object",
        "required": ["file", "text", "words"],
        "additionalProperties": False,
        "properties": {
            "file": {"type": "string", "description": "the audio file as the run names it"},
            "text": {"type": "string", "description": "the transcript"},
            "words": {
                "type": "array",
                "description": "the words of the transcript in order",
                "items": {
                    "type": "object",
                    "required": ["word", "start", "end", "confidence"],
                    "additionalProperties": False,
                    "properties": {
                        "word": {"type": "string", "pattern": "^\\S+$"},
                        "start": {"type": "number", "minimum": 0, "description": "seconds"},
                        "end": {"type": "number", "minimum": 0, "description": "seconds"},
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
            },
        },
    },
}


class TimedWord(Protocol):
    word: str
    start: float
    end: float
    confidence: float


class Transcript(Protocol):
    text: str
    words: Sequence[TimedWord]


Result = tuple[str, Transcript]


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float  # seconds
    text: str  # one or two lines


def json_object(name: str, transcript: Transcript) -> dict:
    """One audio file's entry of the JSON output."""
    words = [
        {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
         "confidence": round(w.confidence, 4)}
        for w in transcript.words
    ]  # fmt: skip
    return {"file": name, "text": transcript.text, "words": words}


def ctm_lines(name: str, words: Sequence[TimedWord]) -> list[str]:
    """The CTM lines of one utterance (id: the file name of ``name`` without extension)."""
    utterance = PurePath(name).stem.replace(" ", "_")
    return [
        f"{utterance} 1 {w.start:.3f} {max(w.end - w.start, 0.0):.3f} {w.word} {w.confidence:.4f}"
        for w in words
    ]


def _layout(texts: Sequence[str], max_chars: int, max_line_chars: int) -> str | None:
    """``texts`` (words) as one line, or two lines as even as possible, within the limits; None if
    they do not fit."""
    one = " ".join(texts)
    if len(one) <= max_line_chars:
        return one
    splits = [(" ".join(texts[:k]), " ".join(texts[k:])) for k in range(1, len(texts))]
    fitting = [(a, b) for a, b in splits if max(len(a), len(b)) <= max_line_chars]
    if len(one) > max_chars or not fitting:
        return None
    a, b = min(fitting, key=lambda lines: abs(len(lines[0]) - len(lines[1])))
    return f"{a}\n{b}"


def subtitle_cues(
    words: Sequence[TimedWord],
    max_seconds: float = MAX_CUE_SECONDS,
    max_chars: int = MAX_CUE_CHARS,
    max_line_chars: int = MAX_LINE_CHARS,
    pause_seconds: float = PAUSE_SECONDS,
) -> list[Cue]:
    """Group words into cues (module docstring); a word too long for any cue gets its own."""
    texts = [w.word for w in words]
    cues = []
    i = 0
    while i < len(words):
        # The longest run words[i:j] that fits, stopping early at a long pause.
        j = i + 1
        while j < len(words):
            if (
                words[j].start - words[j - 1].end >= pause_seconds
                or words[j].end - words[i].start > max_seconds
                or _layout(texts[i : j + 1], max_chars, max_line_chars) is None
            ):
                break
            j += 1
        if j < len(words) and words[j].start - words[j - 1].end < pause_seconds:
            # Forced break: at the longest pause (to 10 ms) in the second half, the later on ties.
            first = i + 1 + (j - i - 1) // 2
            j = max(
                range(first, j + 1), key=lambda k: (round(words[k].start - words[k - 1].end, 2), k)
            )
        text = _layout(texts[i:j], max_chars, max_line_chars) or " ".join(texts[i:j])
        cues.append(Cue(words[i].start, max(words[j - 1].end, words[i].start), text))
        i = j
    return cues


def _timestamp(seconds: float, decimal: str) -> str:
    """``HH:MM:SS<decimal>mmm`` (SubRip: ``,``, WebVTT: ``.``)."""
    ms = round(seconds * 1000)
    hours, minutes, secs = ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms % 1000:03d}"


def srt(words: Sequence[TimedWord]) -> str:
    """SubRip subtitles of one audio file."""
    return "".join(
        f"{n}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{c.text}\n\n"
        for n, c in enumerate(subtitle_cues(words), 1)
    )


def vtt(words: Sequence[TimedWord]) -> str:
    """WebVTT subtitles of one audio file."""
    cues = "".join(
        f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{c.text}\n\n"
        for c in subtitle_cues(words)
    )
    return "WEBVTT\n\n" + cues


def subtitle_path(folder: Path, name: str, suffix: str) -> Path:
    """Where the subtitles of audio file ``name`` go under ``folder`` (module docstring)."""
    rel = PurePath(name)
    if rel.is_absolute() or ".." in rel.parts:
        rel = PurePath(rel.name)
    return (folder / rel).with_suffix(suffix)


def write_outputs(
    results: Sequence[Result], prefix: str | Path, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Write ``results`` in ``formats`` next to ``prefix`` (module docstring); returns the paths of
    the files written (for subtitles: their folders)."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown output formats {sorted(unknown)}: use {', '.join(FORMATS)}")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = prefix.with_name(f"{prefix.name}.{fmt}")
        if fmt == "txt":
            path.write_text("".join(f"{name}\t{t.text}\n" for name, t in results), "utf-8")
        elif fmt == "json":
            objects = [json_object(name, t) for name, t in results]
            path.write_text(json.dumps(objects, indent=1, ensure_ascii=False) + "\n", "utf-8")
        elif fmt == "ctm":
            lines = [line for name, t in results for line in ctm_lines(name, t.words)]
            path.write_text("".join(f"{line}\n" for line in lines), "utf-8")
        else:
            render = srt if fmt == "srt" else vtt
            for name, t in results:
                target = subtitle_path(path, name, f".{fmt}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(render(t.words), "utf-8")
        written.append(path)
    return written
