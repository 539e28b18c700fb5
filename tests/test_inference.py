"""inference.py, jasper.transcribe, jasper.prepare and the inference launchers, on the CPU.

The reference checkpoint (tests/data/reference/small_model, upstream's format, no config inside) is
not trained on speech: its transcripts are gibberish, but deterministic, which is all that
comparisons between code paths need.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from torch import nn

import inference
from common.audio import load_audio
from common.checkpoint import CheckpointError
from common.features import FilterbankFeatures
from common.latency import Latencies
from common.logger import LATENCY_RATIOS, LATENCY_STAGES, latency_metric
from common.metrics import char_error_rate, ctc_greedy_text, word_error_rate
from common.text import normalize
from jasper import config
from jasper.model import MaskedConv1d, greedy_decode
from jasper.prepare import FFTConv1d, SpeedOptions, fold_batchnorm, masked_convs, prepare
from jasper.transcribe import Transcriber, load_model
from tests.conftest import (
    AUDIO,
    REFERENCE,
    REPO,
    TINY_CONFIG,
    recording_entry,
    run_launcher,
    write_manifest,
)

SMALL = REFERENCE / "small_model"
SMALL_CKPT, SMALL_CONFIG = SMALL / "checkpoint.pt", SMALL / "config.yaml"
LABELLED = sorted((AUDIO / "librivox").glob("*.wav")) + [AUDIO / "goforward.wav"]
UNLABELLED = sorted(AUDIO.glob("example*.wav")) + [AUDIO / "keynote.wav"]


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> tuple[Path, Path]:
    """A manifest of the recordings with known transcripts, and one of those without."""
    root = tmp_path_factory.mktemp("manifests")
    labelled = [
        recording_entry(p, AUDIO, p.with_suffix(".txt").read_text().strip()) for p in LABELLED
    ]
    unlabelled = [recording_entry(p, AUDIO, None) for p in UNLABELLED]
    return (
        write_manifest(root / "labelled.json", labelled),
        write_manifest(root / "unlabelled.json", unlabelled),
    )


@pytest.fixture(scope="module")
def small():
    """The plain reference model (raw weights) and its config."""
    torch.manual_seed(0)
    return load_model(SMALL_CKPT, SMALL_CONFIG)


@torch.inference_mode()
def direct(
    model: nn.Module, cfg: dict, path: Path, pad_leading: int = 16
) -> tuple[str, torch.Tensor]:
    """Transcript and valid log-probs of one file, computed step by step with the building blocks."""
    dataset_kw, features_kw = config.input(cfg, "val")
    audio = torch.from_numpy(load_audio(path, trim_silence=dataset_kw["trim_silence"]))
    feats, lens = FilterbankFeatures(**features_kw).eval()(
        audio[None], torch.tensor([audio.numel()])
    )
    feats, lens = nn.functional.pad(feats, (pad_leading, 0)), lens + pad_leading
    log_probs, enc_lens = model(feats, lens)
    n = int(enc_lens[0])
    ids = greedy_decode(log_probs, enc_lens)[0, :n]
    return ctc_greedy_text(ids.tolist(), cfg["labels"]), log_probs[0, :n]


def read_predictions(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t", 1) for line in lines)


def small_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--ckpt",
        str(SMALL_CKPT),
        "--model_config",
        str(SMALL_CONFIG),
        "--output_dir",
        str(tmp_path / "out"),
        "--num_workers",
        "0",
        "--no-ema",  # the raw weights, as `small` and `direct` use
        *extra,
    ]


# --------------------------------------------------------------------------------------------
# 1. Predictions equal the model's own greedy decode; logits reload with the right shapes.


def test_files_and_manifests_match_direct_decode(tmp_path, manifests, small, capsys):
    model, cfg = small
    labelled, unlabelled = manifests
    preds, logits = tmp_path / "pred.tsv", tmp_path / "logits.pt"
    rc = inference.main(
        small_args(
            tmp_path,
            "--val_manifests",
            str(labelled),
            str(unlabelled),
            "--dataset_dir",
            str(AUDIO),
            "--batch_size",
            "1",
            "--save_predictions",
            str(preds),
            "--save_logits",
            str(logits),
        )
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "WER" in out  # the labelled manifest is scored ...
    names = [str(p.relative_to(AUDIO)) for p in LABELLED + UNLABELLED]
    got = read_predictions(preds)
    assert list(got) == names  # ... and every utterance is predicted, in manifest order

    saved = torch.load(logits, weights_only=True)
    assert saved["names"] == names
    assert saved["labels"] == cfg["labels"] and saved["blank"] == len(cfg["labels"])
    for name, log_probs in zip(saved["names"], saved["log_probs"], strict=True):
        text, expected = direct(model, cfg, AUDIO / name)
        assert got[name] == text
        assert log_probs.shape == expected.shape  # (T_i, 29): variable lengths preserved
        torch.testing.assert_close(log_probs, expected, atol=1e-4, rtol=0)

    # The same recordings as audio files: a folder and a file list.
    preds_files = tmp_path / "files.tsv"
    filelist = tmp_path / "list.txt"
    filelist.write_text("\n".join(str(p.relative_to(AUDIO)) for p in UNLABELLED) + "\n")
    rc = inference.main(
        small_args(
            tmp_path,
            "--transcribe_wav",
            str(AUDIO / "librivox"),
            "--transcribe_filelist",
            str(filelist),
            "--dataset_dir",
            str(AUDIO),
            "--save_predictions",
            str(preds_files),
        )
    )
    assert rc == 0
    files = read_predictions(preds_files)
    assert len(files) == 5 + len(UNLABELLED)
    for name, text in files.items():
        assert text == got[str(_resolve(name).relative_to(AUDIO))]
    assert str(AUDIO / "librivox" / "sense_and_sensibility_0870.wav") in capsys.readouterr().out


def _resolve(name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else AUDIO / path


def test_any_sample_rate_and_stereo(tmp_path, small):
    """A 44.1 kHz stereo FLAC transcribes like the 16 kHz mono WAV it was made from."""
    model, cfg = small
    samples, rate = sf.read(str(AUDIO / "goforward.wav"), dtype="float32")
    hi = soxr.resample(samples, rate, 44100)
    flac = tmp_path / "goforward.flac"
    sf.write(str(flac), np.stack([hi, hi], axis=1), 44100, subtype="PCM_24")
    transcriber = Transcriber(model, cfg)
    original = transcriber.log_probs(transcriber.load(AUDIO / "goforward.wav"))
    converted = transcriber.log_probs(transcriber.load(flac))
    assert converted.shape == original.shape
    # Resampling twice is not lossless; the gibberish model still agrees on nearly every frame.
    agree = (converted.argmax(-1) == original.argmax(-1)).float().mean()
    assert agree > 0.9


def test_ema_weights_and_fallback(tmp_path, small, caplog):
    model, cfg = small
    ema_model, _ = load_model(SMALL_CKPT, SMALL_CONFIG, ema=True)
    text_raw, _ = direct(model, cfg, LABELLED[0])
    text_ema, _ = direct(ema_model, cfg, LABELLED[0])
    assert text_raw != text_ema  # the EMA weights really are used
    ckpt = torch.load(SMALL_CKPT, weights_only=True)
    ckpt["ema_state_dict"] = None
    torch.save(ckpt, tmp_path / "no_ema.pt")
    with caplog.at_level("WARNING"):
        fallback, _ = load_model(tmp_path / "no_ema.pt", SMALL_CONFIG, ema=True)
    assert "no EMA weights" in caplog.text
    assert direct(fallback, cfg, LABELLED[0])[0] == text_raw


def test_checkpoint_carries_its_config(tmp_path, small):
    """This recipe's checkpoints hold config and labels: no --model_config needed."""
    model, cfg = small
    torch.save(
        {"state_dict": model.state_dict(), "config": cfg, "labels": cfg["labels"]},
        tmp_path / "ours.pt",
    )
    rebuilt, stored = load_model(tmp_path / "ours.pt")
    assert stored == cfg
    assert direct(rebuilt, cfg, LABELLED[1])[0] == direct(model, cfg, LABELLED[1])[0]
    # A config that does not fit: the message points at the stored one.
    with pytest.raises(CheckpointError, match="leave out --model_config"):
        load_model(tmp_path / "ours.pt", TINY_CONFIG)


# --------------------------------------------------------------------------------------------
# 2. evaluation.sh: the printed WER is common.metrics on the written predictions; 2 processes
#    give the WER of 1.


LAUNCHER_VARS = (
    "NUM_GPUS",
    "DALI_DEVICE",
    "AMP",
    "PRECISION",
    "DATASET",
    "VAL_MANIFESTS",
    "PREDICTION_FILE",
    "LOGITS_FILE",
    "MODEL_CONFIG",
    "EMA",
)


def run_on_cpu(script: str, env: dict[str, str], timeout: int = 300) -> str:
    """Run a launcher on the CPU (CPU=true: the same numbers on machines with a GPU)."""
    env = {"PYTHONPATH": str(REPO), "CPU": "true", **env}
    run = run_launcher(script, env=env, unset=LAUNCHER_VARS, timeout=timeout)
    return run.stdout + run.stderr


WER_LINE = re.compile(r"WER (\S+) % \((\d+) errors / (\d+) words, (\d+) utterances\)")


def test_evaluation_script_wer_and_two_processes(tmp_path, manifests):
    labelled, _ = manifests
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # The launcher's default manifest: $DATA_DIR/librispeech-${DATASET}-wav.json.
    entries = json.loads(labelled.read_text())
    for e in entries:
        e["files"][0]["fname"] = str(AUDIO / e["files"][0]["fname"])
    (data_dir / "librispeech-test-other-wav.json").write_text(json.dumps(entries))
    env = {
        "DATA_DIR": str(data_dir),
        "MODEL_CONFIG": str(SMALL_CONFIG),
        "CHECKPOINT": str(SMALL_CKPT),
        "OUTPUT_DIR": str(tmp_path / "out"),
        "BATCH_SIZE": "1",
        "NUM_WORKERS": "0",
    }

    out = run_on_cpu("evaluation.sh", {**env, "PREDICTION_FILE": str(tmp_path / "one.tsv")})
    wer, errors, words, utts = WER_LINE.search(out).groups()
    predictions = read_predictions(tmp_path / "one.tsv")
    references = [normalize(e["transcript"], config.load(SMALL_CONFIG)["labels"]) for e in entries]
    expected, e_errors, e_words = word_error_rate(list(predictions.values()), references)
    assert (int(errors), int(words), int(utts)) == (e_errors, e_words, len(entries))
    assert float(wer) == pytest.approx(100 * expected, abs=1e-4)

    # Two CPU processes: every utterance once, counts summed over ranks.
    out2 = run_on_cpu(
        "evaluation.sh", {**env, "NUM_GPUS": "2", "PREDICTION_FILE": str(tmp_path / "two.tsv")}
    )
    assert WER_LINE.search(out2).groups() == (wer, errors, words, utts)
    two = read_predictions(tmp_path / "two.tsv")
    assert list(two.items()) == list(predictions.items())  # same lines, in manifest order

    # PREDICTION_FILE= (set, empty) writes no predictions; unset, evaluation.sh writes none either.
    out3 = run_on_cpu("evaluation.sh", {**env, "PREDICTION_FILE": ""})
    assert "predictions of" not in out3 and WER_LINE.search(out3)
    assert not list((tmp_path / "out").glob("*.predictions"))


def test_inference_script_defaults_and_logits(tmp_path, manifests):
    """inference.sh: predictions at ${OUTPUT_DIR}/${DATASET}.predictions; LOGITS_FILE works."""
    labelled, _ = manifests
    env = {
        "DATA_DIR": str(AUDIO),
        "VAL_MANIFESTS": str(labelled),
        "DATASET": "dev-clean",
        "MODEL_CONFIG": str(SMALL_CONFIG),
        "CHECKPOINT": str(SMALL_CKPT),
        "OUTPUT_DIR": str(tmp_path / "out"),
        "LOGITS_FILE": str(tmp_path / "l.pt"),
        "NUM_WORKERS": "0",
        "BATCH_SIZE": "4",
    }
    out = run_on_cpu("inference.sh", env)
    assert "inference.py" in out  # the final command is echoed
    assert len(read_predictions(tmp_path / "out" / "dev-clean.predictions")) == len(LABELLED)
    assert len(torch.load(tmp_path / "l.pt", weights_only=True)["log_probs"]) == len(LABELLED)


# --------------------------------------------------------------------------------------------
# 3. Every speed option keeps the outputs.


@pytest.fixture(scope="module")
def padded_batch(small):
    """Features of three recordings of different lengths as one padded batch."""
    _, cfg = small
    _, features_kw = config.input(cfg, "val")
    audio = [torch.from_numpy(load_audio(p, trim_silence=True)) for p in LABELLED[:3]]
    lens = torch.tensor([a.numel() for a in audio])
    batch = nn.utils.rnn.pad_sequence(audio, batch_first=True)
    return FilterbankFeatures(**features_kw).eval()(batch, lens)


def assert_same_valid_outputs(reference: nn.Module, candidate: nn.Module, feats, lens, atol: float):
    with torch.inference_mode():
        want, want_lens = reference(feats, lens)
        got, got_lens = candidate(feats, lens)
    assert torch.equal(want_lens, got_lens)
    for i, n in enumerate(want_lens.tolist()):
        torch.testing.assert_close(got[i, :n], want[i, :n], atol=atol, rtol=0)


def test_fold_batchnorm_same_outputs(small, padded_batch):
    model, _ = small
    prepared = prepare(model, SpeedOptions(fold_batchnorm=True, skip_masks=False))
    n_bn = sum(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert n_bn > 0 and not any(isinstance(m, nn.BatchNorm1d) for m in prepared.modules())
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())  # the original is untouched
    assert_same_valid_outputs(model, prepared, *padded_batch, atol=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(config.build_model(small[1]).train())


def test_skip_masks_same_outputs(small, padded_batch):
    model, _ = small
    feats, lens = padded_batch
    prepared = prepare(model, SpeedOptions(fold_batchnorm=False, skip_masks=True))
    # Equal lengths (padded to a multiple of 16 beyond them): padding cut, masks skipped.
    equal = torch.full_like(lens, int(lens.min()))
    assert feats.size(-1) > int(lens.min())
    assert_same_valid_outputs(model, prepared, feats, equal, atol=1e-5)
    with torch.inference_mode():
        log_probs, enc_lens = prepared(feats, equal)
    assert log_probs.size(1) == int(enc_lens.max())  # nothing past the valid frames was computed
    assert all(conv.masked for conv in masked_convs(model))  # masks restored afterwards
    # Different lengths: masks stay on.
    assert_same_valid_outputs(model, prepared, feats, lens, atol=1e-5)


def test_compile_same_outputs(small, padded_batch):
    model, _ = small
    prepared = prepare(model, SpeedOptions(compile=True))
    assert_same_valid_outputs(model, prepared, *padded_batch, atol=1e-4)


def test_fft_convs_same_outputs(small, padded_batch):
    model, _ = small
    prepared = prepare(model, SpeedOptions(fft_convs=True))
    replaced = [m for m in prepared.modules() if isinstance(m, FFTConv1d)]
    assert len(replaced) == 3  # the reference model's convolutions spanning >= 9 frames
    assert_same_valid_outputs(model, prepared, *padded_batch, atol=1e-4)


@pytest.mark.parametrize("kernel, dilation, bias", [(11, 1, False), (29, 2, True), (9, 1, True)])
def test_fft_conv_equals_direct_conv(kernel, dilation, bias):
    conv = MaskedConv1d(24, 40, kernel, 1, (kernel // 2) * dilation, dilation, bias=bias)
    x, lens = torch.randn(2, 24, 157), torch.tensor([157, 90])
    with torch.no_grad():
        want, want_lens = conv(x, lens)
        got, got_lens = FFTConv1d(conv)(x, lens)
    assert torch.equal(got_lens, want_lens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="stride-1"):
        FFTConv1d(MaskedConv1d(24, 40, 11, 2, 5))


def test_bf16_same_outputs(small, padded_batch):
    """bf16 keeps 8 bits of mantissa: log-probs move by a few 1e-2, and argmaxes may flip where the
    top two classes are closer than that. The reference model is untrained (its top two are often
    within 1e-3: gibberish), so frames are compared where the fp32 margin exceeds bf16's error."""
    model, _ = small
    feats, lens = padded_batch
    prepared = prepare(model, SpeedOptions(dtype=torch.bfloat16))
    with torch.inference_mode():
        want, enc_lens = model(feats, lens)
        got, got_lens = prepared(feats, lens)
    assert got.dtype == torch.float32 and torch.equal(enc_lens, got_lens)
    for i, n in enumerate(enc_lens.tolist()):
        w, g = want[i, :n], got[i, :n]
        assert (w - g).abs().max() < 0.25
        top2 = w.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 0.3
        assert clear.sum() > 0.2 * n
        assert torch.equal(w.argmax(-1)[clear], g.argmax(-1)[clear])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_speed_options(small, padded_batch, dtype):
    model, _ = small
    feats, lens = (t.cuda() for t in padded_batch)
    reference = prepare(model, SpeedOptions.upstream()).cuda()
    for options in (SpeedOptions(dtype=dtype), SpeedOptions(cuda_graphs=True, dtype=dtype)):
        prepared = prepare(model, options).cuda()  # a copy: the CPU fixture stays on the CPU
        atol = 1e-3 if dtype == torch.float32 else 0.25  # TF32 / half precision
        for batch_lens in (lens, torch.full_like(lens, int(lens.min()))):
            assert_same_valid_outputs(reference, prepared, feats, batch_lens, atol=atol)
            assert_same_valid_outputs(reference, prepared, feats, batch_lens, atol=atol)  # replay


# --------------------------------------------------------------------------------------------
# 4. The latency sweep on the CPU with the tiny config.


def test_inference_benchmark_script(tmp_path):
    cfg = config.load(TINY_CONFIG)
    model = config.build_model(cfg)
    torch.save(
        {"state_dict": model.state_dict(), "config": cfg, "labels": cfg["labels"]},
        tmp_path / "tiny.pt",
    )
    env = {
        "CHECKPOINT": str(tmp_path / "tiny.pt"),
        "MODEL_CONFIG": "",
        "OUTPUT_DIR": str(tmp_path),
        "NUM_STEPS": "25",
        "NUM_WARMUP_STEPS": "1",
        "BATCH_SIZE_SEQ": "1 2",
        "MAX_DURATION_SEQ": "2",
    }
    out = run_on_cpu("inference_benchmark.sh", env)
    assert "synthetic audio" in out
    table = json.loads((tmp_path / "inference_benchmark.json").read_text())
    assert table["machine"]["device_type"] == "cpu" and table["machine"]["device"]
    assert [(r["batch_size"], r["duration"]) for r in table["rows"]] == [(1, 2.0), (2, 2.0)]
    keys = {latency_metric(s, r) for s in LATENCY_STAGES for r in LATENCY_RATIOS}
    for row in table["rows"]:
        assert set(row["latency_ms"]) == keys
        ms = row["latency_ms"]
        assert 0 < ms["dnn_latency_0.9"] <= ms["dnn_latency_0.95"] <= ms["dnn_latency_0.99"]
    md = (tmp_path / "inference_benchmark.md").read_text()
    assert md.count("\n| 1 | 2.0 |") == 1 and md.count("\n| 2 | 2.0 |") == 1
    assert (tmp_path / "perf-infer_dali-cpu_amp-false_dur2_bs1.json").exists()


def test_latency_percentiles():
    latencies = Latencies()
    for step in range(105):  # the first 5 are dropped: 1..100 ms remain
        latencies.add(data=0.0, dnn=(step - 4) / 1000 if step >= 5 else 1.0)
    ms = latencies.summary()
    assert ms["dnn_latency_0.9"] == pytest.approx(90)
    assert ms["dnn_latency_0.99"] == pytest.approx(99)
    assert ms["dnn_latency_0.5"] == pytest.approx(50.5)  # the mean, as upstream
    short = Latencies()
    for _ in range(24):
        short.add(0.0, 0.001)
    assert short.summary() is None  # fewer than 20 after dropping 5


# --------------------------------------------------------------------------------------------
# 5. Long recordings: chunked, bounded, exact.


def concatenated(seconds: float) -> np.ndarray:
    pieces = [load_audio(p) for p in LABELLED + UNLABELLED]
    audio = np.concatenate(pieces)
    return np.tile(audio, int(np.ceil(seconds * 16000 / audio.size)))[: int(seconds * 16000)]


def test_five_minute_recording_bounded(small):
    model, cfg = small
    transcriber = Transcriber(model, cfg, chunk_seconds=20.0)
    widths = []
    hook = model.register_forward_pre_hook(lambda _, inputs: widths.append(inputs[0].shape[-1]))
    try:
        text = transcriber.transcribe(concatenated(300.0))
    finally:
        hook.remove()
    assert isinstance(text, str) and len(text) > 1000
    assert len(widths) >= 15  # 300 s in 20 s chunks
    assert max(widths) <= transcriber.chunk + 2 * transcriber.context
    assert max(widths) < 30 * 100  # frames: bounded by the chunk, not the recording (30000)


def test_chunked_equals_unchunked(small):
    model, cfg = small
    audio = concatenated(45.0)
    whole = Transcriber(model, cfg, chunk_seconds=600.0)
    chunked = Transcriber(model, cfg, chunk_seconds=7.0)
    want, got = whole.log_probs(audio), chunked.log_probs(audio)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert chunked.decode(got) == whole.decode(want)


# --------------------------------------------------------------------------------------------
# 6. Bad input gives a clear message.


def test_missing_checkpoint(tmp_path, capsys):
    rc = inference.main(["--ckpt", str(tmp_path / "nope.pt"), "--transcribe_wav", str(LABELLED[0])])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err


def test_config_does_not_fit(tmp_path, capsys):
    rc = inference.main(
        [
            "--ckpt",
            str(SMALL_CKPT),
            "--model_config",
            str(TINY_CONFIG),
            "--transcribe_wav",
            str(LABELLED[0]),
            "-o",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "encoder.layers.0.conv.0.weight has shape (32, 64, 11) in the checkpoint" in err


def test_upstream_checkpoint_needs_a_config(tmp_path, capsys):
    rc = inference.main(["--ckpt", str(SMALL_CKPT), "--transcribe_wav", str(LABELLED[0])])
    assert rc == 2 and "stores no config" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [(b"this is not audio", "cannot read audio file"), (None, "holds no samples")],
)
def test_bad_audio_files(tmp_path, capsys, content, message):
    path = tmp_path / "bad.wav"
    if content is None:
        sf.write(str(path), np.zeros(0, dtype=np.float32), 16000)
    else:
        path.write_bytes(content)
    good, preds = AUDIO / "goforward.wav", tmp_path / "preds.tsv"
    args = ("--transcribe_wav", str(path), str(good), "--save_predictions", str(preds))
    rc = inference.main(small_args(tmp_path, *args))
    err = capsys.readouterr().err
    # The bad file is named and skipped; the other one is still transcribed and saved.
    assert rc == 1 and message in err and str(path) in err and "(skipped)" in err
    assert "1 file(s) could not be transcribed" in err
    assert [line.split("\t")[0] for line in preds.read_text().splitlines()] == [str(good)]


def test_manifest_without_transcripts(tmp_path, manifests, capsys, caplog):
    _, unlabelled = manifests
    with caplog.at_level("WARNING"):
        rc = inference.main(
            small_args(
                tmp_path,
                "--val_manifests",
                str(unlabelled),
                "--dataset_dir",
                str(AUDIO),
                "--save_predictions",
                str(tmp_path / "p.tsv"),
            )
        )
    assert rc == 0
    assert "5 of 5 entries" in caplog.text and "WER is not computed" in caplog.text
    assert not WER_LINE.search(capsys.readouterr().out)
    assert len(read_predictions(tmp_path / "p.tsv")) == len(UNLABELLED)


def test_missing_audio_in_manifest(tmp_path, manifests, capsys):
    labelled, _ = manifests
    rc = inference.main(
        small_args(tmp_path, "--val_manifests", str(labelled), "--dataset_dir", str(tmp_path))
    )
    err = capsys.readouterr().err
    assert rc == 2 and "do not exist" in err and "sense_and_sensibility_0870.wav" in err


def test_inference_benchmark_on_a_small_real_set(tmp_path, manifests):
    """Fewer utterances than a batch: batches are made by cycling over them (the benchmark used
    to print "Not enough samples" and then fail on `cat` of a missing table)."""
    labelled, _ = manifests  # 4 recordings
    env = {
        "CHECKPOINT": str(SMALL_CKPT), "MODEL_CONFIG": str(SMALL_CONFIG),
        "OUTPUT_DIR": str(tmp_path), "VAL_MANIFESTS": str(labelled), "DATA_DIR": str(AUDIO),
        "NUM_STEPS": "25", "NUM_WARMUP_STEPS": "1", "BATCH_SIZE_SEQ": "2 8",
        "MAX_DURATION_SEQ": "16.7", "DALI_DEVICE": "none", "NUM_WORKERS": "0",
    }  # fmt: skip
    out = run_on_cpu("inference_benchmark.sh", env)
    table = json.loads((tmp_path / "inference_benchmark.json").read_text())
    assert [(r["batch_size"], r["duration"]) for r in table["rows"]] == [(2, 16.7), (8, 16.7)]
    assert "| 8 | 16.7 |" in out  # the table is printed at the end


def test_inference_benchmark_refuses_too_few_steps_before_any_work(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CHECKPOINT": str(tmp_path / "missing.pt"),
           "OUTPUT_DIR": str(tmp_path), "NUM_STEPS": "10", "NUM_WARMUP_STEPS": "1"}  # fmt: skip
    run = subprocess.run(["bash", "scripts/inference_benchmark.sh"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2
    assert "--steps 10 (NUM_STEPS) is too few to measure latencies: at least 25" in run.stderr
    assert "checkpoint not found" not in run.stderr  # refused before loading anything
    assert "Traceback" not in run.stderr and not (tmp_path / "inference_benchmark.md").exists()


def test_own_audio_in_one_line_without_librispeech(tmp_path):
    """The README's `CHECKPOINT=... bash scripts/inference.sh --transcribe_wav FILE` on a machine
    without /datasets/LibriSpeech: no manifest is read, the transcript is printed and saved, and
    the CPU runs its fast path (FFT convolutions) without being asked."""
    env = {"CHECKPOINT": str(SMALL_CKPT), "MODEL_CONFIG": str(SMALL_CONFIG), "CPU": "true",
           "OUTPUT_DIR": str(tmp_path / "out"), "PYTHONPATH": str(REPO)}  # fmt: skip
    wav = AUDIO / "goforward.wav"
    unset = (*LAUNCHER_VARS, "DATA_DIR", "FFT_CONVS")
    run = run_launcher("inference.sh", "--transcribe_wav", str(wav), env=env, unset=unset)
    out = run.stdout + run.stderr
    assert "manifest not found" not in out
    assert "speed options: fold_batchnorm+skip_masks+fft_convs on cpu (--fft_convs auto)" in out
    saved = tmp_path / "out" / "transcripts.tsv"
    assert f"written to {saved}" in out
    name, text = saved.read_text().strip().split("\t")
    assert name == str(wav) and f"{wav}\t{text}" in out


def test_evaluation_with_beam_search_and_an_lm(tmp_path, manifests):
    """`DECODER=beam LM=... bash scripts/evaluation.sh` prints the WER (the LM knows the
    references' sentences: no worse than greedy, even with this weak model), and the JSON output
    carries each word with its time and confidence."""
    labelled, _ = manifests
    entries = json.loads(labelled.read_text())
    labels = config.load(SMALL_CONFIG)["labels"]
    text = tmp_path / "lm.txt"
    text.write_text("".join(normalize(e["transcript"], labels) + "\n" for e in entries))
    lm = tmp_path / "lm.arpa"
    build = subprocess.run([sys.executable, "utils/build_lm.py", str(text), str(lm)], cwd=REPO,
                           capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stderr
    env = {
        "DATA_DIR": str(AUDIO), "VAL_MANIFESTS": str(labelled), "MODEL_CONFIG": str(SMALL_CONFIG),
        "CHECKPOINT": str(SMALL_CKPT), "OUTPUT_DIR": str(tmp_path / "out"), "BATCH_SIZE": "2",
        "NUM_WORKERS": "0", "EMA": "false",
    }  # fmt: skip
    greedy = WER_LINE.search(run_on_cpu("evaluation.sh", env))
    preds = tmp_path / "beam.tsv"
    beam_env = {**env, "DECODER": "beam", "LM": str(lm), "LM_ALPHA": "2.0", "LM_BETA": "0.5",
                "PREDICTION_FILE": str(preds), "OUTPUT_FORMAT": "txt json"}  # fmt: skip
    beam = WER_LINE.search(run_on_cpu("evaluation.sh", beam_env))
    assert beam.group(3, 4) == greedy.group(3, 4)  # the same words and utterances scored
    assert float(beam.group(1)) <= float(greedy.group(1))
    objects = json.loads(preds.with_suffix(".json").read_text())
    assert [o["file"] for o in objects] == list(read_predictions(preds))
    for o in objects:
        assert o["text"] == " ".join(w["word"] for w in o["words"])
        starts = [w["start"] for w in o["words"]]
        assert starts == sorted(starts) and all(0 <= w["confidence"] <= 1 for w in o["words"])


@pytest.mark.parametrize("mode", ["--vad", "--stream"])
def test_vad_and_stream_modes_transcribe_a_long_recording(tmp_path, capsys, mode):
    """`--vad` cuts at pauses, `--stream` plays the file as a stream; both give a transcript close
    to the whole-file one (bounds measured in tests/test_vad.py and tests/test_streaming.py)."""
    wav = AUDIO / "keynote.wav"
    whole, other = tmp_path / "whole.tsv", tmp_path / "other.tsv"
    assert inference.main(small_args(tmp_path, "--transcribe_wav", str(wav),
                                     "--save_predictions", str(whole))) == 0  # fmt: skip
    assert inference.main(small_args(tmp_path, "--transcribe_wav", str(wav), mode,
                                     "--save_predictions", str(other))) == 0  # fmt: skip
    (a,), (b,) = read_predictions(whole).values(), read_predictions(other).values()
    assert b and char_error_rate([b], [a])[0] < 0.65
