"""Audio loading and waveform-level augmentation.

Everything here works on 1-D float32 numpy arrays of mono samples in [-1, 1]. The model runs at
16 kHz; files at other rates are resampled on load, multi-channel files are averaged to mono (upstream
Jasper averaged over the wrong axis: docs/upstream.md#u22).

Speed perturbation follows DALI's semantics (docs/upstream.md#speed-perturbation): the signal
is resampled by the drawn factor s and then read as 16 kHz again, so its length is multiplied by s
and pitch and tempo change together. The PyTorch data path and the DALI path therefore augment
alike, and they do it for every utterance by default (upstream's PyTorch path fired with p=0.1
only: docs/upstream.md#u19).

Decoders: libsndfile (``soundfile``) reads WAV, FLAC and OGG (Vorbis, and Opus from libsndfile
1.0.29 on); every other container and codec (MP3, M4A/MP4 with AAC, ``.opus``, WebM, ...) goes
through FFmpeg's decoders as PyAV (``av``, whose wheels bundle FFmpeg) exposes them, and so does a
WAV/FLAC/OGG file that libsndfile cannot open. Encoder delay ("priming" samples of MP3, AAC and
Opus) is dropped by FFmpeg wherever the file says how much there is (LAME/Xing header, Opus
pre-skip, MP4 edit list).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000  # Hz, what every model of the recipe expects
TRIM_TOP_DB = 60.0  # dB below the loudest frame that counts as silence (upstream's trim)
# Read with libsndfile; other extensions, and files libsndfile refuses, with PyAV (FFmpeg).
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg")
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + (".opus", ".mp3", ".m4a", ".aac")  # what folders list
CONVERT_HINT = (
    "re-encode it from its source (e.g. ffmpeg -i SOURCE -ac 1 -ar 16000 OUT.wav) or leave it out"
)


class AudioLoadError(RuntimeError):
    """An audio file is missing, unreadable, empty or damaged; the message names the file."""


def load_audio(
    path: str | Path,
    target_sr: int = SAMPLE_RATE,
    offset: float = 0.0,
    duration: float | None = None,
    trim_silence: bool = False,
) -> np.ndarray:
    """Read an audio file (WAV, FLAC, OGG/Opus, MP3, M4A/AAC, ...) as mono float32 at ``target_sr``.

    Args:
        path: the audio file.
        target_sr: output sample rate in Hz; other rates are resampled.
        offset: seconds to skip at the start.
        duration: seconds to read (``None``: to the end).
        trim_silence: drop leading and trailing audio quieter than ``TRIM_TOP_DB`` below the peak.

    Raises:
        AudioLoadError: the file is missing, cannot be decoded, holds no samples, or holds NaN or
            infinite samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioLoadError(f"audio file not found: {path}")
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
        try:
            samples, sr = _read_soundfile(path, offset, duration)
        except AudioLoadError as e:
            # A misnamed file (MP3 or AAC data in a .wav), or Opus with an old libsndfile.
            samples, sr = _read_av(path, offset, duration, soundfile_error=str(e))
            if samples.size == 0:
                raise  # FFmpeg found no audio either: libsndfile's reason says more
    else:
        samples, sr = _read_av(path, offset, duration)
    if samples.size == 0:
        raise AudioLoadError(f"audio file {path} holds no samples")
    check_finite(samples, str(path))
    # (frames, channels) -> mono: average the channels, not the frames.
    samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if sr != target_sr:
        samples = resample(samples, sr, target_sr)
    if trim_silence:
        samples = trim_silence_db(samples, TRIM_TOP_DB)
    return np.ascontiguousarray(samples, dtype=np.float32)


def check_finite(samples: np.ndarray, name: str) -> None:
    """Raise :class:`AudioLoadError` naming ``name`` when ``samples`` hold NaN or infinity (a
    float WAV written from a failed computation): the features and the transcript would be NaN or
    silently empty."""
    bad = ~np.isfinite(samples)
    if bad.any():
        raise AudioLoadError(
            f"{name}: {int(bad.sum())} of {samples.size} samples are NaN or infinite: the audio "
            "is damaged; recreate the file from its source"
        )


def _read_soundfile(path: Path, offset: float, duration: float | None) -> tuple[np.ndarray, int]:
    """``(samples (frames, channels) float32, sample rate)`` through libsndfile."""
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            if offset > 0:
                f.seek(int(offset * sr))
            frames = -1 if duration is None else math.ceil(duration * sr)
            return f.read(frames=frames, dtype="float32", always_2d=True), sr
    except (RuntimeError, sf.LibsndfileError, ValueError) as e:
        raise AudioLoadError(f"cannot read audio file {path}: {e}") from e


def _read_av(
    path: Path, offset: float, duration: float | None, soundfile_error: str | None = None
) -> tuple[np.ndarray, int]:
    """``(samples (frames, channels) float32, sample rate)`` of the first audio stream, decoded by
    FFmpeg through PyAV. The whole stream is decoded and then cut to ``offset``/``duration``
    (exact to the sample, unlike seeking in compressed streams)."""
    try:
        import av
    except ImportError:
        raise AudioLoadError(
            f"cannot read {path}: {path.suffix or 'this'} files are decoded with PyAV, which is "
            f"not installed (pip install av; it is in requirements.txt)"
            + (f"; libsndfile said: {soundfile_error}" if soundfile_error else "")
        ) from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioLoadError(f"{path} holds no audio stream ({CONVERT_HINT})")
            stream = container.streams.audio[0]
            sr = stream.codec_context.sample_rate
            # Planar float32 at the stream's rate, channels kept: they are averaged by the caller.
            to_float = av.AudioResampler(format="fltp", rate=sr)
            chunks = [
                out.to_ndarray()
                for frame in container.decode(stream)
                for out in to_float.resample(frame)
            ]
            chunks += [out.to_ndarray() for out in to_float.resample(None)]
    except av.FFmpegError as e:
        reason = f"{e}" + (f"; libsndfile said: {soundfile_error}" if soundfile_error else "")
        raise AudioLoadError(
            f"cannot decode audio file {path}: it is damaged, truncated or not audio ({reason}); "
            f"{CONVERT_HINT}"
        ) from e
    if not chunks:
        return np.zeros((0, 1), np.float32), sr
    samples = np.concatenate(chunks, axis=1).T  # (frames, channels)
    start = int(offset * sr) if offset > 0 else 0
    stop = None if duration is None else start + math.ceil(duration * sr)
    return samples[start:stop], sr


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
