"""The three deployed components as export-ready modules, and the export manifest.

Imported by the scripts of this folder (``export.py``, ``model_repository.py``) as a plain module:
running ``python triton/<script>.py`` puts this folder on ``sys.path``; never imported as
``triton.*`` (see ``triton/__init__.py``).

The pipeline is upstream's (NVIDIA DeepLearningExamples, ``PyTorch/SpeechRecognition/Jasper/
triton/README.md``): feature extractor -> acoustic model -> greedy decoder. Unlike upstream, whose
acoustic model was the no-mask graph with one input (``triton/jasper_module.py``, ``init_model``),
lengths travel with the tensors: the acoustic model takes the feature lengths and zeroes the frames
past them before every convolution, so an utterance padded into a batch gets the outputs it gets
alone, and the decoder blanks the frames past the encoder lengths. The feature extractor gives each
utterance of a padded batch the features it gets alone too (:class:`FeatureExtractor`), so a
padded batch is transcribed exactly as its recordings one by one, and it puts ``pad_leading`` zero
frames in front, as ``inference.py --pad_leading`` (default 16) does.

The TorchScript modules check their inputs (:func:`check_inputs`) and raise an error that says
what is wrong: lengths outside ``[shortest, size]``, NaN or infinity, a batch without rows. The
ONNX files cannot carry these checks; the CPU server's Python backend makes the same checks before
it runs any file (``python_backend/model.py``) and answers INVALID_ARGUMENT.

Tensor names are upstream's ``input__i`` / ``output__i`` (what Triton's libtorch backend expects).
Shape legend: B = batch, N = audio samples (16 kHz), F = mel bins, T = 10 ms feature frames,
T_enc = encoder frames, K = classes (labels + the CTC blank, last).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from common.features import FilterbankFeatures
from jasper import config
from jasper.model import Jasper, MaskedConv1d, greedy_decode
from jasper.prepare import fold_batchnorm
from jasper.transcribe import shortest_audio

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
MANIFEST_NAME = "export.json"

# Upstream's model names (the folders of its triton/model_repo_configs/) plus the ONNX forms of the
# extractor and the decoder, which upstream did not export. The acoustic model's TensorRT engine is
# built from its ONNX file.
FEATURE_EXTRACTOR = {"ts-trace": "feature-extractor-ts-trace", "onnx": "feature-extractor-onnx"}
ACOUSTIC_MODEL = {
    "ts-trace": "jasper-ts-trace",
    "onnx": "jasper-onnx",
    "tensorrt": "jasper-tensorrt",
}
DECODER = {"ts-script": "decoder-ts-script", "onnx": "decoder-onnx"}
# The extractor and decoder that every ensemble of model_repository.py runs (upstream's pair).
# Their ONNX forms serve no model of the repository: export.py writes them only when asked by name.
SERVED_EXTRACTOR = FEATURE_EXTRACTOR["ts-trace"]
SERVED_DECODER = DECODER["ts-script"]
FILE_NAMES = {
    "ts-trace": "model.pt",
    "ts-script": "model.pt",
    "onnx": "model.onnx",
    "tensorrt": "model.plan",
}


@torch.jit.script
def check_inputs(
    what: str, x: torch.Tensor, lens: torch.Tensor, axis: int, shortest: int
) -> torch.Tensor:
    """``lens`` after checking that they are one length per row of ``x`` within
    ``[shortest, x.size(axis)]``, and that ``x`` is finite; else ``ValueError`` saying what is
    wrong. Scripted, so that a traced module keeps the checks (a trace would drop Python ``if``s
    on tensor values); it returns ``lens`` because a trace keeps only calls whose output is used."""
    if x.size(0) == 0 or lens.dim() != 1 or lens.size(0) != x.size(0):
        raise ValueError(f"{what}: {lens.numel()} lengths for a batch of {x.size(0)} rows")
    n = x.size(axis)
    low, high = int(lens.min()), int(lens.max())
    if low < shortest or high > n:
        raise ValueError(
            f"{what}: lengths from {low} to {high} outside [{shortest}, {n}] (the shortest "
            "input served, the size sent)"
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: the input holds NaN or infinite values")
    return lens


def checked(
    what: str, x: torch.Tensor, lens: torch.Tensor, axis: int, shortest: int
) -> torch.Tensor:
    """:func:`check_inputs`, except while ``torch.export`` (the ONNX exporter) traces the module:
    an ONNX graph cannot hold a script function."""
    # TorchScript skips a block under `if not torch.jit.is_scripting()` only in this nested form.
    if not torch.jit.is_scripting():  # noqa: SIM102
        if torch.compiler.is_exporting():
            return lens
    return check_inputs(what, x, lens, axis, shortest)


def reflect_ends(x: torch.Tensor, lens: torch.Tensor, width: int) -> torch.Tensor:
    """(B, N) -> (B, N + width): each row's ``width`` samples after its length are the reflection
    of its last samples (``x[n - 1 + k] = x[n - 1 - k]``), what ``torch.stft(center=True,
    pad_mode="reflect")`` puts after the row when it is alone, instead of the batch's zero padding;
    zeros further on. Needs ``lens > width`` (``check_inputs`` refuses shorter rows)."""
    pos = torch.arange(x.size(1) + width, device=x.device)[None, :]
    last = lens.to(torch.int64)[:, None] - 1
    index = torch.where(pos <= last, pos, 2 * last - pos).clamp(0, x.size(1) - 1)
    inside = (pos <= last + width).to(x.dtype)
    return x.gather(1, index) * inside


class FeatureExtractor(nn.Module):
    """``(audio (B, N) float, num_samples (B,) int32) -> (features (B, F, T), lengths (B,) int32)``.

    :meth:`common.features.FilterbankFeatures.forward` in eval mode (no dither, no augmentation),
    for each utterance as if it were alone: with ``torch.stft``'s centred reflect padding, the
    last frames of an utterance shorter than the batch would see the batch's zero padding after
    it instead of its own reflected end, and every feature would shift through the per-utterance
    normalisation (log-prob differences up to 0.02 on the reference model). So the extractor
    pre-emphasises the audio itself (FilterbankFeatures' formula, before the reflection, as the
    STFT pads the pre-emphasised signal), reflects each utterance's end (:func:`reflect_ends`) and
    runs the rest of FilterbankFeatures on that. Then ``pad_leading`` zero frames (the feature
    mean) go in front, as ``inference.py --pad_leading`` does, and the lengths count them.

    T is the longest utterance's frames plus ``pad_leading``, rounded up to a multiple of
    ``pad_align``; frames past each length are zero. Features come out in the audio's dtype; the
    arithmetic inside is fp32 whatever the dtype (the audio is cast up), so an fp16 extractor is
    fp16 at its interface only. ``pad_to_max_duration`` is not applied: padding never changes the
    valid frames of a model that takes lengths. Utterances shorter than
    :func:`jasper.transcribe.shortest_audio` are refused (:func:`check_inputs`).
    """

    def __init__(self, features: FilterbankFeatures, pad_leading: int = 0) -> None:
        super().__init__()
        self.features = copy.deepcopy(features).eval()
        self.preemph = float(self.features.preemph or 0.0)
        self.features.preemph = 0.0  # applied in forward, before the ends are reflected
        reflect = self.features.stft_pad_mode == "reflect"
        # Constant (zero) padding is what the batch's padding is already.
        self.edge = self.features.n_fft // 2 if reflect else 0
        self.hop = int(self.features.hop_length)
        self.shortest = shortest_audio(self.features)
        self.pad_leading = int(pad_leading)
        self.pad_align = max(int(features.pad_align), 1)

    def forward(
        self, audio: torch.Tensor, num_samples: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lens = checked("audio", audio, num_samples, 1, self.shortest).to(torch.int64)
        x = audio.to(torch.promote_types(audio.dtype, torch.float32))
        n_samples = x.size(1)
        if self.preemph:
            x = torch.cat([x[:, :1], x[:, 1:] - self.preemph * x[:, :-1]], dim=1)
        if self.edge:
            x = reflect_ends(x, lens, self.edge)
        x, feat_lens = self.features.compute(x, lens)
        # The frames FilterbankFeatures gives the batch without the reflected ends.
        x = x[..., : n_samples // self.hop + 1]
        x = nn.functional.pad(x, (self.pad_leading, 0))
        # FilterbankFeatures.pad computes the padded length with Python arithmetic, which a trace
        # would freeze at the example's length. Padding by pad_align - 1 and cutting at a length
        # computed from the (traced) frame count keeps the time axis dynamic.
        n_frames = x.size(-1)
        padded = (n_frames + self.pad_align - 1) // self.pad_align * self.pad_align
        x = nn.functional.pad(x, (0, self.pad_align - 1))[..., :padded]
        return x.to(audio.dtype), (feat_lens + self.pad_leading).to(torch.int32)


class AcousticModel(nn.Module):
    """``(features (B, F, T), lengths (B,) int32) -> (log_probs (B, T_enc, K) float32,
    enc_lengths (B,) int32)``: the checkpoint's :class:`jasper.model.Jasper` with BatchNorm
    folded into the convolutions and every convolution masked, cast to ``dtype`` (the log-softmax
    stays fp32, as in the PyTorch model).

    Masks are switched on whatever the config says: on the valid frames a masked model computes
    what the no-mask model computes on the unpadded utterance (the no-mask model's outputs depend
    on the padding, so a batch would not equal single runs).
    """

    def __init__(self, model: Jasper, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        fold_batchnorm(model)
        for m in model.modules():
            if isinstance(m, MaskedConv1d):
                m.masked = True
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lens = checked("features", feats, lens, 2, 1)
        log_probs, enc_lens = self.model(feats.to(self.dtype), lens)
        return log_probs, enc_lens.to(torch.int32)


class GreedyDecoder(nn.Module):
    """``(log_probs (B, T_enc, K), enc_lengths (B,) int32) -> ids (B, T_enc) int32``: the per-frame
    argmax, the blank (K - 1) past each length (:func:`jasper.model.greedy_decode`). The CTC
    collapse and the labels are the client's (:func:`common.metrics.ctc_greedy_text`)."""

    def forward(self, log_probs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return greedy_decode(log_probs, checked("log-probs", log_probs, lens, 1, 1))


@dataclass
class ExportedFile:
    """One exported component: its Triton model name, format and file (relative to the manifest),
    and the largest difference to the PyTorch module measured right after export."""

    name: str
    component: str  # feature-extractor | acoustic-model | decoder
    format: str  # ts-trace | ts-script | onnx | tensorrt
    file: str
    check: dict = field(default_factory=dict)
    # Where it was traced or exported: a trace on the CPU holds CPU constants (device arguments
    # of the tensors it creates) and fails on a GPU. Empty for exports that predate the field.
    device: str = ""


@dataclass
class ExportManifest:
    """What ``export.py`` wrote for one precision (``<dir>/<precision>/export.json``): enough for
    the model repository generator and the client to work without the checkpoint."""

    checkpoint: str
    ema: bool
    precision: str
    device: str
    labels: list[str]
    sample_rate: int
    trim_silence: bool
    n_mels: int
    max_duration: float  # seconds: the TensorRT profile's longest utterance, the server's limit
    # Zero frames the extractor puts in front (inference.py's --pad_leading); 0 for exports that
    # predate the setting, whose extractor put none.
    pad_leading: int = 0
    min_num_samples: int = 1  # the shortest audio the extractor serves (shortest_audio)
    files: list[ExportedFile] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return config.num_classes(self.labels)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ExportManifest:
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: run triton/export.py (triton/scripts/export_model.sh) first"
            )
        raw = json.loads(path.read_text())
        raw["files"] = [ExportedFile(**f) for f in raw.get("files", [])]
        return cls(**raw)

    def find(self, name: str) -> ExportedFile | None:
        return next((f for f in self.files if f.name == name), None)

    def add(self, exported: ExportedFile) -> None:
        self.files = [f for f in self.files if f.name != exported.name] + [exported]


def frames_for_seconds(seconds: float, features: FilterbankFeatures) -> int:
    """Feature frames (padded to ``pad_align``) of ``seconds`` of audio."""
    n = math.ceil(seconds * features.sample_rate / features.hop_length)
    align = max(int(features.pad_align), 1)
    return align * math.ceil(n / align)
