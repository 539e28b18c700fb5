"""The CPU speed levers of jasper.prepare keep what the model computes.

fp32 levers (FFT convolutions with complex64 products) must give the checkpoint's log-probs up to
float32 rounding and its transcripts of real recordings; bf16 levers (bf16 weights, FFT products
as bf16 GEMMs) may move log-probs by bf16's rounding, so they must keep the argmax of every frame
that is not near a tie, and flip no more frames than plain bf16 convolutions do. Speed itself is
measured by bench/cpu_rtf.py, not asserted here (shared CI machines make timings unreliable).
"""

from __future__ import annotations

import pytest
import torch

from common import machine
from jasper.model import MaskedConv1d
from jasper.prepare import FFTConv1d, SpeedOptions, fft_size, prepare
from jasper.transcribe import Transcriber, load_model
from tests.conftest import AUDIO, REFERENCE

SMALL = REFERENCE / "small_model"
RECORDINGS = sorted(AUDIO.rglob("*.wav"))  # 11 real recordings, 2.8 to 16.4 s


@pytest.fixture(scope="module")
def small():
    return load_model(SMALL / "checkpoint.pt", SMALL / "config.yaml")


@pytest.fixture(scope="module")
def fp32_outputs(small):
    """Transcripts and log-probs of every recording by the checkpoint's own forward pass."""
    model, cfg = small
    transcriber = Transcriber(prepare(model, SpeedOptions.upstream()), cfg)
    return {p: transcriber.transcribe_file(p) for p in RECORDINGS}


# --------------------------------------------------------------------------------------------
# FFTConv1d, layer by layer


@pytest.mark.parametrize(
    "c_in, c_out, kernel, dilation, bias",
    [(24, 40, 11, 1, False), (32, 32, 25, 1, True), (16, 24, 29, 2, True), (8, 8, 13, 1, False)],
)
@pytest.mark.parametrize("n_fft", [None, 64])
def test_fft_conv_fp32_equals_direct(c_in, c_out, kernel, dilation, bias, n_fft):
    conv = MaskedConv1d(c_in, c_out, kernel, 1, (kernel // 2) * dilation, dilation, bias=bias)
    span = dilation * (kernel - 1) + 1
    n_fft = n_fft if n_fft and n_fft > span else None
    x, lens = torch.randn(2, c_in, 203), torch.tensor([203, 77])
    with torch.no_grad():
        want, want_lens = conv(x, lens)
        fft = FFTConv1d(conv, n_fft=n_fft)
        got, got_lens = fft(x, lens)
    assert fft.spectrum.dtype == torch.complex64 and fft.weight is None
    assert torch.equal(got_lens, want_lens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel, dilation", [(11, 1), (25, 1), (29, 2)])
def test_fft_conv_bf16_error_is_a_bf16_convs(kernel, dilation):
    """bf16 products are rounded once, as a direct bf16 convolution's outputs: measured 2.9e-3
    relative error for both (the FFTs and the accumulation run in float32)."""
    torch.manual_seed(0)
    conv = MaskedConv1d(128, 128, kernel, 1, (kernel // 2) * dilation, dilation, bias=True)
    x, lens = torch.randn(1, 128, 300), torch.tensor([300])
    with torch.no_grad():
        want = conv(x, lens)[0]
        direct_bf16 = MaskedConv1d(
            128, 128, kernel, 1, (kernel // 2) * dilation, dilation, bias=True
        ).bfloat16()
        direct_bf16.load_state_dict(conv.state_dict())
        fft = FFTConv1d(direct_bf16, dtype=torch.bfloat16)
        got = fft(x.bfloat16(), lens)[0]
        reference_error = (direct_bf16(x.bfloat16(), lens)[0].float() - want).norm() / want.norm()
    assert fft.spectrum.dtype == torch.bfloat16 and got.dtype == torch.bfloat16
    error = (got.float() - want).norm() / want.norm()
    assert error < 1.5 * reference_error + 1e-4, (error, reference_error)


@pytest.mark.parametrize(
    "span, n_fft", [(11, 32), (13, 32), (17, 64), (21, 64), (25, 64), (57, 128), (9, 32)]
)
def test_fft_size_is_the_power_of_two_at_twice_the_span(span, n_fft):
    assert fft_size(span) == n_fft


def test_fft_conv_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="stride-1"):
        FFTConv1d(MaskedConv1d(8, 8, 11, 2, 5))
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        FFTConv1d(MaskedConv1d(8, 8, 11, 1, 5), dtype=torch.float16)
    with pytest.raises(ValueError, match="must exceed the kernel span"):
        FFTConv1d(MaskedConv1d(8, 8, 11, 1, 5), n_fft=8)


# --------------------------------------------------------------------------------------------
# SpeedOptions.fastest_for


@pytest.mark.parametrize(
    "device, half_ok, native_bf16, want",
    [
        ("cpu", False, True, SpeedOptions(fft_convs=True)),
        ("cpu", True, True, SpeedOptions(fft_convs=True, dtype=torch.bfloat16)),
        ("cpu", True, False, SpeedOptions(fft_convs=True)),
        ("cpu", False, False, SpeedOptions(fft_convs=True)),
        ("cuda", False, False, SpeedOptions()),
        ("cuda", True, True, SpeedOptions(dtype=torch.float16)),
    ],
)
def test_fastest_for(monkeypatch, device, half_ok, native_bf16, want):
    monkeypatch.setattr(machine, "native_bf16", lambda: native_bf16)
    assert SpeedOptions.fastest_for(device, half_ok=half_ok) == want
    assert SpeedOptions.fastest_for(torch.device(device), half_ok=half_ok) == want


# --------------------------------------------------------------------------------------------
# Whole model, real recordings


def test_fastest_fp32_cpu_path_keeps_log_probs_and_transcripts(small, fp32_outputs):
    model, cfg = small
    options = SpeedOptions.fastest_for("cpu")
    prepared = prepare(model, options)
    assert options.fft_convs and any(isinstance(m, FFTConv1d) for m in prepared.modules())
    transcriber = Transcriber(prepared, cfg)
    for path, want in fp32_outputs.items():
        got = transcriber.transcribe_file(path)
        assert got.text == want.text, path.name
        torch.testing.assert_close(got.log_probs, want.log_probs, atol=1e-4, rtol=0)


def frames_kept(want: torch.Tensor, got: torch.Tensor, margin: float) -> tuple[float, bool]:
    """(share of frames with the same argmax, whether every frame whose fp32 top-2 margin
    exceeds ``margin`` kept its argmax)."""
    same = want.argmax(-1) == got.argmax(-1)
    top2 = want.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > margin
    return float(same.float().mean()), bool(same[clear].all())


def test_bf16_fft_path_flips_only_near_ties(small, fp32_outputs):
    """The reference model is untrained: its two best classes are often within bf16's error of
    each other (gibberish transcripts), so argmaxes flip on such frames with any bf16 lever.
    Measured on the 11 recordings: the largest fp32 top-2 margin that flipped was 0.09 with bf16
    FFT products (0.06 with direct bf16), log-probs moved by at most 0.19 (0.18), and 97.4% to
    99.4% of the frames kept their argmax per recording."""
    model, cfg = small
    fft = Transcriber(prepare(model, SpeedOptions(fft_convs=True, dtype=torch.bfloat16)), cfg)
    direct = Transcriber(prepare(model, SpeedOptions(dtype=torch.bfloat16)), cfg)
    kept_fft, kept_direct = [], []
    for path, want in fp32_outputs.items():
        got_fft, got_direct = fft.transcribe_file(path), direct.transcribe_file(path)
        assert (got_fft.log_probs - want.log_probs).abs().max() < 0.25
        share, clear_kept = frames_kept(want.log_probs, got_fft.log_probs, margin=0.25)
        assert clear_kept, path.name
        assert share > 0.95, path.name
        kept_fft.append(share)
        kept_direct.append(frames_kept(want.log_probs, got_direct.log_probs, margin=0.25)[0])
    # FFT products in bf16 cost no more accuracy than bf16 convolutions do.
    assert sum(kept_fft) / len(kept_fft) > sum(kept_direct) / len(kept_direct) - 0.005


def test_bf16_fft_path_on_a_padded_batch(small):
    """Masks and lengths work with bf16 FFT products: each utterance of a padded batch gets the
    outputs it gets alone (blocks start at frame 0 either way; only the GEMMs' widths differ)."""
    model, _ = small
    prepared = prepare(model, SpeedOptions(fft_convs=True, dtype=torch.bfloat16))
    feats = torch.randn(3, 64, 320)
    lens = torch.tensor([320, 251, 97])
    with torch.inference_mode():
        batch, batch_lens = prepared(feats, lens)
        for i, n in enumerate(lens.tolist()):
            alone, alone_lens = prepared(feats[i : i + 1, :, :n], lens[i : i + 1])
            assert int(alone_lens[0]) == int(batch_lens[i])
            m = int(alone_lens[0])
            assert batch.dtype == torch.float32
            assert (batch[i, :m] - alone[0, :m]).abs().max() < 1e-2  # measured: 0
