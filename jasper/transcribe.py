"""Transcribe audio with a trained checkpoint: the library behind ``inference.py``, the notebook
and the quick start.

    from jasper.transcribe import Transcriber
    t = Transcriber.from_checkpoint("Jasper_best_checkpoint.pt")  # config and labels inside
    print(t.transcribe_file("data/audio/example1.wav").text)

Audio of any sample rate, mono or multi-channel, WAV/FLAC/OGG/Opus/MP3/M4A (AAC), is read by
:func:`common.audio.load_audio` (resampled to the model's rate, channels averaged) and turned into
features by the config's ``input_val`` front end, as in evaluation. ``pad_leading`` zero frames go
in front of the features (upstream's ``--pad_leading 16``; zero is the feature mean).

Audio that cannot give a feature frame as the model was trained to see it is refused with
:class:`common.audio.AudioLoadError` naming the file, never transcribed as something else: NaN or
infinite samples, and recordings shorter than :func:`shortest_audio` (the centred STFT
reflect-pads ``n_fft // 2`` samples at each end, which needs more samples than that: 257, about
16 ms at 16 kHz, for the recipe's 512-point FFT; a 10 ms file would crash the STFT).

Long recordings are transcribed in overlapping chunks, so memory does not grow with their length
beyond the samples themselves. Per-feature normalisation statistics are those of the whole
recording (a first pass accumulates them chunk by chunk), and each chunk carries enough context
on both sides to cover the model's receptive field, so a chunked transcription equals the
unchunked one up to floating-point rounding. Frame counts: F = mel bins, T = 10 ms feature frames,
T_enc = encoder frames (T / stride), K = classes (labels + blank, the blank last).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.audio import AUDIO_EXTENSIONS, AudioLoadError, check_finite, load_audio
from common.checkpoint import CheckpointError, load_checkpoint, load_model_state, model_weights
from common.features import FilterbankFeatures, normalize_with
from jasper import config, decoding_settings
from jasper.decoding import BeamDecoder, GreedyDecoder
from jasper.model import Jasper, receptive_field
from jasper.prepare import SpeedOptions, prepare

log = logging.getLogger(__name__)

STFT_MARGIN_FRAMES = 3  # frames at a cut that see reflect padding or a cut pre-emphasis


def load_model(
    ckpt_path: str | Path,
    model_config: str | Path | None = None,
    *,
    ema: bool = False,
    overrides: Sequence[str] = (),
) -> tuple[Jasper, dict]:
    """``(model, cfg)``: the model of a checkpoint in eval mode on the CPU, and its config.

    The config is ``model_config`` when given, else the one stored in the checkpoint (this
    recipe's checkpoints carry ``config`` and ``labels``; upstream's do not). ``.nemo`` files are
    read through :mod:`jasper.nemo` and always use their own config. With ``ema``, the EMA weights are used, or the raw weights
    with a warning when the checkpoint has none.

    Raises:
        CheckpointError: the file is missing or unreadable, there is no config to build the model
            from, or the weights do not fit the config (the first mismatching key and shapes).
        jasper.config.ConfigError: the config file is invalid.
    """
    path = Path(ckpt_path)
    if path.suffix == ".nemo":
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            from jasper import nemo  # the NeMo converter
        except ImportError as e:
            raise CheckpointError(f"{path}: reading .nemo files needs jasper.nemo ({e})") from e
        cfg, state = nemo.load(path)
        ckpt = {"state_dict": state, "config": cfg}
    else:
        ckpt = load_checkpoint(path)
    stored = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    if path.suffix == ".nemo" and model_config is not None:
        log.warning("%s carries its own config; --model_config %s is ignored", path, model_config)
        model_config = None
    if model_config is not None:
        cfg = config.load(model_config)
        source = str(model_config)
    elif stored is not None:
        cfg = stored
        config.validate(cfg, source=f"{path} (stored config)")
        source = f"{path} (stored config)"
    else:
        raise CheckpointError(
            f"{path} stores no config (an upstream checkpoint?): pass the YAML it was trained "
            "with (--model_config / MODEL_CONFIG)"
        )
    if overrides:
        cfg = config.apply_config_overrides(cfg, overrides, source=source)
    stored_labels = ckpt.get("labels")
    if stored_labels is not None and list(stored_labels) != list(cfg["labels"]):
        raise CheckpointError(
            f"{path} was trained with labels {list(stored_labels)} but the config has "
            f"{list(cfg['labels'])}: transcripts would be garbled"
        )
    model = config.build_model(cfg)
    try:
        load_model_state(model, model_weights(ckpt, ema, path), path)
    except CheckpointError as e:
        if stored is None or model_config is None:
            raise
        raise CheckpointError(
            f"{e} The checkpoint stores the config it was trained with: leave out --model_config "
            "(MODEL_CONFIG= for the scripts) to use it."
        ) from None
    return model.eval(), cfg


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The "model" options of the transcription CLIs (``inference.py``, the streaming CLI), as
    :func:`load_model` takes them: ``--ckpt``, ``--model_config``, ``--override_config``,
    ``--ema``. Returns the group, for options of the caller's own."""
    m = parser.add_argument_group("model")
    m.add_argument(
        "--ckpt",
        required=True,
        help="checkpoint: this recipe's, upstream's (.pt) or NeMo's (.nemo)",
    )
    m.add_argument(
        "--model_config", default=None, help="YAML config (default: the one the checkpoint stores)"
    )
    m.add_argument(
        "--override_config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted config override, e.g. input_val.audio_dataset.max_duration=16.7",
    )
    m.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the EMA weights (the raw weights, with a warning, if there are none)",
    )
    return m


def shortest_audio(features: FilterbankFeatures) -> int:
    """The fewest samples ``features`` turns into frames as it does for any longer recording:
    ``n_fft // 2 + 1`` with reflect padding (torch.stft pads ``n_fft // 2`` samples by reflection,
    which needs more samples than that), 1 with constant padding."""
    return features.n_fft // 2 + 1 if features.stft_pad_mode == "reflect" else 1


def audio_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the audio files under directories (recursively, sorted): the
    extensions of :data:`common.audio.AUDIO_EXTENSIONS`, in any case."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {p}")
            out.extend(found)
        else:
            out.append(p)
    return out


@dataclass
class Transcript:
    """One recording's result: its name, text and log-probs (T_enc, K) of the valid frames."""

    name: str
    text: str
    log_probs: torch.Tensor


class Transcriber:
    """CTC transcription of recordings with a model and its config: greedy, or with any decoder
    of :mod:`jasper.decoding` (beam search with an LM).

    Args:
        model: a :class:`jasper.model.Jasper` or a prepared :class:`jasper.prepare.InferenceModel`
            (on ``device``, eval mode).
        cfg: the model's config (labels and the ``input_val`` front end).
        device: where features and the model run.
        pad_leading: zero feature frames put in front of every recording (upstream: 16).
        chunk_seconds: recordings longer than this (plus context) run in chunks of this length.
        context_seconds: audio on each side of a chunk that the model sees but whose outputs are
            discarded; default: the model's receptive field, which makes chunking exact.
        decoder: turns log-probs into text (:meth:`decode`); default: greedy.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: dict,
        device: torch.device | str = "cpu",
        *,
        pad_leading: int = 16,
        chunk_seconds: float = 60.0,
        context_seconds: float | None = None,
        decoder: GreedyDecoder | BeamDecoder | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.labels = list(cfg["labels"])
        self.device = torch.device(device)
        self.pad_leading = pad_leading
        dataset_kw, features_kw = config.input(cfg, "val")
        self.sample_rate = int(dataset_kw["sample_rate"])
        self.trim_silence = bool(dataset_kw["trim_silence"])
        self.features = FilterbankFeatures(**features_kw).eval().to(self.device)
        # The same front end before normalisation: chunks are normalised with whole-file statistics.
        self.log_mel = (
            FilterbankFeatures(**{**features_kw, "normalize": "none"}).eval().to(self.device)
        )
        self.hop = self.features.hop_length
        self.min_samples = shortest_audio(self.features)
        frames_per_second = self.sample_rate / self.hop
        half_width, self.stride = receptive_field(model)
        if context_seconds is None:
            context = half_width + STFT_MARGIN_FRAMES
        else:
            context = round(context_seconds * frames_per_second)
        # Chunk starts and context widths are multiples of the stride so that encoder frames align.
        self.context = self.stride * math.ceil(context / self.stride)
        self.chunk = self.stride * max(1, round(chunk_seconds * frames_per_second / self.stride))
        self.decoder = decoder or GreedyDecoder(self.labels)

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_path: str | Path,
        model_config: str | Path | None = None,
        *,
        ema: bool = False,
        device: torch.device | str | None = None,
        speed: SpeedOptions | None = None,
        overrides: Sequence[str] = (),
        decoding: dict | None = None,
        **kwargs,
    ) -> Transcriber:
        """Load a checkpoint (see :func:`load_model`), prepare it for ``device`` (default: CUDA
        when available) with ``speed`` (default :class:`SpeedOptions`) and wrap it.

        The decoder and ``pad_leading`` follow ``decoding`` (keys of
        :data:`jasper.decoding_settings.DEFAULTS`: ``decoder``, ``lm``, ``lm_alpha`` ...), then
        the checkpoint's decoding settings, then upstream's defaults, as ``inference.py``
        resolves them; a ``pad_leading`` keyword wins over both."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, cfg = load_model(ckpt_path, model_config, ema=ema, overrides=overrides)
        prepared = prepare(model.to(device), speed or SpeedOptions(), inplace=True)
        given = {"pad_leading": kwargs.pop("pad_leading", None), **(decoding or {})}
        settings, _ = decoding_settings.for_checkpoint(ckpt_path, given)
        if "decoder" not in kwargs:
            kwargs["decoder"] = decoding_settings.build(settings, cfg, model)
        return cls(prepared, cfg, device, pad_leading=settings["pad_leading"], **kwargs)

    # ----------------------------------------------------------------------------------------

    def load(self, path: str | Path) -> np.ndarray:
        """The recording as the model hears it: mono float32 at the model's rate, trimmed of
        leading/trailing silence when the config's ``input_val`` says so.

        Raises:
            common.audio.AudioLoadError: missing, unreadable, empty (also after trimming), NaN or
                infinite samples, or too short (:meth:`check`).
        """
        samples = load_audio(path, target_sr=self.sample_rate, trim_silence=self.trim_silence)
        if samples.size == 0:
            raise AudioLoadError(f"audio file {path} holds only silence")
        self.check(samples, str(path), "after trimming silence" if self.trim_silence else "")
        return samples

    def check(self, samples: np.ndarray, name: str, note: str = "") -> None:
        """Refuse audio the model cannot transcribe, naming ``name``: NaN or infinite samples, or
        fewer than ``min_samples`` (see the module docstring).

        Raises:
            common.audio.AudioLoadError: with ``name`` and what is wrong.
        """
        if samples.size < self.min_samples:
            raise AudioLoadError(
                f"{name}: {samples.size / self.sample_rate:.3f} s of audio{' ' + note if note else ''}"
                f" is too short to transcribe (at least {self.min_samples} samples, "
                f"{1000 * self.min_samples / self.sample_rate:.1f} ms at {self.sample_rate} Hz)"
            )
        check_finite(samples, name)

    def _run(self, feats: torch.Tensor) -> torch.Tensor:
        """Log-probs (T_enc, K) of one unpadded feature sequence (F, T)."""
        lens = torch.tensor([feats.size(-1)], device=self.device)
        log_probs, enc_lens = self.model(feats[None], lens)
        return log_probs[0, : int(enc_lens[0])].float()

    @torch.inference_mode()
    def log_probs(self, samples: np.ndarray | torch.Tensor, name: str = "audio") -> torch.Tensor:
        """Per-frame log-probabilities (T_enc, K) of a recording (float32, on the CPU).

        Raises:
            common.audio.AudioLoadError: NaN or infinite samples, or too short (:meth:`check`).
        """
        audio = torch.as_tensor(samples, dtype=torch.float32).reshape(-1).cpu()
        self.check(audio.numpy(), name)
        audio = audio.to(self.device)
        n_frames = int(self.features.feature_lengths(torch.tensor([audio.numel()])))
        if self.pad_leading + n_frames <= self.chunk + 2 * self.context:
            feats, lens = self.features.compute(audio[None], torch.tensor([audio.numel()]))
            feats = nn.functional.pad(feats[0, :, : int(lens[0])], (self.pad_leading, 0))
            return self._run(feats).cpu()
        return self._chunked(audio, n_frames).cpu()

    def _log_mel(self, audio: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Un-normalised log-mel (F, stop - start) of audio frames [start, stop), as the whole
        recording's features would have them: computed from a slice with a few frames of margin."""
        n_audio_frames = int(self.features.feature_lengths(torch.tensor([audio.numel()])))
        lo = max(0, start - STFT_MARGIN_FRAMES)
        hi = min(n_audio_frames, stop + STFT_MARGIN_FRAMES)
        piece = audio[lo * self.hop : hi * self.hop]
        x, _ = self.log_mel.compute(piece[None], torch.tensor([piece.numel()]))
        return x[0, :, start - lo : stop - lo]

    def _statistics(self, audio: torch.Tensor, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (float64, per feature or over all, as the config normalises) of the whole
        recording's log-mel, accumulated chunk by chunk."""
        total = torch.zeros(self.features.n_filt, dtype=torch.float64, device=self.device)
        squares = torch.zeros_like(total)
        for start in range(0, n_frames, self.chunk):
            x = self._log_mel(audio, start, min(n_frames, start + self.chunk)).double()
            total += x.sum(dim=1)
            squares += (x * x).sum(dim=1)
        count = n_frames
        if self.features.normalize == "all_features":
            total, squares, count = (
                total.sum().expand_as(total),
                squares.sum().expand_as(total),
                count * total.numel(),
            )
        mean = total / count
        # Unbiased variance, as FilterbankFeatures' normalisation (upstream's).
        var = (squares - count * mean * mean) / max(count - 1, 1)
        return mean, var.clamp(min=0).sqrt()

    def _chunked(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Log-probs of a long recording, chunk by chunk (see the module docstring)."""
        normalize = self.features.normalize != "none"
        if normalize:
            mean, std = self._statistics(audio, n_frames)
        total = self.pad_leading + n_frames  # frames of the padded sequence the model sees
        outputs = []
        for start in range(0, total, self.chunk):
            stop = min(total, start + self.chunk)
            lo, hi = max(0, start - self.context), min(total, stop + self.context)
            # Frames [lo, hi) of the padded sequence: leading zeros, then audio frames.
            a_lo, a_hi = max(lo - self.pad_leading, 0), hi - self.pad_leading
            x = self._log_mel(audio, a_lo, a_hi)
            if normalize:
                x = normalize_with(x.double(), mean[:, None], std[:, None]).float()
            x = nn.functional.pad(x, (max(self.pad_leading - lo, 0), 0))
            log_probs = self._run(x)
            first = (start - lo) // self.stride
            count = math.ceil(stop / self.stride) - start // self.stride
            outputs.append(log_probs[first : first + count])
        return torch.cat(outputs)

    def decode(self, log_probs: torch.Tensor) -> str:
        """Transcript of log-probs (T_enc, K) by the decoder (default greedy)."""
        return self.decoder.decode(log_probs).text

    def transcribe(self, samples: np.ndarray | torch.Tensor) -> str:
        """Transcript of a recording given as samples at the model's rate."""
        return self.decode(self.log_probs(samples))

    def transcribe_file(self, path: str | Path, name: str | None = None) -> Transcript:
        log_probs = self.log_probs(self.load(path), str(path))
        return Transcript(name or str(path), self.decode(log_probs), log_probs)

    def transcribe_files(self, paths: Iterable[str | Path]) -> Iterator[Transcript]:
        """One :class:`Transcript` per file, in order (directories expand to their audio files)."""
        for path in audio_files(paths):
            yield self.transcribe_file(path)


__all__ = [
    "AUDIO_EXTENSIONS",
    "Transcriber",
    "Transcript",
    "add_checkpoint_arguments",
    "audio_files",
    "load_model",
    "receptive_field",
    "shortest_audio",
]
