#!/usr/bin/env python3
"""Offline synthetic speech corpus in LibriSpeech layout, for the quick start.

A newcomer with no LibriSpeech and no GPU can run the whole recipe on it: the corpus is spoken by
espeak-ng (through the ``espeakng-loader`` wheel, which bundles the library and its voice data:
no download, no apt package) and written exactly as LibriSpeech is laid out::

    <out>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt:04d>.flac   16 kHz mono 16-bit
    <out>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt        "<utt_id> <TEXT>"
    <out>/SPEAKERS.TXT                                                     id -> espeak voice

with the split names ``train-clean-100``, ``dev-clean`` and ``test-clean``, so that the launchers
run on it unchanged (``DATA_DIR=<out>``). Transcripts are upper case.

- Sentences of 4-12 words. By default (``--sentences grammar``) they follow the small English
  grammar of ``utils/demo_grammar.py`` over the 300 most frequent words of
  ``utils/demo_words.txt`` ("they said that people read a lot of music next week"): sentences
  with structure, which a word n-gram LM learns from the training transcripts. With
  ``--sentences random`` their words are drawn uniformly from the N most frequent words
  (``--vocab``, default 300). Every sentence is unique, and no dev or test sentence occurs in
  train.
- One speaker folder per espeak voice (accent x variant, see ``TRAIN_VOICES``); every utterance
  has its own rate (U[130, 200] words per minute) and pitch (U[30, 70]). ``train-clean-100`` and
  ``dev-clean`` use the training voices; ``test-clean`` holds ``--test`` utterances of each
  held-out voice (``--test-voices``, default ``TEST_VOICES``: an unseen variant, an unseen accent
  with an unseen variant, and an unseen Klatt variant), each its own speaker.
- Deterministic: the same arguments give byte-identical transcripts and identical audio, whatever
  ``--jobs`` is. espeak-ng keeps synthesis state between utterances in static variables that no
  API resets (pitch flutter phase, gain control, noise filters), so each chapter is synthesised
  in order by a fresh worker process (``maxtasksperchild=1``) with seeded random numbers.
- Idempotent: the marker ``<out>/.demo_corpus.json`` is written last; a run with the same
  arguments finds it and returns at once. Other arguments, or no marker (an interrupted run),
  regenerate: the splits this tool created (tagged by a ``.demo_corpus_split`` file) are deleted
  first, with what preprocessing derived from them (``<split>-wav/``,
  ``librispeech-<split>-wav.json``). A split folder without the tag (a real LibriSpeech split,
  say) is never deleted: the run stops with an error.

Usage::

    python utils/make_demo_corpus.py --out datasets/demo [--seed 0] [--train 6000] [--dev 200] \\
        [--test 200] [--vocab 300] [--jobs J]

or, from Python, ``make_demo_corpus(out, seed=0, train=6000, ...)``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from utils import demo_grammar

SAMPLE_RATE = 16000
TRAIN_SPLIT, DEV_SPLIT, TEST_SPLIT = "train-clean-100", "dev-clean", "test-clean"
SPLITS = (TRAIN_SPLIT, DEV_SPLIT, TEST_SPLIT)

# Voices are "<accent><variant>". en-gb and en-gb+f3 fail in libespeak-ng 1.52 (use "en").
ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan")
_MALE, _FEMALE = ("+m1", "+m2", "+m3", "+m5", "+m6", "+m7"), ("+f1", "+f2", "+f3", "+f5")
_KLATT = ("+klatt", "+klatt2", "+klatt3", "+klatt5", "+klatt6")  # Klatt formant synthesis
VARIANTS = ("", *_MALE, *_FEMALE, *_KLATT, "+croak")
TRAIN_VOICES = tuple(accent + variant for accent in ACCENTS for variant in VARIANTS)
# Held-out voices of three kinds, none used in training: a variant (f4), an accent with a variant
# (the West Midlands accent, m4), and a Klatt-synthesised variant (klatt4; training has the other
# Klatt variants).
TEST_VOICES = ("en-us+f4", "en-gb-x-gbcwmd+m4", "en-us+klatt4")
# Held-out accents and variants extend the grid that numbers the speakers (see speaker_id).
_ID_ACCENTS = (*ACCENTS, "en-gb-x-gbcwmd")
_ID_VARIANTS = (*VARIANTS, "+f4", "+m4", "+klatt4")

RATE_WPM = (130, 200)  # inclusive
PITCH = (30, 70)  # inclusive, espeak's 0-99 scale
WORDS_PER_SENTENCE = (4, 12)  # inclusive
UTTS_PER_CHAPTER = 100
WORDS_FILE = Path(__file__).resolve().with_name("demo_words.txt")
MARKER = ".demo_corpus.json"
SPLIT_TAG = ".demo_corpus_split"
FORMAT_VERSION = 1
_SPEAKERS_HEADER = ";ID  |SUBSET          |VOICE (espeak-ng)\n"

SENTENCES = ("grammar", "random")
DEFAULTS = dict(
    seed=0, train=6000, dev=200, test=200, vocab=300, test_voices=TEST_VOICES, sentences="grammar"
)


# --------------------------------------------------------------------------------------------------
# Vocabulary, speakers, plan


def load_words(n: int | None = None, path: str | os.PathLike = WORDS_FILE) -> list[str]:
    """The ``n`` most frequent words of the embedded list (all of them for ``None``)."""
    words = [
        line.strip()
        for line in Path(path).read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    if n is not None:
        if not 1 <= n <= len(words):
            raise ValueError(
                f"vocabulary size must be 1..{len(words)} (the words in {path}), got {n}"
            )
        words = words[:n]
    return words


def speaker_id(voice: str) -> int:
    """Numeric LibriSpeech-style speaker id of an espeak voice: 100*(accent+1) + variant on the
    grid of known accents and variants (``en`` -> 100, ``en-us+f4`` -> 213), else 9000-9999."""
    for ai, accent in sorted(enumerate(_ID_ACCENTS), key=lambda t: -len(t[1])):
        if voice.startswith(accent) and voice[len(accent) :] in _ID_VARIANTS:
            return 100 * (ai + 1) + _ID_VARIANTS.index(voice[len(accent) :])
    return 9000 + zlib.crc32(voice.encode()) % 1000


def _sentences(rng, n, vocab, taken, split, kind="grammar"):
    """``n`` new sentences (space-separated words), none in ``taken``; adds them to ``taken``.
    ``kind``: "grammar" (``demo_grammar.sentence``, 4-12 words) or "random" (4-12 words of
    ``vocab``)."""
    lo, hi = WORDS_PER_SENTENCE
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct {split} sentences from {len(vocab)} words")
        if kind == "grammar":
            sentence = demo_grammar.sentence(rng)
            if not lo <= sentence.count(" ") + 1 <= hi:
                continue
        else:
            k = int(rng.integers(lo, hi + 1))
            sentence = " ".join(vocab[i] for i in rng.integers(0, len(vocab), k))
        if sentence not in taken:
            taken.add(sentence)
            out.append(sentence)
    return out


def plan_corpus(
    seed, train, dev, test, vocab, test_voices=TEST_VOICES, sentences=DEFAULTS["sentences"]
):
    """Everything random about the corpus, drawn in this (main) process from one seeded generator.

    ``test`` utterances per test voice. Returns a list of chapters
    ``(split, speaker, chapter, voice, [(utt_id, text, rate, pitch)])``; the utterance ids are
    ``<speaker>-<chapter>-<index:04d>``. Text is lower case, as spoken.
    """
    if isinstance(test_voices, str):
        test_voices = (test_voices,)
    for voice in test_voices:
        if voice in TRAIN_VOICES:
            raise ValueError(f"test voice {voice!r} is one of the training voices")
    if len(set(map(speaker_id, test_voices))) != len(test_voices):
        raise ValueError(f"test voices {list(test_voices)}: a voice is given twice")
    if sentences not in SENTENCES:
        raise ValueError(f"sentences must be one of {SENTENCES}, got {sentences!r}")
    words = load_words(vocab)
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    chapters = []
    for split_ix, (split, n) in enumerate(
        ((TRAIN_SPLIT, train), (DEV_SPLIT, dev), (TEST_SPLIT, test * len(test_voices)))
    ):
        if n < 0:
            raise ValueError(f"{split}: negative size {n}")
        texts = _sentences(rng, n, words, taken, split, sentences)
        if split == TEST_SPLIT:  # test utterances of each voice, in turn
            voices = np.arange(n) % len(test_voices)
            voice_names = list(test_voices)
        else:  # balanced over the training voices, in random order
            voices = rng.permutation(n) % len(TRAIN_VOICES)
            voice_names = list(TRAIN_VOICES)
        rates = rng.integers(RATE_WPM[0], RATE_WPM[1] + 1, n)
        pitches = rng.integers(PITCH[0], PITCH[1] + 1, n)
        for v, name in enumerate(voice_names):
            idx = np.flatnonzero(voices == v)
            spk = speaker_id(name)
            for c in range(0, len(idx), UTTS_PER_CHAPTER):
                chapter = 1000 * (split_ix + 1) + c // UTTS_PER_CHAPTER
                utts = [
                    (f"{spk}-{chapter}-{j:04d}", texts[i], int(rates[i]), int(pitches[i]))
                    for j, i in enumerate(idx[c : c + UTTS_PER_CHAPTER])
                ]
                chapters.append((split, spk, chapter, name, utts))
    return chapters


# --------------------------------------------------------------------------------------------------
# espeak-ng through ctypes (one engine per process)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH = 1, 3
_BUFFER_MS = 60_000
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Espeak:
    """libespeak-ng in synchronous mode; ``synth`` returns int16 samples at ``self.sample_rate``."""

    def __init__(self):
        try:
            import espeakng_loader

            lib_path, data_path = (
                espeakng_loader.get_library_path(),
                espeakng_loader.get_data_path(),
            )
        except ImportError:  # fall back to a system libespeak-ng (Debian: libespeak-ng1)
            lib_path, data_path = ctypes.util.find_library("espeak-ng"), None
            if lib_path is None:
                raise RuntimeError(
                    "espeak-ng not found: pip install espeakng-loader "
                    "(it bundles the library and the voices)"
                ) from None
        lib = ctypes.CDLL(lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        # Synchronous mode loses the rest of the last command (the word's decay, the final pause)
        # when that command fills the output buffer: with a buffer longer than any utterance the
        # buffer never fills, and each clause arrives whole in one callback.
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            _BUFFER_MS,
            data_path.encode() if data_path else None,
            _INITIALIZE_DONT_EXIT,
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate}) with {lib_path}")
        self._buffer_samples = _BUFFER_MS * self.sample_rate // 1000
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # keep a reference: ctypes does not
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        self._libc = ctypes.CDLL(None)
        self._voice = None

    def _collect(self, wav, n, events):
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def seed(self, seed: int):
        """Seed espeak's own generator and libc's rand() (breath noise, Klatt voices)."""
        self._lib.espeak_ng_SetRandSeed(seed)
        self._libc.srand(ctypes.c_uint(seed))

    def synth(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        if voice != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise RuntimeError(f"espeak-ng has no voice {voice!r}")
            self._voice = voice
        self._lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        self._chunks.clear()
        data = text.encode() + b"\0"
        err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) on {text!r}")
        self._lib.espeak_Synchronize()
        if any(len(c) >= self._buffer_samples for c in self._chunks):
            raise RuntimeError(f"{text!r} is too long for the espeak buffer ({_BUFFER_MS} ms)")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


_engine: _Espeak | None = None
_GAIN = 0.89


def _get_engine() -> _Espeak:
    global _engine
    if _engine is None:
        _engine = _Espeak()
    return _engine


def synthesize(text: str, voice: str, rate: int = 165, pitch: int = 50) -> np.ndarray:
    """Speak ``text``: int16 samples at 16 kHz. Note: espeak-ng carries state from one call to the
    next within a process, so the exact samples depend on what this process synthesised before."""
    engine = _get_engine()
    # espeak's gain control lets peaks reach full scale: -1 dB keeps the resampler's overshoot
    # from clipping
    wav = engine.synth(text, voice, rate, pitch).astype(np.float32) * np.float32(_GAIN / 32768.0)
    wav = soxr.resample(wav, engine.sample_rate, SAMPLE_RATE, quality="HQ")
    return np.clip(np.round(wav * 32768.0), -32768, 32767).astype(np.int16)


def _synth_chapter(task):
    """Worker: synthesise one chapter in order, in a fresh process.

    Returns (split, utterances, samples)."""
    split, chapter_dir, spk, chapter, voice, utts, seed = task
    chapter_dir = Path(chapter_dir)
    chapter_dir.mkdir(parents=True, exist_ok=True)
    _get_engine().seed(seed)
    samples = 0
    for utt_id, text, rate, pitch in utts:
        audio = synthesize(text, voice, rate, pitch)
        if audio.size == 0:
            raise RuntimeError(f"{utt_id}: espeak-ng produced no audio for {text!r} ({voice})")
        buf = io.BytesIO()  # one write() instead of libsndfile's many small ones
        sf.write(buf, audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
        (chapter_dir / f"{utt_id}.flac").write_bytes(buf.getvalue())
        samples += audio.size
    lines = "".join(f"{utt_id} {text.upper()}\n" for utt_id, text, _, _ in utts)
    (chapter_dir / f"{spk}-{chapter}.trans.txt").write_text(lines, encoding="utf-8")
    return split, len(utts), samples


# --------------------------------------------------------------------------------------------------
# Corpus


def _arguments(seed, train, dev, test, vocab, test_voices, sentences):
    words = "\n".join(load_words(vocab))
    if sentences == "grammar":  # the grammar is part of what the corpus is made of
        words += "\n" + json.dumps(demo_grammar.GRAMMAR, sort_keys=True)
    return {
        "format": FORMAT_VERSION,
        "seed": int(seed),
        "train": int(train),
        "dev": int(dev),
        "test": int(test),
        "vocab": int(vocab),
        "sentences": sentences,
        "test_voices": list(test_voices),
        "words_sha256": hashlib.sha256(words.encode()).hexdigest(),
    }


def read_speakers(path: str | os.PathLike) -> dict[str, str]:
    """``{speaker id: name}`` of a SPEAKERS.TXT (this corpus's, or LibriSpeech's): lines
    ``id | ... | name``, those starting with ';' comments."""
    rows = [line.split("|") for line in Path(path).read_text().splitlines()]
    return {r[0].strip(): r[-1].strip() for r in rows if len(r) > 1 and not r[0].startswith(";")}


def speaker_of(audio: str | os.PathLike) -> str:
    """The speaker id of a LibriSpeech-named file, ``<speaker>-<chapter>-<utt>``."""
    return Path(audio).name.split("-")[0]


def read_marker(out) -> dict | None:
    try:
        return json.loads((Path(out) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _clean(out: Path):
    """Delete the marker, the splits this tool made, and what preprocessing derived from them.

    Checks everything before deleting anything: a split folder without our tag, or a SPEAKERS.TXT
    that is not ours (a LibriSpeech root), stops the run untouched."""
    foreign = [
        out / split
        for split in SPLITS
        if (out / split).exists()
        and not (out / split / SPLIT_TAG).exists()
        and any((out / split).iterdir())
    ]
    speakers = out / "SPEAKERS.TXT"
    if speakers.exists() and not speakers.read_text(errors="replace").startswith(_SPEAKERS_HEADER):
        foreign.append(speakers)
    if foreign:
        raise RuntimeError(
            f"{', '.join(map(str, foreign))} not made by make_demo_corpus.py (no {SPLIT_TAG}): "
            "refusing to delete; choose another --out"
        )
    (out / MARKER).unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
        shutil.rmtree(out / f"{split}-wav", ignore_errors=True)
        (out / f"librispeech-{split}-wav.json").unlink(missing_ok=True)
    speakers.unlink(missing_ok=True)


def _summary_line(out, marker, seconds=None, skipped=False):
    parts = [f"{s} {v['utterances']} utts {v['hours']:.2f} h" for s, v in marker["splits"].items()]
    line = f"demo corpus {out}: " + ", ".join(parts)
    if skipped:
        return line + " (already complete for these arguments: skipped)"
    n = sum(v["utterances"] for v in marker["splits"].values())
    return line + f"; {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} utts/s)"


def make_demo_corpus(
    out,
    seed=DEFAULTS["seed"],
    train=DEFAULTS["train"],
    dev=DEFAULTS["dev"],
    test=DEFAULTS["test"],
    vocab=DEFAULTS["vocab"],
    jobs=None,
    test_voices=DEFAULTS["test_voices"],
    sentences=DEFAULTS["sentences"],
    progress=True,
    verbose=True,
) -> dict:
    """Write (or find) the demo corpus under ``out``; returns the marker's content plus ``skipped``
    (True when a finished corpus with the same arguments was already there) and ``seconds``."""
    t0 = time.perf_counter()
    out = Path(out)
    if isinstance(test_voices, str):
        test_voices = (test_voices,)
    args = _arguments(seed, train, dev, test, vocab, test_voices, sentences)
    marker = read_marker(out)
    if (
        marker is not None
        and marker.get("arguments") == args
        and all((out / s).is_dir() for s in SPLITS)
    ):
        if verbose:
            print(_summary_line(out, marker, skipped=True), flush=True)
        return {**marker, "skipped": True, "seconds": time.perf_counter() - t0}

    chapters = plan_corpus(seed, train, dev, test, vocab, test_voices, sentences)
    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    for split in SPLITS:
        (out / split).mkdir()
        (out / split / SPLIT_TAG).write_text(
            "made by utils/make_demo_corpus.py; deleted on regeneration\n"
        )

    tasks = [
        (
            split,
            str(out / split / str(spk) / str(chapter)),
            spk,
            chapter,
            voice,
            utts,
            zlib.crc32(f"{seed}/{split}/{spk}/{chapter}".encode()),
        )
        for split, spk, chapter, voice, utts in chapters
    ]
    tasks.sort(key=lambda t: -len(t[5]))  # big chapters first: better load balance
    total = sum(len(t[5]) for t in tasks)
    counts = {s: [0, 0] for s in SPLITS}
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks) or 1))
    # A fresh process per chapter (maxtasksperchild=1): only a new process resets espeak-ng's
    # synthesis state. The workers are forked from a forkserver, a clean single-threaded process:
    # a plain fork of this one can deadlock when another thread holds a lock at that moment (the
    # pool's own worker-handler thread forks the replacements), and would inherit espeak's state.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    from tqdm import tqdm

    with (
        tqdm(
            total=total, unit="utt", desc="demo corpus", disable=not progress, file=sys.stderr
        ) as bar,
        mp.get_context(method).Pool(jobs, maxtasksperchild=1) as pool,
    ):
        for split, n, samples in pool.imap_unordered(_synth_chapter, tasks, chunksize=1):
            counts[split][0] += n
            counts[split][1] += samples
            bar.update(n)

    speakers = sorted({(spk, voice, split) for split, spk, _, voice, _ in chapters})
    lines = [_SPEAKERS_HEADER]
    lines += [f"{spk:<5}|{split:<16}|{voice}\n" for spk, voice, split in speakers]
    (out / "SPEAKERS.TXT").write_text("".join(lines))

    marker = {
        "arguments": args,
        "splits": {
            s: {
                "utterances": n,
                "hours": round(samples / SAMPLE_RATE / 3600, 4),
                "speakers": sorted({spk for split, spk, _, _, _ in chapters if split == s}),
            }
            for s, (n, samples) in counts.items()
        },
        "voices": {"train": list(TRAIN_VOICES), "test": list(test_voices)},
        "sample_rate": SAMPLE_RATE,
    }
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, out / MARKER)  # last: its presence means the corpus is complete
    seconds = time.perf_counter() - t0
    if verbose:
        print(_summary_line(out, marker, seconds), flush=True)
    return {**marker, "skipped": False, "seconds": seconds}


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Write an offline synthetic speech corpus (espeak-ng voices) in LibriSpeech "
        "layout for the quick start: train-clean-100, dev-clean (training voices) and test-clean "
        "(voices never used in training). Same arguments: same corpus; a finished corpus is "
        "found and skipped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (DATA_DIR of the launchers)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed")
    p.add_argument(
        "--train", type=int, default=DEFAULTS["train"], help="train-clean-100 utterances"
    )
    p.add_argument("--dev", type=int, default=DEFAULTS["dev"], help="dev-clean utterances")
    p.add_argument(
        "--test", type=int, default=DEFAULTS["test"], help="test-clean utterances per test voice"
    )
    p.add_argument(
        "--sentences",
        choices=SENTENCES,
        default=DEFAULTS["sentences"],
        help="grammar: sentences of utils/demo_grammar.py; random: random orders of --vocab words",
    )
    p.add_argument(
        "--vocab",
        type=int,
        default=DEFAULTS["vocab"],
        help=f"--sentences random: the N most frequent words of {WORDS_FILE.name}",
    )
    p.add_argument(
        "--test-voices",
        nargs="+",
        default=list(DEFAULTS["test_voices"]),
        help="espeak-ng voices of test-clean, none used in training",
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    try:
        make_demo_corpus(
            a.out,
            seed=a.seed,
            train=a.train,
            dev=a.dev,
            test=a.test,
            vocab=a.vocab,
            jobs=a.jobs,
            test_voices=tuple(a.test_voices),
            sentences=a.sentences,
            progress=not a.no_progress,
        )
    except (ValueError, RuntimeError) as e:  # bad sizes or voices, a foreign folder, espeak
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
