"""Language model files: the ARPA builder (utils/build_lm.py) against hand-computed Kneser-Ney
probabilities, and the LibriSpeech LM downloader (utils/download_lm.py) offline through file://."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary

from tests.conftest import run_launcher
from utils import build_lm, download_lm


def read_arpa(path) -> tuple[dict[int, int], dict[tuple[str, ...], tuple[float, float]]]:
    """``(declared counts by order, n-gram -> (log10 p, log10 backoff))`` of an ARPA file."""
    declared, model, order = {}, {}, 0
    for line in path.read_text().splitlines():
        if line.startswith("ngram "):
            k, n = line[6:].split("=")
            declared[int(k)] = int(n)
        elif line.endswith("-grams:"):
            order = int(line[1:].split("-")[0])
        elif line.strip() and order and not line.startswith("\\"):
            fields = line.split("\t")
            backoff = float(fields[2]) if len(fields) > 2 else 0.0
            model[tuple(fields[1].split())] = (float(fields[0]), backoff)
    for k, n in declared.items():
        assert sum(len(g) == k for g in model) == n
    return declared, model


def probability(model, context: tuple[str, ...], word: str) -> float:
    """p(word | context) by the ARPA backoff rule."""
    if (*context, word) in model:
        return 10 ** model[(*context, word)][0]
    backoff = 10 ** model[context][1] if context in model else 1.0
    return backoff * probability(model, context[1:], word)


def build(tmp_path, lines: list[str], *args: str):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(lines) + "\n")
    arpa = tmp_path / "lm.arpa"
    assert build_lm.main([str(text), str(arpa), *args]) == 0
    return arpa, *read_arpa(arpa)


def test_bigram_probabilities_equal_the_hand_computed_ones(tmp_path):
    # Corpus "a b", "a c", "b"; fixed discount D = 0.5. Unigram continuation counts (distinct left
    # neighbours): a 1 (<s>), b 2 (a, <s>), c 1 (a), </s> 2 (b, c): total 6, gamma = 0.5 * 4 / 6.
    # Vocabulary a b c </s> <unk>: p(w) = (N(.w) - 0.5) / 6 + (1/3) / 5.
    _, declared, model = build(tmp_path, ["a b", "a c", "b"], "--order", "2", "--discount", "0.5")
    assert declared == {1: 6, 2: 6}
    unigram = {"a": 9 / 60, "b": 19 / 60, "c": 9 / 60, "</s>": 19 / 60, "<unk>": 4 / 60}
    for word, p in unigram.items():
        assert 10 ** model[(word,)][0] == pytest.approx(p, rel=1e-5)
    # After <s>: a twice, b once: gamma(<s>) = 0.5 * 2 / 3.
    assert 10 ** model[("<s>", "a")][0] == pytest.approx(1.5 / 3 + 1 / 3 * 9 / 60, rel=1e-5)
    assert 10 ** model[("<s>", "b")][0] == pytest.approx(0.5 / 3 + 1 / 3 * 19 / 60, rel=1e-5)
    assert 10 ** model[("<s>",)][1] == pytest.approx(1 / 3, rel=1e-5)
    # After a: b once, c once: gamma(a) = 0.5.
    assert 10 ** model[("a", "b")][0] == pytest.approx(0.25 + 0.5 * 19 / 60, rel=1e-5)
    assert 10 ** model[("a",)][1] == pytest.approx(0.5, rel=1e-5)
    assert model[("<s>",)][0] == -99.0  # never predicted
    # An unseen bigram backs off: p(c | b) = gamma(b) p(c), gamma(b) = 0.5 * 1 / 2.
    assert probability(model, ("b",), "c") == pytest.approx(0.25 * 9 / 60, rel=1e-5)


def test_modified_kneser_ney_discounts():
    # n1..n4 = 10, 5, 3, 2: Y = 0.5, D1 = 1 - 2Y 5/10, D2 = 2 - 3Y 3/5, D3+ = 3 - 4Y 2/3.
    counts = [1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [7] * 4
    assert build_lm.estimate_discounts(counts) == pytest.approx((0.5, 1.1, 3 - 4 / 3))
    assert build_lm.estimate_discounts([1, 1, 2, 4]) is None  # no n-gram seen 3 times


@pytest.fixture
def corpus() -> list[str]:
    rng = np.random.default_rng(0)
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "to", "mat", "hat", "big", "small"]
    zipf = 1 / np.arange(1, len(words) + 1)
    return [
        " ".join(rng.choice(words, size=rng.integers(2, 9), p=zipf / zipf.sum()))
        for _ in range(400)
    ]


def test_trigram_probabilities_sum_to_one_over_the_vocabulary(tmp_path, corpus):
    _, _, model = build(tmp_path, corpus, "--order", "3")
    vocabulary = [g[0] for g in model if len(g) == 1 and g[0] != "<s>"]
    assert "<unk>" in vocabulary and "</s>" in vocabulary
    bigram = next(g for g in model if len(g) == 2 and g[0] != "<s>")
    trigram_context = next(g[:2] for g in model if len(g) == 3)
    for context in [
        (),
        ("<s>",),
        ("cat",),
        bigram,
        trigram_context,
        ("<s>", "the"),
        ("mat", "zzz"),
    ]:
        total = sum(probability(model, context, w) for w in vocabulary)
        assert total == pytest.approx(1.0, abs=2e-5), context


def test_the_lm_loads_in_flashlight_kenlm_with_the_same_scores(tmp_path, corpus):
    arpa, _, model = build(tmp_path, corpus, "--order", "3")
    words = ["<unk>", "the", "cat", "sat"]
    lm = KenLM(str(arpa), Dictionary(words))
    state, score = lm.score(lm.start(False), 1)
    assert score == pytest.approx(model[("<s>", "the")][0], abs=1e-5)
    state, score = lm.score(state, 2)
    assert score == pytest.approx(math.log10(probability(model, ("<s>", "the"), "cat")), abs=1e-5)
    _, score = lm.finish(lm.score(state, 3)[0])
    assert score == pytest.approx(math.log10(probability(model, ("cat", "sat"), "</s>")), abs=1e-5)


def test_unigram_request_writes_order_two_without_bigrams(tmp_path, corpus):
    arpa, declared, model = build(tmp_path, corpus, "--order", "1")
    assert declared[2] == 0 and set(declared) == {1, 2}
    assert "\\2-grams:" in arpa.read_text()
    lm = KenLM(str(arpa), Dictionary(["<unk>", "cat"]))  # KenLM refuses unigram-only files
    _, score = lm.score(lm.start(False), 1)
    assert score == pytest.approx(model[("cat",)][0], abs=1e-5)


def test_empty_corpus_and_bad_arguments_are_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert build_lm.main([str(empty), str(tmp_path / "x.arpa")]) == 1
    with pytest.raises(ValueError, match="order"):
        build_lm.estimate([["a"]], order=0)
    with pytest.raises(ValueError, match="discount"):
        build_lm.estimate([["a"]], discount=1.5)


# --------------------------------------------------------------------------------------------------
# utils/download_lm.py


@pytest.fixture
def mirror(tmp_path):
    """A local stand-in for OpenSLR resource 11 with three of its files."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in ("3-gram-pruned-3e-7", "lexicon", "vocab"):
        (folder / download_lm.FILES[name]).write_bytes(np.random.bytes(3 << 20))
    return folder


def test_download_records_checksums_then_verifies_and_resumes(tmp_path, mirror):
    dest = tmp_path / "lm"
    names = ["3-gram-pruned-3e-7", "lexicon"]
    assert download_lm.main([str(dest), *names, "--mirror", mirror.as_uri(), "--no-progress"]) == 0
    arpa = dest / "3-gram.pruned.3e-7.arpa.gz"
    assert arpa.read_bytes() == (mirror / arpa.name).read_bytes()
    record = json.loads((dest / f"{arpa.name}.checksum.json").read_text())
    assert record["size"] == 3 << 20 and len(record["sha256"]) == 64

    # An interrupted download continues from the bytes on disk.
    vocab = dest / "librispeech-vocab.txt"
    data = (mirror / vocab.name).read_bytes()
    (dest / f"{vocab.name}.part").write_bytes(data[:12345])
    assert download_lm.main([str(dest), "vocab", "--mirror", mirror.as_uri(), "--no-progress"]) == 0
    assert vocab.read_bytes() == data

    # A file that changed since its record is refused and moved aside.
    arpa.write_bytes(b"corrupt")
    assert download_lm.main([str(dest), *names, "--mirror", mirror.as_uri(), "--no-progress"]) == 1
    assert (dest / f"{arpa.name}.bad").read_bytes() == b"corrupt" and not arpa.exists()


def test_missing_file_fails_and_default_selection(tmp_path, mirror):
    assert download_lm.DEFAULT == ("3-gram", "4-gram", "lexicon")
    with pytest.raises(SystemExit):
        download_lm.main([str(tmp_path / "lm"), "5-gram"])
    args = [str(tmp_path / "lm"), "4-gram", "--mirror", mirror.as_uri(), "--no-progress"]
    assert download_lm.main(args) == 1


def test_download_launcher(tmp_path, mirror):
    run = run_launcher(
        "download_lm.sh", "lexicon", "--no-progress",
        env={"LM_DIR": str(tmp_path / "lm"), "MIRROR": mirror.as_uri()},
    )  # fmt: skip
    assert "utils/download_lm.py" in run.stdout
    assert (tmp_path / "lm" / "librispeech-lexicon.txt").is_file()
