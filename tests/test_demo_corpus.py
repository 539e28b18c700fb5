"""The offline demo corpus of the quick start (utils/make_demo_corpus.py, utils/demo_grammar.py):
layout, audio, transcripts, the grammar, held-out test voices, disjoint sentences, determinism and
idempotence. Tiny corpora: a few seconds."""

import json
import re

import numpy as np
import pytest
import soundfile as sf

from utils import demo_grammar
from utils import make_demo_corpus as mdc

SIZES = dict(seed=3, train=12, dev=4, test=5, vocab=300)
SPLITS = ("train-clean-100", "dev-clean", "test-clean")
FLAC = re.compile(r"^(\d+)-(\d+)-(\d{4})\.flac$")


def _make(out, **kw):
    args = {**SIZES, "jobs": 2, "progress": False, "verbose": False, **kw}
    return mdc.make_demo_corpus(out, **args)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    info = _make(out)
    return out, info


def _transcripts(split_dir):
    """{utt_id: text} over every trans.txt of a split, checking each file's name and lines."""
    texts = {}
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        spk, chapter = trans.parent.parent.name, trans.parent.name
        assert trans.name == f"{spk}-{chapter}.trans.txt"
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt_id, text = line.split(" ", 1)
            assert utt_id.startswith(f"{spk}-{chapter}-")
            texts[utt_id] = text
    return texts


def _audio(split_dir):
    return {p.stem: sf.read(p, dtype="int16")[0] for p in sorted(split_dir.glob("*/*/*.flac"))}


def test_word_list():
    words = mdc.load_words()
    assert 950 <= len(words) <= 1100
    assert len(set(words)) == len(words)
    assert all(re.fullmatch(r"[a-z']+", w) for w in words)
    assert {w for w in words if len(w) == 1} == {"a", "i"}
    for dropped in ("mr", "dr", "st", "tv", "uk", "ok", "etc", "fuck", "shit"):
        assert dropped not in words
    assert mdc.load_words(300) == words[:300] and words[0] == "the"


def test_layout_and_audio(corpus):
    out, info = corpus
    assert not info["skipped"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(SPLITS)
    counts = {}
    for split in SPLITS:
        split_dir = out / split
        flacs = sorted(split_dir.glob("*/*/*.flac"))
        counts[split] = len(flacs)
        for p in flacs:
            m = FLAC.match(p.name)
            assert m, p.name
            assert (m.group(1), m.group(2)) == (p.parent.parent.name, p.parent.name)
            meta = sf.info(p)
            assert (meta.samplerate, meta.channels, meta.format, meta.subtype) == (
                16000,
                1,
                "FLAC",
                "PCM_16",
            )
            assert 0.5 < meta.duration < 15
            x = sf.read(p, dtype="int16")[0]
            assert np.abs(x.astype(np.int32)).max() > 1000  # speech, not silence
        texts = _transcripts(split_dir)
        assert sorted(texts) == [p.stem for p in flacs]  # one line per file, one file per line
    assert counts == {"train-clean-100": 12, "dev-clean": 4, "test-clean": 5 * len(mdc.TEST_VOICES)}
    marker = json.loads((out / ".demo_corpus.json").read_text())
    assert {s: v["utterances"] for s, v in marker["splits"].items()} == counts
    assert all(v["hours"] > 0 for v in marker["splits"].values())


def test_transcripts_upper_case_from_vocabulary(corpus):
    out, _ = corpus
    vocab = {w.upper() for w in mdc.load_words(SIZES["vocab"])}
    for split in SPLITS:
        for text in _transcripts(out / split).values():
            assert text == text.upper() and text == text.strip()
            words = text.split(" ")
            assert 4 <= len(words) <= 12
            assert set(words) <= vocab


def test_test_voices_never_in_training(corpus):
    out, info = corpus
    assert len(mdc.TEST_VOICES) == 3 and not set(mdc.TEST_VOICES) & set(mdc.TRAIN_VOICES)
    assert info["voices"]["test"] == list(mdc.TEST_VOICES)
    speakers = {s: {p.name for p in (out / s).iterdir() if p.is_dir()} for s in SPLITS}
    test_ids = {mdc.speaker_id(v) for v in mdc.TEST_VOICES}
    assert speakers["test-clean"] == {str(i) for i in test_ids} and len(test_ids) == 3
    assert not speakers["test-clean"] & (speakers["train-clean-100"] | speakers["dev-clean"])
    train_ids = {mdc.speaker_id(v) for v in mdc.TRAIN_VOICES}
    assert len(train_ids) == len(mdc.TRAIN_VOICES) and not test_ids & train_ids
    assert {int(s) for s in speakers["train-clean-100"] | speakers["dev-clean"]} <= train_ids
    listing = (out / "SPEAKERS.TXT").read_text()
    for voice in mdc.TEST_VOICES:  # --test utterances of each test voice
        assert re.search(
            rf"^{mdc.speaker_id(voice)}\s*\|test-clean\s*\|{re.escape(voice)}$", listing, re.M
        )
        ids = [
            u for u in _transcripts(out / "test-clean") if u.startswith(f"{mdc.speaker_id(voice)}-")
        ]
        assert len(ids) == SIZES["test"]
    with pytest.raises(ValueError, match="training voices"):
        mdc.plan_corpus(0, 1, 1, 1, 300, test_voices=("en-us+f4", "en-us+m3"))


def test_grammar_sentences_have_structure():
    """Every word of the grammar is one of the 300 most frequent; its sentences repeat word pairs
    (what an n-gram LM learns), random orders of the same words hardly do."""
    assert demo_grammar.vocabulary() <= set(mdc.load_words(300))
    rng = np.random.default_rng(0)
    grammar = mdc._sentences(rng, 2000, None, set(), "train", "grammar")
    words = sorted(demo_grammar.vocabulary())
    random = mdc._sentences(rng, 2000, words, set(), "train", "random")

    def distinct_bigrams(sentences):
        return len({p for s in sentences for p in zip(s.split(), s.split()[1:])})

    assert all(4 <= len(s.split()) <= 12 for s in grammar)
    assert "they said that" in " ".join(grammar) or "i think that" in " ".join(grammar)
    assert " an " in " ".join(grammar) and " a old " not in " ".join(grammar)
    assert distinct_bigrams(grammar) < distinct_bigrams(random) / 3


def test_dev_test_sentences_not_in_train(corpus):
    out, _ = corpus
    sentences = {s: list(_transcripts(out / s).values()) for s in SPLITS}
    train = set(sentences["train-clean-100"])
    for s in ("dev-clean", "test-clean"):
        assert not set(sentences[s]) & train
    assert not set(sentences["dev-clean"]) & set(sentences["test-clean"])
    # and on a plan big enough for collisions to be likely with only 20 words
    plan = mdc.plan_corpus(0, 3000, 300, 300, 20, sentences="random")
    by_split = {}
    for split, _, _, _, utts in plan:
        by_split.setdefault(split, []).extend(text for _, text, _, _ in utts)
    assert not set(by_split["dev-clean"]) & set(by_split["train-clean-100"])
    assert not set(by_split["test-clean"]) & set(by_split["train-clean-100"])


def test_deterministic(corpus, tmp_path):
    out, _ = corpus
    # same seed, another folder, one worker instead of two: same transcripts and samples
    again = tmp_path / "again"
    _make(again, jobs=1)
    for split in SPLITS:
        a = {p.relative_to(out): p.read_bytes() for p in (out / split).glob("*/*/*.trans.txt")}
        b = {p.relative_to(again): p.read_bytes() for p in (again / split).glob("*/*/*.trans.txt")}
        assert a == b
        xa, xb = _audio(out / split), _audio(again / split)
        assert xa.keys() == xb.keys()
        for k in xa:
            np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)
    # another seed: other sentences
    other = mdc.plan_corpus(SIZES["seed"] + 1, 12, 4, 5, 300)
    assert [u[1] for c in other for u in c[4]] != [
        u[1]
        for c in mdc.plan_corpus(**{k: SIZES[k] for k in ("seed", "train", "dev", "test", "vocab")})
        for u in c[4]
    ]


def test_second_run_skips(corpus):
    out, _ = corpus
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    info = _make(out)
    assert info["skipped"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_regenerates_on_other_arguments_or_missing_marker(tmp_path):
    out = tmp_path / "c"
    _make(out, train=3, dev=1, test=1)
    (out / "librispeech-dev-clean-wav.json").write_text(
        "[]"
    )  # derived by preprocessing: stale after
    (out / "dev-clean-wav").mkdir()
    info = _make(out, train=4, dev=1, test=1)
    assert not info["skipped"]
    assert len(list((out / "train-clean-100").glob("*/*/*.flac"))) == 4
    assert (
        not (out / "librispeech-dev-clean-wav.json").exists()
        and not (out / "dev-clean-wav").exists()
    )
    (out / ".demo_corpus.json").unlink()  # an interrupted run leaves no marker
    assert not _make(out, train=4, dev=1, test=1)["skipped"]
    assert _make(out, train=4, dev=1, test=1)["skipped"]


def test_never_deletes_a_foreign_split(tmp_path):
    real = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    real.mkdir(parents=True)
    (real / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n")
    with pytest.raises(RuntimeError, match="refusing to delete"):
        _make(tmp_path / "LibriSpeech", train=2, dev=1, test=1)
    assert (real / "84-121123.trans.txt").exists()
    # a LibriSpeech root without our split names: its SPEAKERS.TXT is not ours either
    other = tmp_path / "other"
    (other / "train-other-500").mkdir(parents=True)
    (other / "SPEAKERS.TXT").write_text("; Some speakers\n")
    with pytest.raises(RuntimeError, match="refusing to delete"):
        _make(other, train=2, dev=1, test=1)
    assert (other / "SPEAKERS.TXT").read_text() == "; Some speakers\n"
    assert not (other / "dev-clean").exists()


def test_cli(tmp_path, capsys):
    args = ["--out", str(tmp_path / "cli"), "--train", "2", "--dev", "1", "--test", "1"]
    mdc.main([*args, "--test-voices", "en-us+f4", "en-us+klatt4", "--jobs", "1", "--no-progress"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("demo corpus ") and "train-clean-100 2 utts" in line
    assert "test-clean 2 utts" in line  # one utterance of each test voice
    mdc.main([*args, "--test-voices", "en-us+f4", "en-us+klatt4", "--no-progress"])
    assert "skipped" in capsys.readouterr().out


def test_cli_refuses_a_training_voice_for_test_in_one_line(tmp_path, capsys):
    args = ["--out", str(tmp_path / "c"), "--train", "1", "--dev", "1", "--test", "1"]
    assert mdc.main([*args, "--test-voices", "en-us+m3", "--no-progress"]) == 2
    assert capsys.readouterr().err == "error: test voice 'en-us+m3' is one of the training voices\n"
    assert not (tmp_path / "c").exists()
