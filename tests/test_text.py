"""Transcript normalisation and label ids (common.text) against upstream's cleaners
(common/text/cleaners.py english_cleaners, common/text/numbers.py)."""

import json
import logging
from pathlib import Path

import pytest

from common.text import DEFAULT_LABELS, ids_to_text, normalize, text_to_ids

# Transcripts run through upstream's own normaliser (a copy of reference/text_cases.json).
CASES_FILE = Path(__file__).parent / "data" / "text_cases.json"
REFERENCE_CASES = json.loads(CASES_FILE.read_text(encoding="utf-8"))

# Where we deliberately differ from upstream: input -> (upstream's output, ours, why ours is right).
# Upstream's outputs are measured (text_cases.json) or follow from its rules.
DELIBERATE_DIFFERENCES = {
    "1,250 apples": (
        "twelve fifty apples",
        "one thousand two hundred fifty apples",
        "Thousands grouping marks a cardinal; upstream dropped the commas, read 1250 as a year.",
    ),
    "the 1990s were fun": (
        "the nineteen ninetys were fun",
        "the nineteen nineties were fun",
        "English plural of 'ninety'; upstream glued an 's' to the number words.",
    ),
    "100%": ("one hundred", "one hundred percent", "The sign is spoken; upstream dropped it."),
    "it's 100% rock & roll + jazz": (
        "it's one hundred rock and roll plus jazz",
        "it's one hundred percent rock and roll plus jazz",
        "As above (measured on upstream's cleaners).",
    ),
    "½ cup": ("cup", "one half cup", "The fraction is spoken; upstream's transliteration lost it."),
    "2½ cups": ("two cups", "two and one half cups", "As above; 'and' joins the whole part."),
    "call me at 8:00 pm!": (
        "call me at eight zero zero pm",
        "call me at eight pm",
        "Upstream's time rule ran after the integer rule, so it never matched (numbers.py).",
    ),
    "8:05": ("eight zero five", "eight oh five", "Same dead time rule; minutes 01-09 read 'oh N'."),
    "pi is 3.14": (
        "pi is three point fourteen",
        "pi is three point one four",
        "Digits after the decimal point are read one by one.",
    ),
    "8pm": ("eightpm", "eight pm", "A number glued to letters is a word of its own."),
    "£1": (
        "one pounds",
        "one pound",
        "Singular, as upstream's dollars rule already did (output of upstream's pounds rule).",
    ),
}


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=lambda c: repr(c["input"]))
def test_reference_cases(case):
    if case["input"] in DELIBERATE_DIFFERENCES:
        upstream, ours, _ = DELIBERATE_DIFFERENCES[case["input"]]
        assert case["expected"] == upstream, "the table must quote upstream's output exactly"
        assert normalize(case["input"], DEFAULT_LABELS) == ours
    else:
        assert normalize(case["input"], DEFAULT_LABELS) == case["expected"]


@pytest.mark.parametrize("text", sorted(DELIBERATE_DIFFERENCES))
def test_deliberate_differences(text):
    upstream, ours, why = DELIBERATE_DIFFERENCES[text]
    assert ours != upstream and why
    assert normalize(text, DEFAULT_LABELS) == ours


# Behaviour kept from upstream (outputs measured on its cleaners, and its number rules).
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Mr. Smith paid $3.50 on the 21st of May, 1995.",
            "mister smith paid three dollars fifty cents on the twenty first of may"
            " nineteen ninety five",
        ),
        (
            "In 2007 he had 1,000,000 cats; 0.5 of them",
            "in two thousand seven he had one million cats zero point five of them",
        ),
        ("Call 0800 now", "call zero eight zero zero now"),
        ("St. John's Co. Ltd.", "saint john's company limited"),
        ("café naïve — “quoted”", "cafe naive quoted"),
        ("$1", "one dollar"),
        ("$0.01", "one cent"),
        ("$1,250.50", "one thousand two hundred fifty dollars fifty cents"),
        ("£1,250", "one thousand two hundred fifty pounds"),
        ("1000 1900 2000", "one thousand nineteen hundred two thousand"),
        ("2005 3000", "two thousand five three thousand"),
        ("1905", "nineteen oh five"),
        ("12345678901", "one two three four five six seven eight nine zero one"),
        ("1,2,3", "one hundred twenty three"),  # not thousands grouping: upstream's reading
        ("the 101st time", "the one hundred and first time"),  # inflect's ordinals keep "and"
        ("Capt. Lt. Col. Sgt. Esq.", "captain lieutenant colonel sergeant esquire"),
        ("the '90s", "the 'nineties"),
        ("😀 hi ©2020", "hi twenty twenty"),  # symbols say nothing
        ("Gro\u0308ße", "groesse"),  # decomposed umlaut, then ASCII
    ],
)
def test_english_normalisation(text, expected):
    assert normalize(text, DEFAULT_LABELS) == expected


ODD_INPUTS = [
    "\x00\x01\x7f",
    "\u200b zero\u00a0width",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ｆｕｌｌ",
    "中文 and ١٢٣",
    "1" + "0" * 40,  # beyond inflect's range: digit by digit instead of upstream's exception
    "  \n\t ",
    "''' - '''",
]


@pytest.mark.parametrize("text", ODD_INPUTS)
def test_output_is_clean_label_text(text):
    out = normalize(text, DEFAULT_LABELS)
    assert isinstance(out, str)
    assert set(out) <= set(DEFAULT_LABELS)
    assert out == " ".join(out.split())


@pytest.mark.parametrize("text", ["", "   ", "?!.,;:", "—", "😀", "\x00"])
def test_nothing_left_is_empty_string(text):
    assert normalize(text, DEFAULT_LABELS) == ""


@pytest.mark.parametrize("text", [None, 42, b"bytes"])
def test_odd_input_warns_instead_of_raising(text, caplog):
    with caplog.at_level(logging.WARNING):
        assert normalize(text, DEFAULT_LABELS) == ""
    assert "not a string" in caplog.text


def test_upper_case_labels_get_upper_case_text():
    labels = [" ", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "'"]
    assert normalize("Hello, Dr. Who's 42", labels) == "HELLO DOCTOR WHO'S FORTY TWO"


def test_labels_without_space():
    assert normalize("a b, c", list("abc")) == "abc"


GERMAN = " abcdefghijklmnopqrstuvwxyzäöüß'"
RUSSIAN = " абвгдеёжзийклмнопрстуфхцчшщъыьэюя'"


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        # No transliteration, no English numbers: umlauts stay, digits (not labels) are dropped.
        ("Über den Fluß – „schön“, sagt’s 3 Mal!", GERMAN, "über den fluß schön sagt's mal"),
        ("Gro\u0308ße STRASSE", GERMAN, "größe strasse"),  # NFC composes the decomposed umlaut
        ("Dr. Müller & Co.", GERMAN, "dr müller co"),
        ("Привет, мир! Ёлка — 5 шт. (hello)", RUSSIAN, "привет мир ёлка шт"),
        ("Я   думаю…", RUSSIAN, "я думаю"),
        ("!!!", RUSSIAN, ""),
    ],
)
def test_non_english_label_sets(text, labels, expected):
    assert normalize(text, list(labels)) == expected


def test_default_labels():
    assert "".join(DEFAULT_LABELS) == " abcdefghijklmnopqrstuvwxyz'"
    assert len(DEFAULT_LABELS) == 28  # the CTC blank is id 28, appended by the model


@pytest.mark.parametrize("text", ["hello world", "don't", "", "' a z '"])
def test_ids_round_trip(text):
    ids = text_to_ids(text, DEFAULT_LABELS)
    assert all(0 <= i < len(DEFAULT_LABELS) for i in ids)
    assert ids_to_text(ids, DEFAULT_LABELS) == text


def test_text_to_ids_values_and_unknown_characters():
    assert text_to_ids("a z'", DEFAULT_LABELS) == [1, 0, 26, 27]
    assert text_to_ids("A1b-é", DEFAULT_LABELS) == [2]  # not labels: dropped
    assert text_to_ids("äb", GERMAN) == [GERMAN.index("ä"), 2]


def test_ids_to_text_skips_blank_and_rejects_foreign_ids():
    assert ids_to_text([8, 28, 9], DEFAULT_LABELS) == "hi"
    with pytest.raises(ValueError, match="29"):
        ids_to_text([29], DEFAULT_LABELS)
    with pytest.raises(ValueError):
        ids_to_text([-1], DEFAULT_LABELS)
