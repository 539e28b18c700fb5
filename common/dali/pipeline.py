"""The DALI graph: encoded audio -> log-mel spectrogram, batch-padded (docs/upstream.md#dali-path).

Inputs come from a Python source (:class:`BatchSource`) that yields, per batch, the encoded files'
bytes, their utterance indices and, when set, a speed factor and an offset span per utterance. The
graph, per utterance::

    decode (+ resample to s * 16 kHz: online speed perturbation) -> [offset slice] -> [trim at -60 dB]
    -> [.gpu()] -> [dither] -> pre-emphasis -> |STFT|^2 -> mel -> ln(x + guard) -> pad to batch max

and it returns ``(log_mel (B, F, T_max), samples (B, 1) int64, index (B,) int64)``. The per-feature
normalisation, zeroing beyond the length, alignment padding and SpecAugment run in torch after the
pipeline (:mod:`common.dali.data_loader`), with the very code of :class:`FilterbankFeatures`.

Every DALI import is inside the functions: importing this module does not need DALI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from common.audio import TRIM_TOP_DB
from common.features import FilterbankFeatures

# The pipeline's outputs, in order: log-mel (B, F, T_max) before normalisation, the trimmed length
# in samples (B, 1), the utterance index (B,).
OUTPUT_NAMES: Sequence[str] = ("feats", "samples", "index")


@dataclass
class BatchPlan:
    """What the pipeline reads in one batch: one entry per utterance.

    ``speeds``: resampling factor s per utterance (None: no speed perturbation). ``offsets`` and
    ``spans``: start and length in seconds of the part to keep (None: the whole file).
    """

    paths: list[str]
    indices: list[int]
    speeds: list[float] | None = None
    offsets: list[float] | None = None
    spans: list[float] | None = None


@dataclass
class BatchSource:
    """The pipeline's external source: ``source(i)`` returns batch ``i`` of the current ``plan``.

    Called by DALI in the Python thread that runs the pipeline, in iteration order, ahead of
    consumption (prefetching); raising ``StopIteration`` ends DALI's epoch. The loader replaces
    ``plan`` between epochs (before ``reset()``), and empties it to end an epoch early.
    """

    plan: list[BatchPlan] = field(default_factory=list)
    speed: bool = False
    offset: bool = False

    def __call__(self, iteration: int) -> tuple[np.ndarray | list[np.ndarray], ...]:
        if iteration >= len(self.plan):
            raise StopIteration
        batch = self.plan[iteration]
        # np.fromfile: the encoded file as uint8; decoding happens in DALI's threads.
        out: list = [
            [np.fromfile(p, dtype=np.uint8) for p in batch.paths],
            np.asarray(batch.indices, dtype=np.int64),
        ]
        if self.speed:
            out.append(np.asarray(batch.speeds, dtype=np.float32))
        if self.offset:
            out.append(np.asarray(batch.offsets, dtype=np.float32))
            out.append(np.asarray(batch.spans, dtype=np.float32))
        return tuple(out)


def build_pipeline(
    source: BatchSource,
    features: FilterbankFeatures,
    *,
    batch_size: int,
    device: str,
    device_id: int | None,
    num_threads: int,
    seed: int,
    trim_silence: bool,
    dither: float,
    lowfreq: float = 0.0,
    highfreq: float | None = None,
    prefetch_queue_depth: int = 2,
):
    """A built DALI ``Pipeline`` computing unnormalised log-mel features of ``features``' settings.

    ``device="cpu"`` runs everything on the CPU (``device_id`` may be None: no GPU needed);
    ``"gpu"`` decodes and trims on the CPU and runs the rest on GPU ``device_id`` (as upstream's
    ``DaliPipeline``).
    ``dither`` is the noise amplitude to add (0: none); ``seed`` seeds the pipeline's RNG.
    ``lowfreq``/``highfreq`` (Hz; None: Nyquist) are the mel range ``features`` was built with (the
    ``filterbank_features`` keys of the same names).
    """
    from common.dali import require_dali

    require_dali()
    from nvidia.dali import fn, pipeline_def, types

    if device not in ("cpu", "gpu"):
        raise ValueError(f"device={device!r}: use 'cpu' or 'gpu'")
    if device == "gpu" and device_id is None:
        raise ValueError("device='gpu' needs a device_id (the CUDA device index)")
    sample_rate = float(features.sample_rate)
    # Symmetric window of FilterbankFeatures (torch.hann_window(320, periodic=False)); DALI's own
    # default Hann is periodic-like, 0.5(1-cos(2pi(n+0.5)/N)) (docs/upstream.md#pytorch-vs-dali).
    window = features.window.double().tolist()
    freq_high = float(highfreq) if highfreq else sample_rate / 2.0

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch_queue_depth,
    )
    def audio_features():
        outputs = fn.external_source(
            source=source,
            num_outputs=2 + source.speed + 2 * source.offset,
            batch=True,
            dtype=[types.UINT8, types.INT64] + [types.FLOAT] * (source.speed + 2 * source.offset),
        )
        encoded, index = outputs[0], outputs[1]
        rest = list(outputs[2:])
        # Resampling to s * 16 kHz and reading the result as 16 kHz multiplies the length by s
        # (slower and lower for s > 1): DALI's online speed perturbation
        # (docs/upstream.md#speed-perturbation).
        rate = rest.pop(0) * sample_rate if source.speed else sample_rate
        audio, _ = fn.decoders.audio(encoded, dtype=types.FLOAT, downmix=True, sample_rate=rate)
        if source.offset:
            offset, span = rest
            audio = fn.slice(
                audio,
                fn.cast(offset * rate, dtype=types.INT64),
                fn.cast(span * rate, dtype=types.INT64),
                axes=[0],
                out_of_bounds_policy="trim_to_shape",
            )
        if trim_silence:
            begin, length = fn.nonsilent_region(audio, cutoff_db=-TRIM_TOP_DB)
            # An all-silent recording (length 0) is kept whole rather than emptied.
            n = audio.shape(dtype=types.INT64)
            silent = fn.cast(length == 0, dtype=types.INT64)
            begin = fn.cast(begin, dtype=types.INT64) * (1 - silent)
            length = fn.cast(length, dtype=types.INT64) * (1 - silent) + n * silent
            audio = fn.slice(audio, begin, length, axes=[0])
        samples = audio.shape(dtype=types.INT64)  # (1,) per utterance, on the CPU
        if device == "gpu":
            audio = audio.gpu()
        if dither > 0:
            audio = audio + fn.random.normal(audio, device=device) * dither
        if features.preemph:
            # border "zero": y[0] = x[0], as FilterbankFeatures (DALI's default "clamp" gives 0.03 x[0]).
            audio = fn.preemphasis_filter(audio, preemph_coeff=features.preemph, border="zero")
        spec = fn.spectrogram(
            audio,
            nfft=features.n_fft,
            window_length=features.win_length,
            window_step=features.hop_length,
            window_fn=window,
            center_windows=True,
            reflect_padding=features.stft_pad_mode == "reflect",
            power=2,
        )
        mel = fn.mel_filter_bank(
            spec,
            sample_rate=sample_rate,
            nfilter=features.n_filt,
            freq_low=float(lowfreq or 0.0),
            freq_high=freq_high,
            normalize=True,  # slaney area normalisation: each triangle integrates to 1
            mel_formula="slaney",
        )
        if features.log:
            # ln(x + guard): the guard is added first, so DALI's clamp at the guard never acts.
            guard = features.log_zero_guard
            mel = fn.to_decibels(
                mel + guard,
                multiplier=math.log(10.0),
                reference=1.0,
                cutoff_db=math.log(guard) if guard > 0 else -1e4,
            )
        mel = fn.pad(mel, axes=[1], fill_value=0.0)
        return mel, samples, index

    pipe = audio_features()
    pipe.build()
    return pipe
