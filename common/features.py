"""Log-mel filterbank front end and spectrogram augmentation (upstream: common/features.py).

Shapes: B = batch, N = samples, F = mel bins (``n_filt``), T = frames. Audio is 16 kHz float32;
frames are 20 ms Hann windows every 10 ms (320 / 160 samples) with a 512-point FFT.

The math follows upstream's PyTorch ``FilterbankFeatures`` so that checkpoints trained on its
features work unchanged: pre-emphasis 0.97, symmetric Hann window, centred STFT with reflect padding,
power spectrum, slaney mel matrix, ``ln(x + 1e-20)``, per-feature normalisation with the unbiased std
+ 1e-5 over the valid frames, zeros beyond the valid length, time padded to a multiple of 16.
Deliberate differences from upstream (docs/upstream.md#u17): dither is not added at evaluation
unless ``dither_at_eval`` is set, and the caller's audio is never modified in place.

NeMo's preprocessor (``tests/data/reference/nemo/README.md``) differs in three settings, exposed as
options: ``length_rounding="floor"`` (``N // 160`` frames), ``log_zero_guard=2**-24`` and
``stft_pad_mode="constant"``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from common.audio import SAMPLE_RATE

NORMALIZE_EPS = 1e-5  # added to the std before dividing (upstream's normalize_batch)


def normalize_with(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / (std + 1e-5)``: feature normalisation with given statistics (broadcast)."""
    return (x - mean) / (std + NORMALIZE_EPS)


def slaney_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular mel filters on the Slaney mel scale, area-normalised ("slaney" norm).

    Equal to ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` with its defaults (htk=False,
    norm="slaney"); written out so the front end does not need librosa. Returns (n_mels, n_fft//2+1).
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        # Slaney: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
        f_sp, min_log_hz = 200.0 / 3, 1000.0
        min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
        hz = np.asarray(hz, dtype=np.float64)
        mel = hz / f_sp
        log_part = hz >= min_log_hz
        mel[log_part] = min_log_mel + np.log(hz[log_part] / min_log_hz) / logstep
        return mel

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        f_sp, min_log_hz = 200.0 / 3, 1000.0
        min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
        hz = f_sp * mel
        log_part = mel >= min_log_mel
        hz[log_part] = min_log_hz * np.exp(logstep * (mel[log_part] - min_log_mel))
        return hz

    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_pts = np.linspace(
        hz_to_mel(np.array([fmin]))[0], hz_to_mel(np.array([fmax]))[0], n_mels + 2
    )
    mel_freqs = mel_to_hz(mel_pts)
    fdiff = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2 : n_mels + 2] - mel_freqs[:n_mels]))[:, None]
    return weights.astype(np.float32)


class SpecAugment(nn.Module):
    """SpecAugment masks (Park et al. 2019, https://arxiv.org/abs/1904.08779), filled with 0, which is
    the feature mean after per-feature normalisation.

    For each utterance: ``freq_masks`` bands of width U{min_freq..max_freq} bins and ``time_masks``
    spans of width U{min_time..max_time} frames. Unlike upstream (which drew time anchors over the
    padded batch length), time masks start inside the utterance's valid frames.
    """

    def __init__(
        self,
        freq_masks: int = 0,
        min_freq: int = 0,
        max_freq: int = 10,
        time_masks: int = 0,
        min_time: int = 0,
        max_time: int = 10,
    ) -> None:
        super().__init__()
        self.freq_masks, self.min_freq, self.max_freq = freq_masks, min_freq, max_freq
        self.time_masks, self.min_time, self.max_time = time_masks, min_time, max_time

    @staticmethod
    def _spans(
        n_masks: int, lo: int, hi: int, extent: torch.Tensor, size: int, gen: torch.Generator | None
    ) -> torch.Tensor:
        """(B, size) bool: union of ``n_masks`` random spans per row, each inside ``[0, extent)``."""
        batch = extent.numel()
        widths = torch.randint(lo, hi + 1, (batch, n_masks), generator=gen)
        room = (extent[:, None] - widths).clamp(min=1)
        starts = (torch.rand(batch, n_masks, generator=gen) * room).long()
        pos = torch.arange(size)[None, None, :]
        inside = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])
        return inside.any(dim=1)

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, x_lens: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        batch, n_feats, n_frames = x.shape
        lens = x_lens.cpu().clamp(max=n_frames)
        mask = torch.zeros(batch, n_feats, n_frames, dtype=torch.bool)
        if self.freq_masks > 0:
            full = torch.full((batch,), n_feats)
            band = self._spans(
                self.freq_masks, self.min_freq, self.max_freq, full, n_feats, generator
            )
            mask |= band[:, :, None]
        if self.time_masks > 0:
            span = self._spans(
                self.time_masks, self.min_time, self.max_time, lens, n_frames, generator
            )
            mask |= span[:, None, :]
        valid = torch.arange(n_frames)[None, :] < lens[:, None]
        return x.masked_fill((mask & valid[:, None, :]).to(x.device), 0.0)


class CutoutAugment(nn.Module):
    """``masks`` rectangles of U{min_freq..max_freq} bins by U{min_time..max_time} frames, set to 0,
    placed inside each utterance's valid frames."""

    def __init__(
        self,
        masks: int = 0,
        min_freq: int = 20,
        max_freq: int = 20,
        min_time: int = 5,
        max_time: int = 5,
    ) -> None:
        super().__init__()
        self.masks = masks
        self.min_freq, self.max_freq = min_freq, max_freq
        self.min_time, self.max_time = min_time, max_time

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, x_lens: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        batch, n_feats, n_frames = x.shape
        if self.masks == 0:
            return x
        shape = (batch, self.masks)
        heights = torch.randint(self.min_freq, self.max_freq + 1, shape, generator=generator)
        widths = torch.randint(self.min_time, self.max_time + 1, shape, generator=generator)
        lens = x_lens.cpu().clamp(max=n_frames)
        f0 = (torch.rand(shape, generator=generator) * (n_feats - heights).clamp(min=1)).long()
        t0 = (torch.rand(shape, generator=generator) * (lens[:, None] - widths).clamp(min=1)).long()
        f = torch.arange(n_feats)[None, None, :, None]
        t = torch.arange(n_frames)[None, None, None, :]
        in_f = (f >= f0[..., None, None]) & (f < (f0 + heights)[..., None, None])
        in_t = (t >= t0[..., None, None]) & (t < (t0 + widths)[..., None, None])
        mask = (in_f & in_t).any(dim=1)
        return x.masked_fill(mask.to(x.device), 0.0)


class FilterbankFeatures(nn.Module):
    """Audio (B, N) float32 at ``sample_rate`` -> normalised log-mel features (B, n_filt, T).

    ``forward(audio, audio_lens) -> (feats, feat_lens)``; frames at or beyond ``feat_lens`` are 0 and
    T is a multiple of ``pad_align``. In training mode dither and the configured augmentations run;
    in eval mode the output is deterministic.

    The constructor's keyword names are upstream's YAML keys (``input_*.filterbank_features``); the
    last four are this recipe's fidelity options (see the module docstring).
    """

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        window_size: float = 0.02,
        window_stride: float = 0.01,
        window: str = "hann",
        normalize: str = "per_feature",
        n_fft: int | None = None,
        preemph: float = 0.97,
        n_filt: int = 64,
        lowfreq: float = 0.0,
        highfreq: float | None = None,
        log: bool = True,
        dither: float = 1e-5,
        pad_align: int = 16,
        pad_to_max_duration: bool = False,
        max_duration: float = float("inf"),
        frame_splicing: int = 1,
        spec_augment: dict | None = None,
        cutout_augment: dict | None = None,
        dither_at_eval: bool = False,
        length_rounding: str = "ceil",
        log_zero_guard: float = 1e-20,
        stft_pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        if frame_splicing != 1:
            raise ValueError(f"frame_splicing={frame_splicing}: only 1 is supported (as upstream)")
        if normalize not in ("per_feature", "all_features", "none"):
            raise ValueError(f"normalize={normalize!r}: use per_feature, all_features or none")
        if length_rounding not in ("ceil", "floor"):
            raise ValueError(f"length_rounding={length_rounding!r}: use ceil or floor")
        windows = {
            "hann": torch.hann_window,
            "hamming": torch.hamming_window,
            "blackman": torch.blackman_window,
            "bartlett": torch.bartlett_window,
        }
        if window not in windows:
            raise ValueError(f"window={window!r}: use one of {sorted(windows)}")

        self.sample_rate = sample_rate
        self.win_length = int(sample_rate * window_size)  # 320 samples = 20 ms
        self.hop_length = int(sample_rate * window_stride)  # 160 samples = 10 ms
        self.n_fft = n_fft or 2 ** math.ceil(math.log2(self.win_length))
        self.normalize = normalize
        self.preemph = preemph
        self.n_filt = n_filt
        self.log = log
        self.dither = dither
        self.dither_at_eval = dither_at_eval
        self.pad_align = pad_align
        self.pad_to_max_duration = pad_to_max_duration
        self.max_duration = max_duration
        self.length_rounding = length_rounding
        self.log_zero_guard = log_zero_guard
        self.stft_pad_mode = stft_pad_mode
        # The longest utterance's frame count, for fixed-shape batches (as upstream's BaseFeatures:
        # 16.7 s -> 1669 frames).
        self.max_length = (
            1 + math.ceil((max_duration * sample_rate - self.win_length) / self.hop_length)
            if math.isfinite(max_duration)
            else None
        )

        self.register_buffer("window", windows[window](self.win_length, periodic=False))
        fb = slaney_mel_filterbank(sample_rate, self.n_fft, n_filt, lowfreq, highfreq)
        self.register_buffer("fb", torch.from_numpy(fb).unsqueeze(0))  # (1, F, n_fft//2+1)
        self.spec_augment = SpecAugment(**spec_augment) if spec_augment else None
        self.cutout_augment = CutoutAugment(**cutout_augment) if cutout_augment else None

    def feature_lengths(self, audio_lens: torch.Tensor) -> torch.Tensor:
        """Valid frames for ``audio_lens`` samples: ceil(N / hop) (upstream) or N // hop (NeMo)."""
        lens = audio_lens.to(torch.int64)
        if self.length_rounding == "ceil":
            return torch.div(lens + self.hop_length - 1, self.hop_length, rounding_mode="floor")
        return torch.div(lens, self.hop_length, rounding_mode="floor")

    def _normalize(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        if self.normalize == "none":
            return x
        valid = (torch.arange(x.size(-1), device=x.device)[None, :] < lens[:, None]).to(x.dtype)
        if self.normalize == "all_features":
            valid = valid[:, None, :].expand_as(x)
            count = valid.sum(dim=(1, 2), keepdim=True)
            mean = (x * valid).sum(dim=(1, 2), keepdim=True) / count.clamp(min=1)
            var = (((x - mean) * valid) ** 2).sum(dim=(1, 2), keepdim=True) / (count - 1).clamp(
                min=1
            )
            return normalize_with(x, mean, var.sqrt())
        valid = valid[:, None, :]
        count = valid.sum(dim=2, keepdim=True)
        mean = (x * valid).sum(dim=2, keepdim=True) / count.clamp(min=1)
        # Unbiased std over the valid frames (upstream's normalize_batch).
        var = (((x - mean) * valid) ** 2).sum(dim=2, keepdim=True) / (count - 1).clamp(min=1)
        return normalize_with(x, mean, var.sqrt())

    @torch.no_grad()
    def compute(
        self, audio: torch.Tensor, audio_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features before padding and augmentation: (B, F, 1 + N // hop) with zeros past the lengths."""
        x = audio.to(torch.promote_types(audio.dtype, torch.float32))  # fp32, or fp64 when given
        lens = self.feature_lengths(audio_lens.to(x.device))
        if self.dither > 0 and (self.training or self.dither_at_eval):
            x = x + self.dither * torch.randn_like(x)
        if self.preemph:
            x = torch.cat([x[:, :1], x[:, 1:] - self.preemph * x[:, :-1]], dim=1)
        spec = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window.to(x.dtype),
            center=True,
            pad_mode=self.stft_pad_mode,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        spec = torch.view_as_real(spec)
        power = spec[..., 0] ** 2 + spec[..., 1] ** 2  # (B, n_fft//2+1, T)
        x = torch.matmul(self.fb.to(x.dtype), power)  # (B, F, T)
        if self.log:
            x = torch.log(x + self.log_zero_guard)
        x = self._normalize(x, lens)
        invalid = torch.arange(x.size(-1), device=x.device)[None, :] >= lens[:, None]
        x = x.masked_fill(invalid[:, None, :], 0.0)
        return x, lens

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Right-pad time with zeros to ``max_length`` (if fixed) and then to a multiple of pad_align."""
        n_frames = x.size(-1)
        if self.pad_to_max_duration and self.max_length is not None:
            n_frames = max(n_frames, self.max_length)
        if self.pad_align > 0:
            n_frames = self.pad_align * math.ceil(n_frames / self.pad_align)
        return nn.functional.pad(x, (0, n_frames - x.size(-1)))

    def forward(
        self, audio: torch.Tensor, audio_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, lens = self.compute(audio, audio_lens)
        x = self.pad(x)
        if self.training:
            if self.cutout_augment is not None:
                x = self.cutout_augment(x, lens)
            if self.spec_augment is not None:
                x = self.spec_augment(x, lens)
        return x.to(audio.dtype), lens
