"""Greedy CTC decoding and error rates (upstream: common/helpers.py, common/metrics.py).

WER is a corpus figure: the word-level edit distances of all utterances summed, divided by the
total number of reference words. It is not the mean of per-utterance WERs. The functions return the
two counts beside the rate, so that distributed evaluation can all-reduce (errors, words) and then
divide once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from common.text import ids_to_text


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance between two sequences: substitutions, insertions and deletions cost 1 each."""
    # A common prefix and suffix cost nothing; trimming them makes near-matches cheap.
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a  # one row over the shorter sequence
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            substitution = diagonal + (x != y)
            diagonal = row[j]
            row[j] = min(substitution, diagonal + 1, row[j - 1] + 1)
    return row[-1]


def _error_rate(
    hypotheses: Sequence[str], references: Sequence[str], tokens: Callable[[str], Sequence]
) -> tuple[float, int, int]:
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: they must pair up"
        )
    errors = total = 0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        ref = tokens(reference)
        errors += levenshtein(tokens(hypothesis), ref)
        total += len(ref)
    if total == 0:
        return (math.inf if errors else 0.0), errors, total
    return errors / total, errors, total


def word_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, int, int]:
    """Corpus WER over whitespace-separated words: ``(errors / words, errors, words)``.

    With no reference words at all the rate is ``inf`` if there are errors and 0.0 if not (upstream
    returned ``inf`` in both cases). Raises ValueError if the two lists differ in length (upstream
    silently dropped extra hypotheses).
    """
    return _error_rate(hypotheses, references, str.split)


def char_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, int, int]:
    """Corpus CER: ``(errors / characters, errors, characters)``, same conventions as WER.

    Runs of whitespace count as one space and leading or trailing whitespace does not count.
    """
    return _error_rate(hypotheses, references, lambda s: " ".join(s.split()))


def ctc_collapse(ids: Sequence[int], blank_id: int) -> list[int]:
    """Greedy CTC collapse of per-frame ids: merge repeats, then drop blanks.

    Exactly upstream's rule: ``previous`` starts as blank; emit ``p`` if ``p != blank`` and
    ``(p != previous or previous == blank)``; then ``previous = p``. So "a a" merges while
    "a <blank> a" gives two a's. Accepts lists, numpy arrays and 1-D tensors.
    """
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    out = []
    previous = blank_id
    for p in ids:
        if p != blank_id and (p != previous or previous == blank_id):
            out.append(p)
        previous = p
    return out


def ctc_greedy_text(ids: Sequence[int], labels: Sequence[str], blank_id: int | None = None) -> str:
    """Transcript of per-frame argmax ids: CTC collapse, then labels (blank defaults to last)."""
    blank = len(labels) if blank_id is None else blank_id
    return ids_to_text(ctc_collapse(ids, blank), labels)
