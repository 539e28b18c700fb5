"""Spell out numbers in lower-case ASCII English text (step 3 of upstream's english_cleaners).

Upstream's rules (DLE Jasper ``common/text/numbers.py``, after keithito/tacotron) are kept:

- money: ``$3.50`` -> "three dollars fifty cents", ``£5`` -> "five pounds";
- decimals: ``0.5`` -> "zero point five";
- ordinals: ``21st`` -> "twenty first" (inflect's reading, so ``101st`` -> "one hundred and first");
- integers: a leading zero reads digit by digit (``0800`` -> "zero eight zero zero"); 1001..2999
  read like years (``1066`` -> "ten sixty six", ``2007`` -> "two thousand seven", ``1900`` ->
  "nineteen hundred"); above 10^9 and not a multiple of 10^4 digit by digit (phone numbers); else
  cardinal words without "and".

Deliberate fixes of upstream defects (docs/upstream.md#u23; all listed in ``tests/test_text.py``):

- digit grouping: ``1,250`` -> "one thousand two hundred fifty" (upstream dropped the commas and
  read "1250" like a year: "twelve fifty"); commas that are not thousands grouping act as upstream;
- times: ``10:30`` -> "ten thirty", ``8:05`` -> "eight oh five", ``8:00`` -> "eight" (upstream's
  time rule ran after the integer rule and never matched: ``8:00`` -> "eight zero zero");
- plurals of numbers: ``1990s`` -> "nineteen nineties" (upstream: "nineteen ninetys");
- percent: ``100%`` -> "one hundred percent" (upstream dropped the sign);
- decimal digits read one by one: ``3.14`` -> "three point one four" (upstream: "point fourteen");
- ``£1`` -> "one pound" (upstream: "one pounds");
- a number glued to letters is split off: ``8pm`` -> "eight pm" (upstream: "eightpm").

The output may still hold other punctuation; the cleaners map it to spaces afterwards.
"""

from __future__ import annotations

import functools
import re


@functools.cache
def _engine():
    # Imported on first use: inflect takes about 2 s to import (its typeguard instrumentation),
    # and LibriSpeech-style transcripts hold no digits at all.
    import inflect

    return inflect.engine()


def _number_to_words(num: int | str, **kwargs) -> str:
    """inflect's words, or digit by digit beyond its largest named power (10^33)."""
    import inflect

    try:
        return _engine().number_to_words(num, **kwargs)
    except inflect.NumOutOfRangeError:
        return " ".join(_engine().number_to_words(d) for d in str(num) if d.isdigit())


_TIME_RE = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_PERCENT_RE = re.compile(r"(\d)\s?%")
_POUNDS_RE = re.compile(r"£([0-9,]*[0-9]+)")
_DOLLARS_RE = re.compile(r"\$([0-9.,]*[0-9]+)")
_COMMA_NUMBER_RE = re.compile(r"[0-9][0-9,]+[0-9]")
_GROUPED_RE = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+")  # 1,250 / 12,345,678
_DECIMAL_RE = re.compile(r"([0-9]+)\.([0-9]+)")
_PLURAL_RE = re.compile(r"\b([0-9]+)s\b")
_ORDINAL_RE = re.compile(r"[0-9]+(?:st|nd|rd|th)")
_INTEGER_RE = re.compile(r"[0-9]+")


def _clean(words: str) -> str:
    """inflect's "one thousand, two hundred twenty-one" -> "one thousand two hundred twenty one"."""
    return " ".join(words.replace(",", " ").replace("-", " ").split())


def _digits(digits: str) -> str:
    return " ".join(_number_to_words(d) for d in digits)


def _cardinal(num: int) -> str:
    return _clean(_number_to_words(num, andword=""))


def _integer(digits: str) -> str:
    """Upstream's reading of a run of digits (see the module docstring)."""
    if digits[0] == "0":
        return _digits(digits)
    num = int(digits)
    if 1000 < num < 3000:
        if num == 2000:
            return "two thousand"
        if 2000 < num < 2010:
            return "two thousand " + _cardinal(num % 100)
        if num % 100 == 0:
            return _cardinal(num // 100) + " hundred"
        return _clean(_number_to_words(num, andword="", zero="oh", group=2))
    if num > 1_000_000_000 and num % 10_000 != 0:
        return _digits(digits)
    return _cardinal(num)


def _expand_time(m: re.Match[str]) -> str:
    hours, minutes = int(m.group(1)), int(m.group(2))
    if hours > 24 or minutes > 59:
        return m.group(0)  # not a time: the integer rule reads both numbers
    if minutes == 0:
        return _cardinal(hours)
    if minutes < 10:
        return f"{_cardinal(hours)} oh {_cardinal(minutes)}"
    return f"{_cardinal(hours)} {_cardinal(minutes)}"


def _amount(digits: str) -> str:
    """A money amount as digits for the later passes: keeps valid grouping, drops leading zeros."""
    return digits if _GROUPED_RE.fullmatch(digits) else str(int(digits.replace(",", "")))


def _expand_pounds(m: re.Match[str]) -> str:
    amount = _amount(m.group(1))
    return f"{amount} {'pound' if amount == '1' else 'pounds'}"


def _expand_dollars(m: re.Match[str]) -> str:
    parts = m.group(1).split(".")
    if len(parts) > 2:
        return m.group(1) + " dollars"  # unexpected format, as upstream
    dollars = int(parts[0].replace(",", "")) if parts[0].strip(",") else 0
    cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    words = []
    if dollars:
        words.append(f"{_amount(parts[0])} {'dollar' if dollars == 1 else 'dollars'}")
    if cents:
        words.append(f"{cents} {'cent' if cents == 1 else 'cents'}")
    return ", ".join(words) if words else "zero dollars"


def _expand_comma_number(m: re.Match[str]) -> str:
    text = m.group(0)
    if _GROUPED_RE.fullmatch(text):
        return _cardinal(int(text.replace(",", "")))
    return text.replace(",", "")  # "1,2,3" -> "123", as upstream


def _expand_decimal(m: re.Match[str]) -> str:
    return f"{m.group(1)} point {_digits(m.group(2))}"


def _pluralize(word: str) -> str:
    if word.endswith("y"):
        return word[:-1] + "ies"
    if word.endswith(("x", "s")):
        return word + "es"
    return word + "s"


def _expand_plural(m: re.Match[str]) -> str:
    head, _, last = _integer(m.group(1)).rpartition(" ")
    return f"{head} {_pluralize(last)}".strip()


def _expand_ordinal(m: re.Match[str]) -> str:
    return _clean(_number_to_words(m.group(0)))


def _expand_integer(m: re.Match[str]) -> str:
    words = _integer(m.group(0))
    text, start, end = m.string, m.start(), m.end()
    if start > 0 and text[start - 1].isalpha():
        words = " " + words
    if end < len(text) and text[end].isalpha():
        words += " "
    return words


def expand_numbers(text: str) -> str:
    """Spell out every number in ``text`` (lower-case ASCII) as English words."""
    if not any(c.isdigit() for c in text):
        return text
    text = _TIME_RE.sub(_expand_time, text)
    text = _PERCENT_RE.sub(r"\1 percent", text)
    text = _POUNDS_RE.sub(_expand_pounds, text)
    text = _DOLLARS_RE.sub(_expand_dollars, text)
    text = _COMMA_NUMBER_RE.sub(_expand_comma_number, text)
    text = _DECIMAL_RE.sub(_expand_decimal, text)
    text = _PLURAL_RE.sub(_expand_plural, text)
    text = _ORDINAL_RE.sub(_expand_ordinal, text)
    return _INTEGER_RE.sub(_expand_integer, text)
