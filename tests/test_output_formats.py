"""Transcript writers (common/output_formats.py), read back with standard parsers: jsonschema for
the JSON, ``srt`` and ``webvtt-py`` for the subtitles, sclite's CTM field layout."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import jsonschema
import pytest
import srt as srt_parser
import webvtt

from common.output_formats import (
    JSON_SCHEMA,
    MAX_CUE_CHARS,
    MAX_CUE_SECONDS,
    MAX_LINE_CHARS,
    ctm_lines,
    json_object,
    srt,
    subtitle_cues,
    subtitle_path,
    vtt,
    write_outputs,
)
from tests.conftest import REPO


@dataclass(frozen=True)
class W:
    word: str
    start: float
    end: float
    confidence: float = 0.9


@dataclass(frozen=True)
class T:
    text: str
    words: tuple[W, ...]


def speech(n: int, seed: int = 0) -> list[W]:
    """``n`` words of 2-13 characters, 0.1-0.8 s each, separated by pauses of 0.02-1.5 s."""
    rng = random.Random(seed)
    words, t = [], rng.uniform(0, 1)
    for i in range(n):
        length = rng.uniform(0.1, 0.8)
        words.append(W(f"w{i}" + "x" * rng.randint(0, 10), round(t, 3), round(t + length, 3)))
        t += length + (rng.uniform(0.9, 1.5) if rng.random() < 0.05 else rng.uniform(0.02, 0.3))
    return words


def check_cues(cues: list[tuple[float, float, str]], words: list[W]) -> None:
    """Cue limits, monotonic times, and every word once in order."""
    previous_end = 0.0
    for start, end, text in cues:
        assert start >= previous_end and end >= start
        assert end - start <= MAX_CUE_SECONDS + 1e-9
        assert len(text.replace("\n", " ")) <= MAX_CUE_CHARS
        assert all(len(line) <= MAX_LINE_CHARS for line in text.split("\n"))
        previous_end = end
    assert " ".join(text.replace("\n", " ") for _, _, text in cues) == " ".join(
        w.word for w in words
    )
    starts = {round(w.start, 3) for w in words}
    ends = {round(w.end, 3) for w in words}
    assert all(round(s, 3) in starts and round(e, 3) in ends for s, e, _ in cues)


@pytest.mark.parametrize("seed", range(5))
def test_srt_parses_and_keeps_the_cue_limits(seed):
    words = speech(300, seed)
    parsed = list(srt_parser.parse(srt(words)))
    assert [c.index for c in parsed] == list(range(1, len(parsed) + 1))
    cues = [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in parsed]
    check_cues(cues, words)


@pytest.mark.parametrize("seed", range(5))
def test_vtt_parses_and_keeps_the_cue_limits(seed):
    words = speech(300, seed)
    document = webvtt.from_string(vtt(words))
    cues = [(_seconds(c.start), _seconds(c.end), c.text) for c in document.captions]
    check_cues(cues, words)


def _seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def test_a_long_pause_always_ends_a_cue():
    words = [W("one", 0.0, 0.3), W("two", 0.4, 0.7), W("three", 1.8, 2.1), W("four", 2.2, 2.5)]
    assert [c.text for c in subtitle_cues(words)] == ["one two", "three four"]


def test_a_forced_break_prefers_the_longest_pause_in_the_second_half():
    # 12 words of 0.5 s every 0.6 s: more than 7 s in all, so the first cue must break; the 0.4 s
    # pause after word 8 wins over the 0.1 s ones (and over the 0.5 s pause in the first half).
    words, t = [], 0.0
    for i in range(12):
        words.append(W(f"w{i}", round(t, 3), round(t + 0.5, 3)))
        t += 0.6 + (0.3 if i == 8 else 0.4 if i == 2 else 0.0)
    cues = subtitle_cues(words)
    assert cues[0].text.split() == [f"w{i}" for i in range(9)]
    assert cues[0].end - cues[0].start <= MAX_CUE_SECONDS


def test_a_word_too_long_for_any_cue_gets_its_own():
    words = [W("a", 0.0, 0.1), W("x" * 100, 0.2, 9.0), W("b", 9.1, 9.2)]
    assert [c.text for c in subtitle_cues(words)] == ["a", "x" * 100, "b"]


def test_empty_transcripts_give_valid_empty_subtitles():
    assert list(srt_parser.parse(srt([]))) == []
    assert webvtt.from_string(vtt([])).captions == []


def test_json_is_valid_against_the_schema(tmp_path):
    results = [
        ("dev-clean/1/2/1-2-0000.flac", T("go up", (W("go", 0.1, 0.3, 0.95), W("up", 0.5, 0.62)))),
        ("/abs/silence.wav", T("", ())),
    ]
    (path,) = write_outputs(results, tmp_path / "run", ["json"])
    data = json.loads(path.read_text())
    jsonschema.validate(data, JSON_SCHEMA)
    assert data[0] == {
        "file": "dev-clean/1/2/1-2-0000.flac",
        "text": "go up",
        "words": [
            {"word": "go", "start": 0.1, "end": 0.3, "confidence": 0.95},
            {"word": "up", "start": 0.5, "end": 0.62, "confidence": 0.9},
        ],
    }
    assert data[1]["words"] == []
    bad = json_object("x.wav", T("a b", (W("a b", 0.0, 0.1),)))  # a word with a space
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([bad], JSON_SCHEMA)


def test_ctm_has_sclite_fields_sorted_by_time():
    lines = ctm_lines("dev-clean/84/121123/84-121123-0001.flac", speech(20))
    previous = -1.0
    for line in lines:
        utterance, channel, start, duration, word, confidence = line.split()
        assert (utterance, channel) == ("84-121123-0001", "1")
        assert float(start) >= previous and float(duration) > 0 and word.startswith("w")
        assert 0 <= float(confidence) <= 1
        previous = float(start)
    first = speech(20)[0]
    assert lines[0].split()[2:4] == [f"{first.start:.3f}", f"{first.end - first.start:.3f}"]


def test_write_outputs_writes_every_format(tmp_path):
    results = [
        ("dev-clean/1/2/1-2-0000.flac", T("go up", (W("go", 0.1, 0.3), W("up", 0.5, 0.62)))),
        ("/elsewhere/talk.wav", T("yes", (W("yes", 1.0, 1.3),))),
    ]
    paths = write_outputs(results, tmp_path / "out" / "dev", ["txt", "json", "srt", "vtt", "ctm"])
    assert [p.name for p in paths] == ["dev.txt", "dev.json", "dev.srt", "dev.vtt", "dev.ctm"]
    out = tmp_path / "out"
    assert (
        out / "dev.txt"
    ).read_text() == "dev-clean/1/2/1-2-0000.flac\tgo up\n/elsewhere/talk.wav\tyes\n"
    assert (out / "dev.ctm").read_text().splitlines()[2] == "talk 1 1.000 0.300 yes 0.9000"
    assert (out / "dev.srt" / "dev-clean/1/2/1-2-0000.srt").read_text() == (
        "1\n00:00:00,100 --> 00:00:00,620\ngo up\n\n"
    )
    assert (out / "dev.vtt" / "talk.vtt").read_text() == (
        "WEBVTT\n\n00:00:01.000 --> 00:00:01.300\nyes\n\n"
    )
    with pytest.raises(ValueError, match="unknown output formats"):
        write_outputs(results, tmp_path / "x", ["docx"])


def test_subtitle_paths_stay_inside_their_folder(tmp_path):
    assert subtitle_path(tmp_path, "a/b.flac", ".srt") == tmp_path / "a" / "b.srt"
    assert subtitle_path(tmp_path, "/abs/c.wav", ".vtt") == tmp_path / "c.vtt"
    assert subtitle_path(tmp_path, "../up/d.wav", ".srt") == tmp_path / "d.srt"


def test_the_documented_schema_is_the_one_in_the_code():
    doc = (REPO / "docs" / "decoding.md").read_text()
    block = doc.split("equals it:\n\n```json\n", 1)[1].split("```", 1)[0]

    def strip(node):
        if isinstance(node, dict):
            return {
                k: strip(v) for k, v in node.items() if k not in ("$schema", "title", "description")
            }
        return node

    assert json.loads(block) == strip(JSON_SCHEMA)
