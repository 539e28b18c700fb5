"""Greedy CTC decoding and error rates (common.metrics), as upstream's common/helpers.py (CTC
collapse) and common/metrics.py (word_error_rate) compute them."""

import math
import random

import pytest

from common.metrics import (
    char_error_rate,
    ctc_collapse,
    ctc_greedy_text,
    levenshtein,
    word_error_rate,
)
from common.text import DEFAULT_LABELS

B = 28  # blank id of the default labels


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("abc", "abc", 0),
        ("abc", "", 3),  # deletions
        ("", "abc", 3),  # insertions
        ("abc", "axc", 1),  # substitution
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("abcdef", "azced", 3),
        (["the", "cat"], ["the", "cat", "sat"], 1),
        ([1, 2, 3], [3, 2, 1], 2),
    ],
)
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance


def _levenshtein_full_matrix(a, b):
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            substitution = d[i - 1][j - 1] + (a[i - 1] != b[j - 1])
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, substitution)
    return d[-1][-1]


def test_levenshtein_matches_textbook_matrix():
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choices("abc", k=rng.randrange(9)))
        b = "".join(rng.choices("abc", k=rng.randrange(9)))
        assert levenshtein(a, b) == _levenshtein_full_matrix(a, b), (a, b)


@pytest.mark.parametrize(
    ("hyps", "refs", "expected"),
    [
        (["the cat sat"], ["the cat sat"], (0.0, 0, 3)),
        (["the bat sat"], ["the cat sat"], (1 / 3, 1, 3)),  # substitution
        (["the cat sat down"], ["the cat sat"], (1 / 3, 1, 3)),  # insertion
        (["the sat"], ["the cat sat"], (1 / 3, 1, 3)),  # deletion
        ([""], ["the cat sat"], (1.0, 3, 3)),  # empty hypothesis: all deletions
        (["a b c d e f"], ["x"], (6.0, 6, 1)),  # WER can exceed 1
        (["  the   cat "], ["the cat"], (0.0, 0, 2)),  # whitespace runs are one separator
        # Corpus sums: (1 + 0) errors / (1 + 4) words = 0.2; the mean of the utterances' WERs
        # (1/1 and 0/4) would be 0.5.
        (["b", "w x y z"], ["a", "w x y z"], (0.2, 1, 5)),
        ([], [], (0.0, 0, 0)),
    ],
)
def test_word_error_rate(hyps, refs, expected):
    wer, errors, words = word_error_rate(hyps, refs)
    assert (errors, words) == expected[1:]
    assert wer == pytest.approx(expected[0])


def test_wer_is_not_the_mean_of_utterance_wers():
    hyps, refs = ["b", "w x y z"], ["a", "w x y z"]
    per_utterance = [word_error_rate([h], [r])[0] for h, r in zip(hyps, refs, strict=True)]
    assert sum(per_utterance) / len(per_utterance) == pytest.approx(0.5)
    assert word_error_rate(hyps, refs)[0] == pytest.approx(0.2)


def test_empty_references():
    # Upstream returned inf for any corpus without reference words; an empty hypothesis against
    # an empty reference is no error, so ours returns 0.0 there and inf only when there are errors.
    assert word_error_rate([""], [""]) == (0.0, 0, 0)
    wer, errors, words = word_error_rate(["an extra"], ["  "])
    assert math.isinf(wer) and (errors, words) == (2, 0)


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"3 hypotheses but 2 references"):
        word_error_rate(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match=r"1 hypotheses but 2 references"):
        char_error_rate(["a"], ["a", "b"])


@pytest.mark.parametrize(
    ("hyps", "refs", "expected"),
    [
        (["hello"], ["hello"], (0.0, 0, 5)),
        (["helo"], ["hello"], (0.2, 1, 5)),
        (["hello  world "], ["hello world"], (0.0, 0, 11)),  # whitespace runs count as one space
        (["ab", ""], ["abc", "de"], (0.6, 3, 5)),  # corpus sums
        ([""], [""], (0.0, 0, 0)),
    ],
)
def test_char_error_rate(hyps, refs, expected):
    cer, errors, chars = char_error_rate(hyps, refs)
    assert (errors, chars) == expected[1:]
    assert cer == pytest.approx(expected[0])


@pytest.mark.parametrize(
    ("ids", "collapsed"),
    [
        ([], []),
        ([B, B, B], []),  # all blank
        ([1, 1, 1], [1]),  # repeats merge
        ([1, B, 1], [1, 1]),  # a blank between repeats keeps both
        ([1, 1, B, B, 1, 2, 2, B], [1, 1, 2]),
        ([B, 3, B, 3, 3, 4], [3, 3, 4]),
        ([0, 0, 5, 0], [0, 5, 0]),  # the space label (id 0) is an ordinary symbol
    ],
)
def test_ctc_collapse(ids, collapsed):
    assert ctc_collapse(ids, B) == collapsed


def test_ctc_collapse_accepts_arrays():
    np = pytest.importorskip("numpy")
    assert ctc_collapse(np.array([1, 1, B, 1]), B) == [1, 1]
    assert all(type(i) is int for i in ctc_collapse(np.array([1, 2]), B))


def test_ctc_greedy_text():
    h, e, l_, o = (DEFAULT_LABELS.index(c) for c in "helo")
    frames = [B, h, h, e, B, l_, l_, B, l_, o, o, B, 0, 0, B]
    assert ctc_greedy_text(frames, DEFAULT_LABELS) == "hello "
    assert ctc_greedy_text([B] * 5, DEFAULT_LABELS) == ""
    # A model whose blank is id 0 (labels then start at id 1 with a placeholder at 0).
    labels = ["<blank>", "a", "b"]
    assert ctc_greedy_text([0, 1, 1, 0, 1, 2], labels, blank_id=0) == "aab"
