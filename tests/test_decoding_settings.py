"""The decoding settings a checkpoint carries (jasper/decoding_settings.py): precedence (what the
user gives, else the checkpoint's, else upstream's), storage (atomic, LM path relative to the
checkpoint), `utils/tune_lm.py --checkpoint`, and their use by inference.py, evaluation.sh and
the transcription API -- so that `DECODER=beam bash scripts/evaluation.sh` on a tuned checkpoint
needs nothing else."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

import inference
from common.checkpoint import CheckpointError, load_checkpoint
from common.text import normalize
from jasper import config, decoding_settings
from jasper.decoding import BeamDecoder, GreedyDecoder
from jasper.transcribe import Transcriber
from tests.conftest import AUDIO, REFERENCE, REPO, recording_entry, run_launcher, write_manifest
from utils import tune_lm

SMALL = REFERENCE / "small_model"
SMALL_CKPT, SMALL_CONFIG = SMALL / "checkpoint.pt", SMALL / "config.yaml"
LABELLED = sorted((AUDIO / "librivox").glob("*.wav")) + [AUDIO / "goforward.wav"]
WER_LINE = re.compile(r"^WER (\d+\.\d+) % \((\d+) errors / (\d+) words, (\d+) utterances\)", re.M)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A copy of the reference checkpoint, a manifest of the labelled recordings, and a 3-gram LM
    of their transcripts."""
    root = tmp_path_factory.mktemp("settings")
    ckpt = root / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    shutil.copy(SMALL_CKPT, ckpt)
    entries = [recording_entry(p, AUDIO, p.with_suffix(".txt").read_text()) for p in LABELLED]
    manifest = write_manifest(root / "labelled.json", entries)
    labels = config.load(SMALL_CONFIG)["labels"]
    text = root / "lm.txt"
    text.write_text("".join(normalize(e["transcript"], labels) + "\n" for e in entries))
    lm = ckpt.parent / "lm" / "words.arpa"
    lm.parent.mkdir()
    build = subprocess.run(
        [sys.executable, "utils/build_lm.py", str(text), str(lm)], cwd=REPO, capture_output=True
    )
    assert build.returncode == 0, build.stderr
    return ckpt, manifest, lm


def test_given_wins_then_the_checkpoint_then_upstream():
    stored = {"decoder": "beam", "pad_leading": 0, "lm": "/x/lm.arpa", "lm_alpha": 0.9}
    settings, taken = decoding_settings.resolve({"lm_alpha": 2.0, "beam_width": None}, stored)
    assert settings == {"decoder": "beam", "pad_leading": 0, "beam_width": 32,
                        "lm": "/x/lm.arpa", "lm_alpha": 2.0, "lm_beta": 1.0}  # fmt: skip
    assert taken == ["decoder", "pad_leading", "lm"]
    settings, _ = decoding_settings.resolve({"lm": "none"}, stored)
    assert settings["lm"] is None  # LM=none: beam search without the checkpoint's LM
    assert decoding_settings.resolve({}, {})[0] == decoding_settings.DEFAULTS


def test_stored_atomically_with_the_lm_relative_to_the_checkpoint(setup, tmp_path):
    ckpt, _, lm = setup
    copy = tmp_path / "a" / "ckpt.pt"
    copy.parent.mkdir()
    shutil.copy(ckpt, copy)
    shutil.copytree(lm.parent, copy.parent / "lm")
    stored = decoding_settings.write(copy, {"decoder": "beam", "lm": str(copy.parent / "lm" / lm.name),
                                            "lm_alpha": 1.5, "pad_leading": 0})  # fmt: skip
    assert stored["lm"] == f"lm/{lm.name}"
    assert (
        load_checkpoint(copy)["state_dict"].keys()
        == load_checkpoint(SMALL_CKPT)["state_dict"].keys()
    )
    moved = tmp_path / "b"
    shutil.move(copy.parent, moved)  # the results folder moves as a whole
    settings = decoding_settings.read(moved / "ckpt.pt")
    assert settings["lm"] == str(moved / "lm" / lm.name) and settings["lm_alpha"] == 1.5
    decoding_settings.write(moved / "ckpt.pt", {"lm_beta": 2.0})  # merged with what is there
    assert decoding_settings.read(moved / "ckpt.pt")["lm_alpha"] == 1.5
    for bad, key in (({"decoder": "viterbi"}, "decoder"), ({"pad_leading": "16"}, "pad_leading"),
                     ({"alpha": 1.0}, "alpha")):  # fmt: skip
        with pytest.raises(CheckpointError, match=f"decoding.{key}"):
            decoding_settings.write(moved / "ckpt.pt", bad)
    assert decoding_settings.read(SMALL_CKPT) == {}  # upstream's checkpoints carry none


def _predictions(path):
    return dict(line.split("\t", 1) for line in path.read_text().splitlines())


def test_inference_takes_the_checkpoints_pad_leading_unless_given(setup, tmp_path, caplog):
    ckpt, _, _ = setup
    padded = tmp_path / "ckpt.pt"
    shutil.copy(ckpt, padded)
    decoding_settings.write(padded, {"pad_leading": 0})
    common = ["--model_config", str(SMALL_CONFIG), "--no-ema", "--num_workers", "0",
              "--output_dir", str(tmp_path), "--transcribe_wav", *map(str, LABELLED)]  # fmt: skip
    runs = {}
    for name, args in {
        "stored": ["--ckpt", str(padded)],
        "explicit 0": ["--ckpt", str(SMALL_CKPT), "--pad_leading", "0"],
        "upstream": ["--ckpt", str(SMALL_CKPT)],
        "given 16": ["--ckpt", str(padded), "--pad_leading", "16"],
    }.items():
        out = tmp_path / f"{name}.tsv"
        with caplog.at_level("INFO"):
            assert inference.main([*args, *common, "--save_predictions", str(out)]) == 0
        runs[name] = _predictions(out)
    assert "decoding: greedy, pad_leading 0 (pad_leading from the checkpoint)" in caplog.text
    assert runs["stored"] == runs["explicit 0"] and runs["given 16"] == runs["upstream"]
    assert runs["stored"] != runs["upstream"]  # the padding changes this model's transcripts


def test_tune_lm_stores_the_best_setting_and_evaluation_uses_it(setup, tmp_path):
    original, manifest, lm = setup
    ckpt = tmp_path / "run" / "checkpoint.pt"
    shutil.copytree(original.parent, ckpt.parent)
    lm = ckpt.parent / "lm" / lm.name
    env = {"DATA_DIR": str(AUDIO), "VAL_MANIFESTS": str(manifest), "MODEL_CONFIG": str(SMALL_CONFIG),
           "CHECKPOINT": str(ckpt), "OUTPUT_DIR": str(tmp_path), "BATCH_SIZE": "2",
           "NUM_WORKERS": "0", "EMA": "false", "CPU": "true"}  # fmt: skip
    logits = tmp_path / "dev.logits.pt"
    run = run_launcher("evaluation.sh", env={**env, "PAD_LEADING": "0", "LOGITS_FILE": str(logits)})
    assert run.returncode == 0, run.stderr
    assert tune_lm.load_logits(logits)[3] == 0  # the padding the log-probs were made with
    argv = [str(logits), "--manifests", str(manifest), "--dataset_dir", str(AUDIO), "--lm", str(lm),
            "--alphas", "0.5", "2.0", "--betas", "0", "1", "--num_workers", "1",
            "--out", str(tmp_path / "tuning"), "--checkpoint", str(ckpt)]  # fmt: skip
    assert tune_lm.main(argv) == 0
    best = json.loads((tmp_path / "tuning.json").read_text())["best"]
    assert load_checkpoint(ckpt)["decoding"]["lm"] == f"lm/{lm.name}"  # relative: the folder moves
    stored = decoding_settings.read(ckpt)
    assert stored == {"decoder": "beam", "beam_width": best["beam_width"], "lm": str(lm),
                      "lm_alpha": best["alpha"], "lm_beta": best["beta"], "pad_leading": 0}  # fmt: skip

    def wer(extra):
        run = run_launcher("evaluation.sh", env={**env, **extra})
        assert run.returncode == 0, run.stderr
        return WER_LINE.search(run.stdout).groups(), run.stdout + run.stderr

    tuned, log = wer({})  # nothing but the checkpoint: beam search with its LM
    assert "decoder, pad_leading, beam_width, lm, lm_alpha, lm_beta from the checkpoint" in log
    assert float(tuned[0]) == pytest.approx(best["wer"], abs=1e-3)
    explicit, _ = wer({"DECODER": "beam", "LM": str(lm), "LM_ALPHA": str(best["alpha"]),
                       "LM_BETA": str(best["beta"]), "PAD_LEADING": "0"})  # fmt: skip
    assert wer({"DECODER": "beam"})[0] == tuned == explicit
    greedy, log = wer({"DECODER": "greedy"})
    assert "decoding: greedy, pad_leading 0" in log
    no_lm, log = wer({"LM": "none"})
    assert "no LM" in log and no_lm[2:] == greedy[2:]


def test_the_transcription_api_decodes_as_the_checkpoint_says(setup, tmp_path):
    ckpt, _, lm = setup
    tuned = tmp_path / "ckpt.pt"
    shutil.copy(ckpt, tuned)
    decoding_settings.write(tuned, {"decoder": "beam", "lm": str(lm), "pad_leading": 0})
    t = Transcriber.from_checkpoint(tuned, SMALL_CONFIG, device="cpu")
    assert t.pad_leading == 0 and isinstance(t.decoder, BeamDecoder)
    greedy = Transcriber.from_checkpoint(tuned, SMALL_CONFIG, device="cpu",
                                         decoding={"decoder": "greedy"}, pad_leading=16)  # fmt: skip
    assert greedy.pad_leading == 16 and isinstance(greedy.decoder, GreedyDecoder)
    words = set(lm.read_text().split("\\1-grams:")[1].split("\\2-grams:")[0].split())
    text = t.transcribe_file(LABELLED[0]).text
    assert set(text.split()) <= {w.lower() for w in words}  # the lexicon: the LM's words only


def test_a_missing_stored_lm_is_one_clear_line(setup, tmp_path, capsys):
    """A checkpoint copied without its LM: one line naming the LM and what to do, before any
    model is loaded; LM=none still decodes by beam search without it."""
    ckpt, _, lm = setup
    alone = tmp_path / "ckpt.pt"
    shutil.copy(ckpt, alone)
    decoding_settings.write(alone, {"decoder": "beam", "lm": str(tmp_path / "lm" / lm.name)})
    args = ["--ckpt", str(alone), "--model_config", str(SMALL_CONFIG), "--num_workers", "0",
            "--output_dir", str(tmp_path), "--transcribe_wav", str(LABELLED[0])]  # fmt: skip
    assert inference.main(args) == 2
    err = capsys.readouterr().err
    assert f"LM not found: {tmp_path / 'lm' / lm.name}" in err and "LM=none" in err
    assert err.count("\n") == 1
    assert inference.main([*args, "--lm", "none"]) == 0


def test_tune_lm_refuses_a_missing_checkpoint_before_searching(tmp_path, capsys):
    argv = [str(tmp_path / "no.logits.pt"), "--references", str(tmp_path / "refs.tsv"),
            "--lm", str(tmp_path / "lm.arpa"), "--out", str(tmp_path / "t"),
            "--checkpoint", str(tmp_path / "missing.pt")]  # fmt: skip
    assert tune_lm.main(argv) == 2
    assert (
        capsys.readouterr().err == f"error: --checkpoint {tmp_path / 'missing.pt'}: no such file\n"
    )
