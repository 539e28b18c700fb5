"""Transcripts as the model sees them: a label set, normalisation, and text <-> label ids.

Labels are single characters. The CTC blank is not a label: models append it as the last class,
so its id is ``len(labels)`` (upstream common/helpers.py add_ctc_blank; 28 for ``DEFAULT_LABELS``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from common.text.cleaners import normalize

__all__ = ["DEFAULT_LABELS", "ids_to_text", "normalize", "text_to_ids"]

DEFAULT_LABELS: list[str] = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]


@functools.lru_cache(maxsize=32)
def _label_ids(labels: tuple[str, ...]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for i, label in enumerate(labels):
        ids.setdefault(label, i)  # a repeated label maps to its first id
    return ids


def text_to_ids(text: str, labels: Sequence[str]) -> list[int]:
    """Label ids of the characters of ``text``; characters that are not labels are dropped."""
    ids = _label_ids(tuple(labels))
    return [ids[c] for c in text if c in ids]


def ids_to_text(ids: Iterable[int], labels: Sequence[str]) -> str:
    """The labels of ``ids`` joined; the blank id ``len(labels)`` is skipped.

    Raises ValueError for any other id outside ``[0, len(labels))``: it means the labels do not
    belong to the model that produced the ids.
    """
    out = []
    for i in ids:
        i = int(i)
        if 0 <= i < len(labels):
            out.append(labels[i])
        elif i != len(labels):
            raise ValueError(f"label id {i} is outside [0, {len(labels)}] ({len(labels)} = blank)")
    return "".join(out)
