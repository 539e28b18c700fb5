"""Audio loading and the log-mel front end against upstream's stored outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from common.audio import AudioLoadError, SpeedPerturbation, load_audio
from common.features import FilterbankFeatures, SpecAugment, slaney_mel_filterbank
from tests.conftest import AUDIO, REFERENCE

EXAMPLES = ["example1", "example2", "example3", "example4"]


def reference_features_kw() -> dict:
    kw = json.loads((REFERENCE / "features" / "features_kw.json").read_text())["features_kw"]
    kw["max_duration"] = float(kw["max_duration"])
    return kw


@pytest.mark.parametrize("name", EXAMPLES)
def test_audio_loading_reproduces_upstream_samples(name):
    ref = np.load(REFERENCE / "features" / f"{name}.npz")
    raw = load_audio(AUDIO / f"{name}.wav")
    trimmed = load_audio(AUDIO / f"{name}.wav", trim_silence=True)
    np.testing.assert_array_equal(raw, ref["raw_samples"])
    np.testing.assert_array_equal(trimmed, ref["samples"])  # 60 dB trim shortens example3 and 4


@pytest.mark.parametrize("name", EXAMPLES)
def test_features_reproduce_upstream(name):
    ref = np.load(REFERENCE / "features" / f"{name}.npz")
    fp = FilterbankFeatures(**reference_features_kw()).eval()
    samples = torch.from_numpy(ref["samples"])[None]
    feats, lens = fp(samples, torch.tensor([samples.shape[1]]))
    n = int(ref["length"])
    assert lens.tolist() == [n]
    assert feats.shape[-1] == ref["features_padded"].shape[-1]  # padded to a multiple of 16
    assert np.abs(feats[0, :, :n].numpy() - ref["features"][:, :n]).max() <= 1e-3
    assert np.all(feats[0, :, n:].numpy() == 0)


def test_mel_filterbank_equals_librosa():
    librosa = pytest.importorskip("librosa")
    ours = slaney_mel_filterbank(16000, 512, 64)
    theirs = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=0.0, fmax=8000.0)
    assert np.abs(ours - theirs).max() < 1e-6


def test_eval_is_deterministic_and_leaves_the_input_alone():
    fp = FilterbankFeatures(dither=1e-5).eval()
    audio = torch.randn(2, 16000) * 0.1
    before = audio.clone()
    a, _ = fp(audio, torch.tensor([16000, 12000]))
    b, _ = fp(audio, torch.tensor([16000, 12000]))
    assert torch.equal(a, b) and torch.equal(audio, before)
    fp.train()
    c, _ = fp(audio, torch.tensor([16000, 12000]))
    assert not torch.equal(a, c) and torch.equal(audio, before)  # training dithers, out of place
    upstream_like = FilterbankFeatures(dither=1e-5, dither_at_eval=True).eval()
    d, _ = upstream_like(audio, torch.tensor([16000, 12000]))
    assert not torch.equal(a, d)


def test_lengths_padding_and_zeroing():
    fp = FilterbankFeatures(dither=0.0).eval()
    audio = torch.randn(3, 16000)
    feats, lens = fp(audio, torch.tensor([16000, 8001, 160]))
    assert lens.tolist() == [100, 51, 1]  # ceil(N / 160)
    assert feats.shape == (3, 64, 112)  # 1 + 16000 // 160 = 101 frames, padded to 16
    assert torch.all(feats[1, :, 51:] == 0) and torch.all(feats[2, :, 1:] == 0)
    fixed = FilterbankFeatures(dither=0.0, pad_to_max_duration=True, max_duration=16.7).eval()
    # 1 + ceil((16.7 s * 16 kHz - 320) / 160) = 1669 frames, padded to 1680 (upstream
    # BaseFeatures.apply_padding, common/features.py)
    assert fixed(audio, torch.tensor([16000] * 3))[0].shape[-1] == 1680


def test_nemo_length_rule():
    fp = FilterbankFeatures(length_rounding="floor")
    assert fp.feature_lengths(torch.tensor([16000, 8001, 159])).tolist() == [100, 50, 0]


def test_spec_augment_masks_stay_inside_valid_frames():
    torch.manual_seed(3)
    aug = SpecAugment(freq_masks=2, max_freq=20, time_masks=5, max_time=30)
    x = torch.ones(8, 64, 400)
    lens = torch.randint(40, 400, (8,))
    for i, n in enumerate(lens):
        x[i, :, n:] = 7.0  # padding marker: must never be masked
    out = aug(x, lens)
    assert (out == 0).any()
    for i, n in enumerate(lens):
        assert torch.all(out[i, :, n:] == 7.0)


def test_speed_perturbation_scales_length_by_the_drawn_factor():
    rng = np.random.default_rng(0)
    audio = np.random.default_rng(1).standard_normal(16000).astype(np.float32)
    sp = SpeedPerturbation(min_rate=0.85, max_rate=1.15)
    factor = sp.draw(np.random.default_rng(0))
    out = sp(audio, rng)
    assert abs(out.size - factor * audio.size) <= 2


def test_loading_resamples_and_downmixes(tmp_path):
    t = np.arange(44100) / 44100.0
    left, right = np.sin(2 * np.pi * 440 * t), np.zeros_like(t)
    sf.write(tmp_path / "stereo.flac", np.stack([left, right], axis=1), 44100)
    audio = load_audio(tmp_path / "stereo.flac")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - 16000) <= 1
    assert 0.3 < np.abs(audio).max() < 0.6  # the average of a full-scale and a silent channel


def test_bad_audio_files_raise_errors_naming_the_path(tmp_path):
    with pytest.raises(AudioLoadError, match="not found.*missing.wav"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "garbage.wav").write_bytes(b"RIFF not really audio")
    with pytest.raises(AudioLoadError, match="garbage.wav"):
        load_audio(tmp_path / "garbage.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioLoadError, match="empty.wav"):
        load_audio(tmp_path / "empty.wav")
