"""Decoders (jasper/decoding.py) and LM tuning (utils/tune_lm.py) on synthetic log-probs.

Log-probs are made to order: words at known encoder frames, each letter a peak of known posterior
on one frame, blanks elsewhere, one separator frame between words; a little noise elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.metrics import word_error_rate
from jasper import decoding
from jasper.decoding import (
    BeamDecoder,
    BeamSearchUnavailableError,
    GreedyDecoder,
    Hypothesis,
    build_decoder,
    greedy_texts,
    unpad,
)
from tests.conftest import REPO, file_entry, manifest_entry, run_launcher, write_manifest
from utils import build_lm, tune_lm

LABELS = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]
K = len(LABELS) + 1
BLANK = K - 1
FRAME = 0.02  # seconds per encoder frame


def posteriors(letter: str, p: float, alternative: str | None = None, q: float = 0.0) -> np.ndarray:
    """One frame: ``letter`` (a label, or None for the blank) with probability ``p``, optionally
    ``alternative`` with ``q``, the rest spread evenly over the other classes."""
    row = np.zeros(K)
    picked = {BLANK if letter is None else LABELS.index(letter): p}
    if alternative is not None:
        picked[LABELS.index(alternative)] = q
    row[:] = (1 - sum(picked.values())) / (K - len(picked))
    for i, value in picked.items():
        row[i] = value
    return row


def spoken(
    spans: list[tuple[str, int, int]], n_frames: int, p: float = 0.9, confusions: dict | None = None
) -> np.ndarray:
    """Log-probs (n_frames, K) of words at ``(word, first frame, end frame)``: letters on evenly
    spread frames from the first frame to the last, a separator frame midway between words.
    ``confusions[(word_index, letter_index)] = (letter, p, alternative, q)`` overrides a letter."""
    rows = [posteriors(None, p) for _ in range(n_frames)]
    for w, (word, first, end) in enumerate(spans):
        frames = np.linspace(first, end - 1, len(word)).round().astype(int)
        for i, (letter, t) in enumerate(zip(word, frames, strict=True)):
            rows[t] = posteriors(letter, p)
            if confusions and (w, i) in confusions:
                rows[t] = posteriors(*confusions[w, i])
        if w + 1 < len(spans):
            rows[(end + spans[w + 1][1]) // 2] = posteriors(" ", p)
    return np.log(np.stack(rows)).astype(np.float32)


def spans_for(words: list[str], first: int = 10, per_letter: int = 4, gap: int = 15) -> list:
    spans, t = [], first
    for word in words:
        spans.append((word, t, t + per_letter * len(word)))
        t += per_letter * len(word) + gap
    return spans


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> str:
    """A trigram LM of a small corpus in which "the cat sat" is common and "cet" never occurs;
    upper case like LibriSpeech's LMs (the labels are lower case)."""
    path = tmp_path_factory.mktemp("lm") / "cat.arpa"
    sentences = ["the cat sat on the mat", "the cat sat", "a dog sat on the mat", "the dog ran",
                 "the cat ran to the dog", "a cat sat on a mat"] * 3  # fmt: skip
    build_lm.write_arpa(build_lm.estimate([s.upper().split() for s in sentences], 3), path)
    return str(path)


# --------------------------------------------------------------------------------------------------
# Greedy


def test_greedy_decoder_text_is_exactly_greedy_texts():
    scores = 3 * torch.randn(6, 80, K)
    scores[..., 0] += 3  # many separators: runs of them, leading and trailing ones
    log_probs = torch.log_softmax(scores, dim=-1)
    lens = torch.tensor([80, 75, 40, 1, 0, 63])
    texts = greedy_texts(log_probs, lens, LABELS)
    decoder = GreedyDecoder(LABELS)
    hypotheses = decoder.decode_batch(unpad(log_probs, lens))
    assert [h.text for h in hypotheses] == texts
    assert any("  " in t or t.startswith(" ") for t in texts)  # raw spacing kept, as greedy_texts
    for h in hypotheses:
        assert [w.word for w in h.words] == h.text.split()


def test_build_decoder_picks_by_name():
    assert isinstance(build_decoder("greedy", LABELS), GreedyDecoder)
    assert isinstance(build_decoder("beam", LABELS, beam_width=4), BeamDecoder)
    with pytest.raises(ValueError, match="unknown decoder 'viterbi'"):
        build_decoder("viterbi", LABELS)


def test_wrong_number_of_classes_is_an_error():
    with pytest.raises(ValueError, match=r"\(T, 29\)"):
        GreedyDecoder(LABELS).decode(np.zeros((5, 28), np.float32))


# --------------------------------------------------------------------------------------------------
# Beam search without LM


def test_beam_without_lm_is_never_worse_than_greedy():
    rng = np.random.default_rng(0)
    words = ["go", "stop", "left", "right", "up", "down", "yes", "no"]
    references, greedy, beam = [], [], []
    decoder = BeamDecoder(LABELS, beam_width=16)
    for _ in range(20):
        sentence = list(rng.choice(words, size=4))
        spans = spans_for(sentence)
        log_probs = spoken(spans, spans[-1][2] + 10)
        # Every other word's first letter spread over two frames that the blank wins one by one
        # (greedy loses it), then noise.
        for word, first, _ in spans[::2]:
            log_probs[first] = log_probs[first + 1] = np.log(posteriors(None, 0.5, word[0], 0.45))
        noisy = log_probs + rng.normal(0, 0.5, log_probs.shape).astype(np.float32)
        log_probs = torch.log_softmax(torch.from_numpy(noisy), dim=-1)
        references.append(" ".join(sentence))
        greedy.append(GreedyDecoder(LABELS).decode(log_probs).text)
        beam.append(decoder.decode(log_probs).text)
        errors = [word_error_rate([h[-1]], references[-1:])[1] for h in (beam, greedy)]
        assert errors[0] <= errors[1], (references[-1], beam[-1], greedy[-1])
    assert word_error_rate(beam, references)[0] < word_error_rate(greedy, references)[0]


def test_beam_sums_the_alignments_that_greedy_splits():
    # Two frames, each 0.5 blank and 0.45 "a": greedy reads nothing, yet P("a") = 0.65 > P("").
    frame = posteriors(None, 0.5, "a", 0.45)
    log_probs = np.log(np.stack([frame, frame])).astype(np.float32)
    assert GreedyDecoder(LABELS).decode(log_probs).text == ""
    assert BeamDecoder(LABELS).decode(log_probs).text == "a"


def test_empty_input_gives_empty_hypotheses(lm):
    empty = np.zeros((0, K), np.float32)
    for decoder in (GreedyDecoder(LABELS), BeamDecoder(LABELS), BeamDecoder(LABELS, lm=lm)):
        assert decoder.decode(empty) == Hypothesis("")


# --------------------------------------------------------------------------------------------------
# Beam search with an LM, lexicons, hotwords


def cet(q: float = 0.1) -> np.ndarray:
    """ "the cat sat" whose "a" in "cat" looks like an "e" (0.85 against ``q``)."""
    spans = spans_for(["the", "cat", "sat"])
    return spoken(spans, spans[-1][2] + 10, confusions={(1, 1): ("e", 0.85, "a", q)})


def test_lm_with_its_lexicon_fixes_a_misspelling(lm):
    log_probs = cet(q=0.01)
    assert GreedyDecoder(LABELS).decode(log_probs).text.split() == ["the", "cet", "sat"]
    assert BeamDecoder(LABELS).decode(log_probs).text == "the cet sat"
    assert BeamDecoder(LABELS, lm=lm, alpha=0.5, beta=1.0).decode(log_probs).text == "the cat sat"


def test_lm_without_lexicon_weighs_letters_against_words(lm):
    # "cet" is only an <unk> to the LM: a strong enough LM weight prefers the known word.
    log_probs = cet(q=0.1)
    free = BeamDecoder(LABELS, lm=lm, lexicon=False, alpha=0.0, beta=0.0)
    assert free.decode(log_probs).text == "the cet sat"
    assert free.with_options(alpha=2.0).decode(log_probs).text == "the cat sat"


def test_lexicon_file_restricts_words_without_lm(tmp_path):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("THE\tDH AH0\nCAT\tK AE1 T\nSAT\tS AE1 T\nSAT\tS AE T\n")  # first column
    assert BeamDecoder(LABELS, lexicon=lexicon).decode(cet(q=0.01)).text == "the cat sat"


def test_hotwords_are_boosted_with_and_without_lexicon(lm):
    log_probs = cet(q=0.1)
    assert BeamDecoder(LABELS, hotwords=["cat"], hotword_weight=0.0).decode(log_probs).text == (
        "the cet sat"
    )
    assert BeamDecoder(LABELS, hotwords=["cat"]).decode(log_probs).text == "the cat sat"
    # With the LM's lexicon, a hotword the LM never saw becomes speakable.
    hot = BeamDecoder(LABELS, lm=lm, alpha=0.5, hotwords=["cet"], hotword_weight=5.0)
    assert hot.decode(log_probs).text == "the cet sat"
    with pytest.raises(ValueError, match="hotword 'c@t'"):
        BeamDecoder(LABELS, hotwords=["c@t"])


def test_kenlm_binary_needs_a_word_list(tmp_path):
    binary = tmp_path / "lm.bin"
    binary.write_bytes(decoding.KENLM_BINARY_MAGIC + b"http://kheafield.com/code format version")
    with pytest.raises(ValueError, match="holds no readable word list"):
        BeamDecoder(LABELS, lm=binary)


def test_decode_batch_in_worker_processes_matches_one_process(lm):
    rng = np.random.default_rng(1)
    batch = [cet(q) for q in (0.01, 0.1)] + [
        torch.log_softmax(torch.from_numpy(rng.normal(size=(50, K)) * 3), -1) for _ in range(4)
    ]
    serial = BeamDecoder(LABELS, lm=lm, beam_width=8)
    with serial.with_options(num_workers=2) as parallel:
        assert parallel.decode_batch(batch) == serial.decode_batch(batch)


def test_missing_flashlight_names_the_requirements_file(monkeypatch):
    monkeypatch.setattr(decoding, "fl", None)
    with pytest.raises(BeamSearchUnavailableError, match=r"pip install -r requirements-lm\.txt"):
        BeamDecoder(LABELS)
    assert issubclass(BeamSearchUnavailableError, ImportError)


def test_without_flashlight_the_module_imports_and_greedy_works():
    code = (
        "import sys; sys.modules['flashlight'] = None\n"  # makes `import flashlight...` fail
        "import numpy as np\n"
        "from jasper.decoding import GreedyDecoder, BeamDecoder\n"
        "labels = [' ', *'abcdefghijklmnopqrstuvwxyz', \"'\"]\n"
        "print(repr(GreedyDecoder(labels).decode(np.zeros((3, 29), np.float32)).text))\n"
        "try:\n    BeamDecoder(labels)\nexcept ImportError as e:\n    print(e)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-1].endswith("pip install -r requirements-lm.txt")


# --------------------------------------------------------------------------------------------------
# Timestamps and confidence


@pytest.mark.parametrize("kind", ["greedy", "beam", "beam+lm"])
def test_word_times_lie_within_60_ms_of_the_true_spans(kind, lm):
    spans = [("the", 8, 20), ("cat", 45, 60), ("sat", 61, 90), ("on", 140, 150)]
    log_probs = spoken(spans, 170)
    kwargs = {"beam": {}, "beam+lm": {"lm": lm}}.get(kind)
    decoder = GreedyDecoder(LABELS) if kwargs is None else BeamDecoder(LABELS, **kwargs)
    words = decoder.decode(torch.from_numpy(log_probs)).words
    assert [w.word for w in words] == [word for word, _, _ in spans]
    for w, (_, first, end) in zip(words, spans, strict=True):
        assert abs(w.start - first * FRAME) <= 0.06 and abs(w.end - end * FRAME) <= 0.06, w
        assert w.start < w.end


def test_leading_padding_is_subtracted_from_times():
    spans = [("go", 8, 16), ("up", 30, 40)]
    plain = GreedyDecoder(LABELS).decode(spoken(spans, 50)).words
    shifted = GreedyDecoder(LABELS, offset_frames=8).decode(spoken(spans, 50)).words
    assert [w.start for w in shifted] == pytest.approx([w.start - 0.16 for w in plain])
    assert shifted[0].start == 0.0


def test_confidence_is_the_least_sure_letter():
    spans = [("yes", 5, 17), ("no", 30, 38)]
    confusions = {(0, 1): ("e", 0.55, "a", 0.4)}  # one doubtful letter in "yes"
    log_probs = spoken(spans, 45, p=0.95, confusions=confusions)
    for decoder in (GreedyDecoder(LABELS), BeamDecoder(LABELS)):
        yes, no = decoder.decode(log_probs).words
        assert yes.confidence == pytest.approx(0.55, abs=1e-3)
        assert no.confidence == pytest.approx(0.95, abs=1e-3)


# --------------------------------------------------------------------------------------------------
# utils/tune_lm.py


@pytest.fixture
def tuning_data(tmp_path):
    """Saved log-probs of three utterances (as inference.py --save_logits writes them) and the
    manifest with their transcripts."""
    sentences = ["the cat sat", "the cat sat on the mat", "the dog ran"]
    names, log_probs, entries = [], [], []
    for i, sentence in enumerate(sentences):
        spans = spans_for(sentence.split())
        confusions = {(1, 1): ("e", 0.85, "a", 0.1)} if "cat" in sentence else {}
        log_probs.append(torch.from_numpy(spoken(spans, spans[-1][2] + 10, 0.9, confusions)))
        names.append(f"dev/utt{i}.wav")
        entries.append(manifest_entry(sentence.upper(), [file_entry(names[-1], 16000)]))
    logits = tmp_path / "dev.logits.pt"
    torch.save({"names": names, "log_probs": log_probs, "labels": LABELS, "blank": K - 1}, logits)
    return logits, write_manifest(tmp_path / "dev.json", entries)


def test_tune_lm_finds_weights_that_beat_greedy(tmp_path, lm, tuning_data):
    logits, manifest = tuning_data
    out = tmp_path / "tuning"
    code = tune_lm.main([
        str(logits), "--manifests", str(manifest), "--dataset_dir", str(tmp_path), "--lm", lm,
        "--no-use_lexicon", "--alphas", "0", "2", "--betas", "0", "1", "--beam_widths", "4", "16",
        "--num_workers", "1", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    table = json.loads(out.with_name("tuning.json").read_text())
    assert table["utterances"] == 3
    assert table["greedy"]["errors"] == 2  # "cet" twice
    assert len(table["results"]) == 2 * 2 * 2
    assert table["best"]["wer"] == 0.0 and table["best"]["alpha"] == 2.0
    assert all(r["wer"] > 0 for r in table["results"] if r["alpha"] == 0)
    markdown = out.with_name("tuning.md").read_text()
    assert "| greedy |" in markdown and "| **2** |" in markdown


def test_tune_lm_reads_prediction_style_references(tmp_path, lm, tuning_data):
    logits, _ = tuning_data
    references = tmp_path / "refs.tsv"
    references.write_text("dev/utt0.wav\tthe cat sat\ndev/utt1.wav\tthe cat sat on the mat\n")
    args = [str(logits), "--references", str(references), "--lm", lm, "--out", str(tmp_path / "t")]
    assert tune_lm.main(args) == 1  # utt2 has no reference
    with references.open("a") as f:
        f.write("dev/utt2.wav\tthe dog ran\n")
    assert tune_lm.main([*args, "--alphas", "0.5", "--betas", "1", "--num_workers", "2"]) == 0


def test_tune_lm_launcher(tmp_path, lm, tuning_data):
    logits, manifest = tuning_data
    run = run_launcher(
        "tune_lm.sh",
        env={"DATA_DIR": str(tmp_path), "VAL_MANIFESTS": str(manifest), "LOGITS_FILE": str(logits),
             "LM": lm, "ALPHAS": "0.5", "BETAS": "0 1", "NUM_WORKERS": "1",
             "OUTPUT_PREFIX": str(tmp_path / "out" / "dev.lm_tuning")},
    )  # fmt: skip
    assert "utils/tune_lm.py" in run.stdout and "best: --beam_width 32 --alpha 0.5" in run.stdout
    assert (tmp_path / "out" / "dev.lm_tuning.md").is_file()
