"""Transcript normalisation: raw text -> training target over a label set (docs/upstream.md#text).

Two paths, chosen by the label set:

English (every label is ASCII; the default labels " a..z'" are): upstream's ``english_cleaners``
chain, in its order:

1. transliterate to ASCII (``anyascii``, with the overrides in ``_TRANSLITERATION``, which keep
   upstream's outputs: German umlauts as "ae"/"oe"/"ue", the em dash dropped) and spell out
   vulgar fractions ("2½" -> "2 and one half"; upstream dropped them). Other symbols (emoji, ©,
   °) are dropped;
2. lower case;
3. spell out numbers (``numbers.expand_numbers``, whose docstring lists the fixed upstream defects);
4. expand abbreviations ("mr." -> "mister", "st." -> "saint", ...);
5. punctuation that is not a label -> space, "&" -> " and ", "+" -> " plus ";
6. drop characters that are not labels, collapse whitespace, strip.

Other label sets (any non-ASCII label: German, Russian, Chinese, ... as NeMo's QuartzNet models use)
get no transliteration and no English number or abbreviation rules, since those would destroy the
very characters the labels hold. They get Unicode NFC composition, apostrophe look-alikes (’ ‘ ʼ
...) -> "'" when "'" is a label, the case of the labels (lower case unless the labels have
upper-case letters only), punctuation and symbols (Unicode categories P* and S*) that are not
labels -> space, then step 6. Digits are dropped unless they are labels: such corpora must come
with numbers spelled out.

Upper-case-only ASCII label sets (e.g. LibriSpeech's " A..Z'") take the English path and are
upper-cased at the end.
"""

from __future__ import annotations

import functools
import logging
import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from anyascii import anyascii

from common.text.numbers import expand_numbers

log = logging.getLogger(__name__)

# Where upstream's transliteration table (common/text/unidecoder, from sindresorhus/transliterate)
# and anyascii disagree on the reference cases (tests/data/text_cases.json), upstream's output wins.
_TRANSLITERATION = {
    "ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue",
    "—": "",  # em dash: not in upstream's table, so dropped ("a—b" -> "ab")
    "£": "£",  # kept for the pounds rule of expand_numbers
}  # fmt: skip
_APOSTROPHES = "’‘‛ʼ′´`"  # read as "'" where "'" is a label

_ABBREVIATIONS = {
    "mrs": "misess", "mr": "mister", "dr": "doctor", "st": "saint", "co": "company",
    "jr": "junior", "maj": "major", "gen": "general", "drs": "doctors", "rev": "reverend",
    "lt": "lieutenant", "hon": "honorable", "sgt": "sergeant", "capt": "captain",
    "esq": "esquire", "ltd": "limited", "col": "colonel", "ft": "fort",
}  # fmt: skip
_ABBREVIATION_RE = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\.")


@dataclass(frozen=True)
class _LabelSet:
    chars: frozenset[str]
    english: bool  # every label is ASCII: the English cleaners apply
    case: str | None  # "lower", "upper" or None (mixed case: keep the text's)
    punctuation: dict[int, str]  # str.translate table: ASCII punctuation that is no label -> " "


@functools.lru_cache(maxsize=32)
def _label_set(labels: tuple[str, ...]) -> _LabelSet:
    chars = frozenset(labels)
    has_upper = any(c.isupper() for c in labels)
    has_lower = any(c.islower() for c in labels)
    case = "upper" if has_upper and not has_lower else None if has_upper else "lower"
    spaced = set(string.punctuation) - {"&", "+"} - chars
    return _LabelSet(
        chars=chars,
        english=all(c.isascii() for c in labels),
        case=case,
        punctuation=str.maketrans({c: " " for c in spaced}),
    )


def transliterate(text: str) -> str:
    """Unicode -> ASCII, one character at a time (step 1 of the English path)."""
    if text.isascii():
        return text
    out = []
    for c in unicodedata.normalize("NFC", text):
        if c.isascii():
            out.append(c)
        elif c in _TRANSLITERATION:
            out.append(_TRANSLITERATION[c])
        elif (name := unicodedata.name(c, "")).startswith("VULGAR FRACTION "):
            after_digit = bool(out) and out[-1][-1:].isdigit()
            out.append((" and " if after_digit else " ") + name[16:].lower() + " ")
        elif unicodedata.category(c) != "So":  # other symbols (emoji, ©, °) say nothing
            out.append(anyascii(c))
    return "".join(out)


def expand_abbreviations(text: str) -> str:
    """Expand "mr." -> "mister" and upstream's 17 other abbreviations (lower-case text)."""
    if "." not in text:
        return text
    return _ABBREVIATION_RE.sub(lambda m: _ABBREVIATIONS[m.group(1)], text)


def _english(text: str, ls: _LabelSet) -> str:
    text = transliterate(text).lower()
    text = expand_abbreviations(expand_numbers(text))
    text = text.translate(ls.punctuation).replace("&", " and ").replace("+", " plus ")
    return text.upper() if ls.case == "upper" else text


def _other(text: str, ls: _LabelSet) -> str:
    text = unicodedata.normalize("NFC", text)
    if ls.case == "lower":
        text = text.lower()
    elif ls.case == "upper":
        text = text.upper()
    apostrophe = "'" in ls.chars
    out = []
    for c in text:
        if c in ls.chars:
            out.append(c)
        elif apostrophe and c in _APOSTROPHES:
            out.append("'")
        elif unicodedata.category(c)[0] in "PS":
            out.append(" ")
        else:
            out.append(c)
    return "".join(out)


def normalize(text: str, labels: Sequence[str]) -> str:
    """Normalise a transcript to the training target over ``labels`` (see the module docstring).

    Returns "" when nothing is left. Never raises: on input it cannot handle (not a string, say) it
    logs a warning and returns "".
    """
    if not isinstance(text, str):
        log.warning("transcript %.80r is a %s, not a string: normalised to ''", text, type(text))
        return ""
    try:
        ls = _label_set(tuple(labels))
        text = _english(text, ls) if ls.english else _other(text, ls)
        space = " " in ls.chars
        text = "".join(c if c in ls.chars else " " if space and c.isspace() else "" for c in text)
        return " ".join(text.split()) if space else text
    except Exception as e:  # a transcript must never stop data loading (docs/upstream.md#u26)
        log.warning("could not normalise transcript %.80r: %s: %s", text, type(e).__name__, e)
        return ""
