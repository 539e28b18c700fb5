"""From log-probabilities to text, word timestamps and word confidences.

Two decoders behind one interface, ``decode(log_probs) -> Hypothesis`` and
``decode_batch([log_probs, ...]) -> [Hypothesis, ...]``; :func:`build_decoder` picks one by name.

- :class:`GreedyDecoder`: the most probable class of each encoder frame, then the CTC collapse
  (merge repeats, drop blanks); its text is exactly :func:`greedy_texts`'.
- :class:`BeamDecoder`: CTC beam search by flashlight-text (an optional dependency:
  ``requirements-lm.txt``). Without an n-gram LM it is a lexicon-free prefix beam search (the
  probabilities of all alignments of a prefix summed). With a word LM (ARPA, gzipped ARPA or KenLM
  binary), every word is scored ``alpha * log10 P_LM(word | history) + beta``, and words are
  restricted to a lexicon: by default the LM's own unigrams (``lexicon=False`` lifts the
  restriction). Hotwords get ``hotword_weight`` added each time they are emitted.

Conventions, relied on throughout:

- ``log_probs`` (T, K): natural-log posteriors of one utterance's valid encoder frames, float tensor
  or array; K = num_classes(labels) = len(labels) + 1, the blank last (:func:`jasper.config.num_classes`). A batch is a
  list of those (as ``inference.py --save_logits`` writes them; :func:`unpad` splits a padded one).
- Words are what lies between word separators, the label ``" "``.
- Time: encoder frame ``t`` covers ``[(t - offset_frames) * frame_seconds, + frame_seconds)``.
  Jasper and QuartzNet emit one frame per 20 ms (10 ms feature hop, stride 2). ``offset_frames``
  removes leading padding: ``inference.py``'s default ``--pad_leading 16`` feature frames are 8
  encoder frames. A word starts at the first frame of its first letter and ends at the end of the
  last frame of its last letter (CTC emits a letter on one or a few frames, often late; blank
  frames around a word do not count), in seconds rounded to the millisecond.
- Confidence of a word: its least sure letter, a letter being as sure as the highest posterior of
  the letter on the frames that emit it. In [0, 1]; one wrong-looking letter makes a word unsure.
"""

from __future__ import annotations

import copy
import functools
import gzip
import math
import multiprocessing
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from common.metrics import ctc_greedy_text
from jasper.config import num_classes
from jasper.model import greedy_decode

try:  # optional: beam search (pip install -r requirements-lm.txt)
    from flashlight.lib.text import decoder as fl
    from flashlight.lib.text import dictionary as fl_dictionary
    from flashlight.lib.text.decoder.kenlm import KenLM
except ImportError:
    fl = fl_dictionary = KenLM = None

FRAME_SECONDS = 0.02  # one encoder frame: 10 ms feature hop x stride 2 (Jasper, QuartzNet)
SEPARATOR = " "  # the label between words
UNK = "<unk>"
KENLM_BINARY_MAGIC = b"mmap lm "  # the first bytes of a KenLM binary file


class BeamSearchUnavailableError(ImportError):
    """flashlight-text, which the beam decoder runs on, is not installed."""


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds
    end: float  # seconds
    confidence: float  # in [0, 1]


@dataclass(frozen=True)
class Hypothesis:
    text: str
    words: tuple[Word, ...] = ()


def greedy_texts(
    log_probs: torch.Tensor, lens: torch.Tensor | None, labels: Sequence[str]
) -> list[str]:
    """Transcripts of a batch: ``log_probs (B, T, K)``, ``lens (B,)`` valid frames (None: all)."""
    ids = greedy_decode(log_probs, lens).cpu()
    lens = [ids.size(1)] * ids.size(0) if lens is None else lens.cpu().tolist()
    return [ctc_greedy_text(ids[i, : int(n)].tolist(), labels) for i, n in enumerate(lens)]


def unpad(log_probs: torch.Tensor, lens: torch.Tensor) -> list[torch.Tensor]:
    """The utterances of a padded batch ``(B, T, K)``: a list of ``(lens[i], K)`` tensors."""
    return [lp[: int(n)] for lp, n in zip(log_probs, lens.tolist(), strict=True)]


def _as_array(log_probs: torch.Tensor | np.ndarray, n_classes: int) -> np.ndarray:
    """One utterance's log-probs as a C-contiguous float32 (T, K) array, checked."""
    if isinstance(log_probs, torch.Tensor):
        log_probs = log_probs.detach().float().cpu().numpy()
    array = np.ascontiguousarray(log_probs, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != n_classes:
        raise ValueError(
            f"log_probs must be (T, {n_classes}) (labels + blank), got {tuple(array.shape)}"
        )
    return array


def words_from_path(
    path: Sequence[int],
    log_probs: np.ndarray,
    labels: Sequence[str],
    frame_seconds: float = FRAME_SECONDS,
    offset_frames: int = 0,
) -> tuple[Word, ...]:
    """The words of a per-frame CTC path (one class id per frame of ``log_probs``), with times and
    confidences as the module docstring defines them."""
    blank = len(labels)
    separator = labels.index(SEPARATOR) if SEPARATOR in labels else None
    words: list[Word] = []
    letters: list[list] = []  # [label id, first frame, last frame, highest posterior]

    def close_word() -> None:
        if letters:
            start = max(letters[0][1] - offset_frames, 0) * frame_seconds
            end = max(letters[-1][2] + 1 - offset_frames, 0) * frame_seconds
            text = "".join(labels[letter[0]] for letter in letters)
            confidence = min(letter[3] for letter in letters)
            words.append(Word(text, round(start, 3), round(end, 3), round(confidence, 4)))
            letters.clear()

    previous = blank
    for t, token in enumerate(path):
        if token == separator:
            close_word()
        elif token != blank:
            posterior = math.exp(float(log_probs[t, token]))
            if token == previous:  # the same emission, one frame longer (CTC repeat rule)
                letters[-1][2] = t
                letters[-1][3] = max(letters[-1][3], posterior)
            else:
                letters.append([token, t, t, posterior])
        previous = token
    close_word()
    return tuple(words)


class GreedyDecoder:
    """Best class per frame, then the CTC collapse: the text of ``decode(x)`` is
    ``greedy_texts(x[None], None, labels)[0]``, spacing included."""

    def __init__(
        self,
        labels: Sequence[str],
        frame_seconds: float = FRAME_SECONDS,
        offset_frames: int = 0,
    ) -> None:
        self.labels = list(labels)
        self.frame_seconds = frame_seconds
        self.offset_frames = offset_frames

    def decode(self, log_probs: torch.Tensor | np.ndarray) -> Hypothesis:
        array = _as_array(log_probs, num_classes(self.labels))
        path = greedy_decode(torch.from_numpy(array)[None])[0].tolist()
        words = words_from_path(path, array, self.labels, self.frame_seconds, self.offset_frames)
        return Hypothesis(ctc_greedy_text(path, self.labels), words)

    def decode_batch(self, batch: Sequence[torch.Tensor | np.ndarray]) -> list[Hypothesis]:
        return [self.decode(log_probs) for log_probs in batch]


# --------------------------------------------------------------------------------------------------
# Beam search (flashlight-text)


def read_arpa_unigrams(path: str | Path) -> list[str]:
    """The words of an ARPA file's ``\\1-grams:`` section (plain or gzipped), in file order."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip() == "\\1-grams:":
                break
        else:
            raise ValueError(f"{path}: no \\1-grams: section: not an ARPA file")
        words = []
        for line in f:
            fields = line.split()
            if fields and fields[0].startswith("\\"):
                return words
            if len(fields) >= 2:
                words.append(fields[1])
    return words


def read_word_list(source: str | Path | Iterable[str]) -> list[str]:
    """Words, once each in first-seen order, from a sequence or a file whose lines start with a
    word (a word list, or a pronunciation lexicon such as ``librispeech-lexicon.txt``)."""
    if isinstance(source, str | Path):
        with open(source, encoding="utf-8") as f:
            source = [line.split()[0] for line in f if line.strip()]
    return list(dict.fromkeys(source))


def is_kenlm_binary(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(KENLM_BINARY_MAGIC)) == KENLM_BINARY_MAGIC


def spell(word: str, labels: Sequence[str]) -> list[int] | None:
    """The label ids of ``word`` (lower-cased where the labels need it; LibriSpeech's LMs are upper
    case), or None if some letter has no label."""
    index = _letter_index(tuple(labels))
    for form in (word, word.lower()):
        if form and all(ch in index for ch in form):
            return [index[ch] for ch in form]
    return None


@functools.cache
def _letter_index(labels: tuple[str, ...]) -> dict[str, int]:
    return {label: i for i, label in enumerate(labels) if label != SEPARATOR}


_LMBase = fl.LM if fl is not None else object


class _BoostedLM(_LMBase):
    """``alpha * inner + bonus[word]`` for a lexicon decoder that runs with LM weight 1: hotwords
    get a bonus that the LM weight does not scale."""

    def __init__(self, inner, alpha: float, bonus: dict[int, float]) -> None:
        super().__init__()
        self.inner, self.alpha, self.bonus = inner, alpha, bonus

    def start(self, start_with_nothing: bool):
        return self.inner.start(start_with_nothing)

    def score(self, state, word: int):
        state, score = self.inner.score(state, word)
        return state, self.alpha * score + self.bonus.get(word, 0.0)

    def finish(self, state):
        state, score = self.inner.finish(state)
        return state, self.alpha * score


class _SpellingLM(_LMBase):
    """Letters in, words scored, for a lexicon-free decoder that runs with LM weight 1.

    Letters score 0; a word closed by a separator (or by the end of the utterance) scores
    ``alpha * log10 P_LM(word | history) + beta + bonus[word]`` (no LM: ``beta + bonus``; words
    outside the LM's vocabulary get its ``<unk>`` probability). Words are keyed by their spelling
    in labels. One state per (words so far,
    partial word), so hypotheses merge exactly when their text agrees, as in prefix beam search.
    """

    def __init__(self, inner, by_spelling, unk, labels, alpha, beta, bonus: dict[str, float]):
        super().__init__()
        self.inner, self.by_spelling, self.unk, self.labels = inner, by_spelling, unk, list(labels)
        self.alpha, self.beta, self.bonus = alpha, beta, bonus
        self.separator = self.labels.index(SEPARATOR)
        self._states: dict[tuple, object] = {}
        self._info: dict[object, tuple] = {}

    def _state(self, words: tuple[str, ...], partial: str, inner):
        state = self._states.get((words, partial))
        if state is None:
            state = self._states[words, partial] = fl.LMState()
            self._info[state] = (words, partial, inner)
        return state

    def _close(self, words: tuple[str, ...], partial: str, inner):
        score = self.beta + self.bonus.get(partial, 0.0)
        if self.inner is not None:
            index = self.by_spelling.get(partial, self.unk)
            inner, lm_score = self.inner.score(inner, index)
            score += self.alpha * lm_score
        return (*words, partial), inner, score

    def start(self, start_with_nothing: bool):
        self._states.clear()
        self._info.clear()
        inner = self.inner.start(start_with_nothing) if self.inner is not None else None
        return self._state((), "", inner)

    def score(self, state, token: int):
        words, partial, inner = self._info[state]
        if token != self.separator:
            return self._state(words, partial + self.labels[token], inner), 0.0
        if not partial:
            return state, 0.0
        words, inner, score = self._close(words, partial, inner)
        return self._state(words, "", inner), score

    def finish(self, state):
        words, partial, inner = self._info[state]
        score = 0.0
        if partial:
            words, inner, score = self._close(words, partial, inner)
        if self.inner is not None:
            score += self.alpha * self.inner.finish(inner)[1]
        return state, score


@dataclass(frozen=True)
class _Vocabulary:
    """What an LM and a lexicon load to, shared by decoders that differ in weights only."""

    lexicon: tuple[str, ...] | None  # allowed words as the LM writes them (None: any spelling)
    dictionary: object  # flashlight Dictionary: word -> index, UNK for unknown words
    by_spelling: dict[str, int]  # word spelled in labels -> its index (LM words, hotwords)
    lm: object  # flashlight KenLM, or ZeroLM without an LM


def _load_vocabulary(
    labels: Sequence[str],
    lm: str | Path | None,
    lexicon: str | Path | Iterable[str] | Literal[False] | None,
    hotwords: Sequence[str],
) -> _Vocabulary:
    binary = lm is not None and is_kenlm_binary(lm)
    lm_words = read_arpa_unigrams(lm) if lm is not None and not binary else []
    if lexicon is None and binary:
        raise ValueError(
            f"{lm} is a KenLM binary, which holds no readable word list: pass the lexicon "
            "(a word list file, e.g. librispeech-lexicon.txt) or use the ARPA file"
        )
    if lexicon is False or (lexicon is None and lm is None):
        allowed = None
    else:
        allowed = lm_words if lexicon is None else read_word_list(lexicon)
    for word in hotwords:
        if spell(word, labels) is None:
            raise ValueError(f"hotword {word!r} has letters that are not labels of the model")
    if allowed is not None:
        allowed = tuple(w for w in dict.fromkeys([*allowed, *hotwords]) if spell(w, labels))
    entries = list(dict.fromkeys([UNK, *lm_words, *(allowed or ()), *hotwords]))
    dictionary = fl_dictionary.Dictionary(entries)
    dictionary.set_default_index(dictionary.get_index(UNK))
    by_spelling: dict[str, int] = {}
    for index, word in enumerate(entries):
        if (ids := spell(word, labels)) is not None:
            by_spelling.setdefault("".join(labels[i] for i in ids), index)
    model = KenLM(str(lm), dictionary) if lm is not None else fl.ZeroLM()
    return _Vocabulary(allowed, dictionary, by_spelling, model)


_worker_decoder: BeamDecoder | None = None  # the decoder of a decode_batch worker process


def _init_worker(decoder: BeamDecoder) -> None:
    global _worker_decoder
    _worker_decoder = decoder


def _decode_in_worker(log_probs: np.ndarray) -> Hypothesis:
    return _worker_decoder.decode(log_probs)


class BeamDecoder:
    """CTC beam search with an optional word n-gram LM, lexicon and hotwords (flashlight-text).

    Args:
        labels: the model's labels; the blank is ``len(labels)``; ``" "`` separates words.
        beam_width: hypotheses kept per frame.
        lm: ARPA (``.arpa`` or ``.arpa.gz``) or KenLM binary word LM; None: no LM.
        alpha: LM weight (applied to log10 LM probabilities); with an LM only.
        beta: score added per word (word insertion bonus); with an LM only.
        lexicon: allowed words. None: the LM's unigrams with an LM (a KenLM binary needs a list),
            any letter sequence without one; False: any letter sequence; else a word list file
            (first column) or a sequence of words. Words with letters outside the labels are left
            out; words are matched to labels case-insensitively.
        hotwords: words boosted by ``hotword_weight`` (natural-log units) each time they are
            emitted; added to the lexicon.
        beam_threshold: hypotheses scoring more than this below the best are dropped.
        token_beam: classes tried per frame, the most probable first; None: all (12 of 29 lost
            nothing on bench/decoding_speed.py and halves the time).
        num_workers: processes for ``decode_batch`` (1: decode in this process).
        frame_seconds, offset_frames: the time of a frame (module docstring).
    """

    _TUNABLE = ("beam_width", "alpha", "beta", "hotword_weight", "beam_threshold", "token_beam",
                "num_workers")  # fmt: skip

    def __init__(
        self,
        labels: Sequence[str],
        *,
        beam_width: int = 32,
        lm: str | Path | None = None,
        alpha: float = 0.5,
        beta: float = 1.0,
        lexicon: str | Path | Iterable[str] | Literal[False] | None = None,
        hotwords: Sequence[str] = (),
        hotword_weight: float = 3.0,
        beam_threshold: float = 25.0,
        token_beam: int | None = 12,
        num_workers: int = 1,
        frame_seconds: float = FRAME_SECONDS,
        offset_frames: int = 0,
    ) -> None:
        if fl is None:
            raise BeamSearchUnavailableError(
                "beam search needs flashlight-text, which is not installed: "
                "pip install -r requirements-lm.txt"
            )
        if SEPARATOR not in labels:
            raise ValueError("beam search needs a word separator: the label ' '")
        self.labels = list(labels)
        self.beam_width, self.alpha, self.beta = beam_width, alpha, beta
        self.has_lm = lm is not None
        self.hotwords, self.hotword_weight = tuple(hotwords), hotword_weight
        self.beam_threshold, self.token_beam = beam_threshold, token_beam
        self.num_workers = num_workers
        self.frame_seconds, self.offset_frames = frame_seconds, offset_frames
        self._vocabulary = _load_vocabulary(self.labels, lm, lexicon, self.hotwords)
        self._build()

    def with_options(self, **changes) -> BeamDecoder:
        """A decoder with other :attr:`_TUNABLE` settings that shares this one's loaded LM and
        lexicon (``utils/tune_lm.py`` loads an LM once for a whole grid)."""
        unknown = set(changes) - set(self._TUNABLE)
        if unknown:
            raise TypeError(f"with_options cannot change {sorted(unknown)}: load a new decoder")
        other = copy.copy(self)
        for name, value in changes.items():
            setattr(other, name, value)
        other._build()
        return other

    def _build(self) -> None:
        n_classes = num_classes(self.labels)
        separator = self.labels.index(SEPARATOR)
        self._pool: ProcessPoolExecutor | None = None
        # One certain separator after the last frame: the lexicon decoder emits a word when it
        # reads the separator that ends its spelling, and would drop an unterminated last word.
        self._closing = np.full((1, n_classes), -1e4, dtype=np.float32)
        self._closing[0, separator] = 0.0
        # The LM weights only weigh an LM: without one, alpha and beta are ignored.
        alpha, beta = (self.alpha, self.beta) if self.has_lm else (0.0, 0.0)
        # Python LMs must outlive the C++ decoder that calls them: self._lm keeps them.
        if self._vocabulary.lexicon is not None:
            self._lm, weight = self._lexicon_lm(alpha)
            options = fl.LexiconDecoderOptions(
                self.beam_width, min(self.token_beam or n_classes, n_classes), self.beam_threshold,
                weight, beta, -math.inf, 0.0, True, fl.CriterionType.CTC,
            )  # fmt: skip
            unk = self._vocabulary.dictionary.get_index(UNK)
            trie = self._trie(self._lm, separator)
            self._decoder = fl.LexiconDecoder(
                options, trie, self._lm, separator, n_classes - 1, unk, [], False
            )
        else:
            self._lm, weight = self._spelling_lm(alpha, beta)
            options = fl.LexiconFreeDecoderOptions(
                self.beam_width, min(self.token_beam or n_classes, n_classes), self.beam_threshold,
                weight, 0.0, True, fl.CriterionType.CTC,
            )  # fmt: skip
            self._decoder = fl.LexiconFreeDecoder(options, self._lm, separator, n_classes - 1, [])

    def _lexicon_lm(self, alpha: float):
        """(word LM, its weight) for the lexicon decoder: the LM itself, or with hotwords the LM
        weighted by alpha plus their bonus (then with weight 1)."""
        if not self.hotwords:
            return self._vocabulary.lm, alpha
        dictionary = self._vocabulary.dictionary
        bonus = {dictionary.get_index(w): self.hotword_weight for w in self.hotwords}
        return _BoostedLM(self._vocabulary.lm, alpha, bonus), 1.0

    def _trie(self, lm, separator: int):
        """The lexicon's spellings, each ended by the separator; a word's unigram score (after
        ``<s>``) smeared over its prefixes lets the search look ahead."""
        trie = fl.Trie(num_classes(self.labels), separator)
        start = lm.start(False)
        for word in self._vocabulary.lexicon:
            index = self._vocabulary.dictionary.get_index(word)
            trie.insert([*spell(word, self.labels), separator], index, lm.score(start, index)[1])
        trie.smear(fl.SmearingMode.MAX)
        return trie

    def _spelling_lm(self, alpha: float, beta: float):
        """(token LM, its weight) for the lexicon-free decoder."""
        if not (self.has_lm or self.hotwords):
            return self._vocabulary.lm, 0.0
        spelled = ("".join(self.labels[i] for i in spell(w, self.labels)) for w in self.hotwords)
        bonus = dict.fromkeys(spelled, self.hotword_weight)
        inner = self._vocabulary.lm if self.has_lm else None
        unk = self._vocabulary.dictionary.get_index(UNK)
        by_spelling = self._vocabulary.by_spelling
        return _SpellingLM(inner, by_spelling, unk, self.labels, alpha, beta, bonus), 1.0

    def decode(self, log_probs: torch.Tensor | np.ndarray) -> Hypothesis:
        array = _as_array(log_probs, num_classes(self.labels))
        emissions = np.concatenate([array, self._closing])
        results = self._decoder.decode(emissions.ctypes.data, len(emissions), emissions.shape[1])
        if not results:
            return Hypothesis("")
        path = list(results[0].tokens)[1 : len(array) + 1]  # drop the start and closing frames
        words = words_from_path(path, array, self.labels, self.frame_seconds, self.offset_frames)
        return Hypothesis(" ".join(w.word for w in words), words)

    def decode_batch(self, batch: Sequence[torch.Tensor | np.ndarray]) -> list[Hypothesis]:
        """Hypotheses in ``batch`` order; ``num_workers > 1`` decodes in forked processes."""
        arrays = [_as_array(x, num_classes(self.labels)) for x in batch]
        if self.num_workers <= 1 or len(arrays) <= 1:
            return [self.decode(x) for x in arrays]
        if self._pool is None:
            # fork: the workers inherit this decoder, LM included, instead of loading it again.
            self._pool = ProcessPoolExecutor(
                self.num_workers, multiprocessing.get_context("fork"), _init_worker, (self,)
            )
        chunk = max(1, len(arrays) // (4 * self.num_workers))
        return list(self._pool.map(_decode_in_worker, arrays, chunksize=chunk))

    def close(self) -> None:
        """Stop the worker processes of ``decode_batch`` (if any)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> BeamDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_decoder(kind: str, labels: Sequence[str], **kwargs) -> GreedyDecoder | BeamDecoder:
    """``"greedy"`` or ``"beam"``, with that class's keyword arguments."""
    decoders = {"greedy": GreedyDecoder, "beam": BeamDecoder}
    if kind not in decoders:
        raise ValueError(f"unknown decoder {kind!r}: use one of {', '.join(decoders)}")
    return decoders[kind](labels, **kwargs)
