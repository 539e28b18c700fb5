"""Audio loading and waveform-level augmentation.

Everything here works on 1-D float32 numpy arrays of mono samples in [-1, 1]. The model runs at
16 kHz; files at other rates are resampled on load, multi-channel files are averaged to mono (upstream
Jasper averaged over the wrong axis: spec 14.22).

Speed perturbation follows DALI's semantics (spec 5.3 step 3, 5.5): the signal is resampled by the
drawn factor s and then read as 16 kHz again, so its length is multiplied by s and pitch and tempo
change together. The PyTorch data path and the DALI path therefore augment alike, and they do it for
every utterance by default (upstream's PyTorch path fired with p=0.1 only: spec 14.19).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000  # Hz, what every model of the recipe expects
TRIM_TOP_DB = 60.0  # dB below the loudest frame that counts as silence (upstream's trim)


class AudioLoadError(RuntimeError):
    """An audio file is missing, unreadable or empty; the message names the file."""


def load_audio(
    path: str | Path,
    target_sr: int = SAMPLE_RATE,
    offset: float = 0.0,
    duration: float | None = None,
    trim_silence: bool = False,
) -> np.ndarray:
    """Read a WAV/FLAC/OGG file as mono float32 at ``target_sr``.

    Args:
        path: the audio file.
        target_sr: output sample rate in Hz; other rates are resampled.
        offset: seconds to skip at the start.
        duration: seconds to read (``None``: to the end).
        trim_silence: drop leading and trailing audio quieter than ``TRIM_TOP_DB`` below the peak.

    Raises:
        AudioLoadError: the file is missing, cannot be decoded, or holds no samples.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioLoadError(f"audio file not found: {path}")
    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            if offset > 0:
                f.seek(int(offset * sr))
            frames = -1 if duration is None else math.ceil(duration * sr)
            samples = f.read(frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, ValueError) as e:
        raise AudioLoadError(f"cannot read audio file {path}: {e}") from e
    if samples.size == 0:
        raise AudioLoadError(f"audio file {path} holds no samples")
    # (frames, channels) -> mono: average the channels, not the frames.
    samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if sr != target_sr:
        samples = resample(samples, sr, target_sr)
    if trim_silence:
        samples = trim_silence_db(samples, TRIM_TOP_DB)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, orig_sr: float, target_sr: float) -> np.ndarray:
    """Band-limited resampling (soxr, high quality: what librosa.resample uses by default)."""
    import soxr

    if orig_sr == target_sr:
        return samples
    return soxr.resample(samples.astype(np.float32, copy=False), orig_sr, target_sr, quality="HQ")


def trim_silence_db(
    samples: np.ndarray, top_db: float = TRIM_TOP_DB, frame: int = 2048, hop: int = 512
) -> np.ndarray:
    """Cut leading/trailing silence like ``librosa.effects.trim(top_db=60)`` (upstream's trim).

    A frame is voiced when its RMS is within ``top_db`` of the loudest frame's RMS. Frames are
    centred (``frame // 2`` zeros of padding at both ends), as librosa's RMS does; the kept span runs
    from the first voiced frame's sample index to the last voiced frame's end.
    """
    if samples.size == 0:
        return samples
    padded = np.pad(samples, frame // 2)
    n_frames = 1 + (padded.size - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n_frames)[:, None]
    rms = np.sqrt(np.mean(np.abs(padded[idx]) ** 2, axis=1))
    # Amplitude dB relative to the loudest frame, with librosa's floor of 1e-5 on the amplitude.
    amin = 1e-5
    rms_db = 20.0 * np.log10(np.maximum(rms, amin)) - 20.0 * np.log10(max(rms.max(), amin))
    voiced = np.flatnonzero(rms_db > -top_db)
    if voiced.size == 0:
        return samples[:0]
    start = voiced[0] * hop
    end = min(samples.size, (voiced[-1] + 1) * hop)
    return samples[start:end]


@dataclass
class SpeedPerturbation:
    """Resample by a factor s ~ U[min_rate, max_rate] (or s in {min_rate, 1, max_rate} when
    ``discrete``) and read the result at the original rate: the length is multiplied by s.

    ``p`` is the probability of perturbing an utterance; 1.0 matches DALI. Set ``p: 0.1`` in the
    config to reproduce upstream's PyTorch loader.
    """

    min_rate: float = 0.85
    max_rate: float = 1.15
    discrete: bool = False
    p: float = 1.0

    def draw(self, rng: np.random.Generator) -> float:
        """The factor for one utterance (1.0 when the coin says no perturbation)."""
        if rng.random() >= self.p:
            return 1.0
        if self.discrete:
            return float(rng.choice([self.min_rate, 1.0, self.max_rate]))
        return float(rng.uniform(self.min_rate, self.max_rate))

    @staticmethod
    def apply(samples: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        if factor == 1.0:
            return samples
        return resample(samples, sample_rate, factor * sample_rate)

    def __call__(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(samples, self.draw(rng))


@dataclass
class GainPerturbation:
    """Scale by a gain ~ U[min_gain_dbfs, max_gain_dbfs] dB with probability ``p``."""

    min_gain_dbfs: float = -10.0
    max_gain_dbfs: float = 10.0
    p: float = 0.1

    def __call__(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p:
            return samples
        gain_db = rng.uniform(self.min_gain_dbfs, self.max_gain_dbfs)
        return (samples * 10.0 ** (gain_db / 20.0)).astype(np.float32)


@dataclass
class ShiftPerturbation:
    """Shift by U[min_shift_ms, max_shift_ms] milliseconds with probability ``p``; the length is
    kept and the vacated samples are zero."""

    min_shift_ms: float = -5.0
    max_shift_ms: float = 5.0
    p: float = 0.1

    def __call__(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p:
            return samples
        shift = int(rng.uniform(self.min_shift_ms, self.max_shift_ms) * SAMPLE_RATE / 1000)
        if shift == 0 or abs(shift) >= samples.size:
            return samples
        out = np.zeros_like(samples)
        if shift > 0:  # content moves earlier: the tail becomes silence
            out[:-shift] = samples[shift:]
        else:
            out[-shift:] = samples[:shift]
        return out
