"""The three deployed components as export-ready modules, and the export manifest.

Imported by the scripts of this folder (``export.py``, ``model_repository.py``, ``client.py``),
which put the repository root on ``sys.path`` first; never imported as ``triton.*`` (see
``triton/__init__.py``).

The pipeline (spec 10) is feature extractor -> acoustic model -> greedy decoder. Unlike upstream,
whose acoustic model was the no-mask graph with one input, lengths travel with the tensors
(CONVENTIONS "Export and serving"): the acoustic model takes the feature lengths and zeroes the
frames past them before every convolution, so an utterance padded into a batch gets the outputs it
gets alone, and the decoder blanks the frames past the encoder lengths.

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
from jasper.model import Jasper, MaskedConv1d, greedy_decode
from jasper.prepare import fold_batchnorm

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
MANIFEST_NAME = "export.json"

# Upstream's model names (spec 10) plus the ONNX forms of the extractor and the decoder, which
# upstream did not export. The acoustic model's TensorRT engine is built from its ONNX file.
FEATURE_EXTRACTOR = {"ts-trace": "feature-extractor-ts-trace", "onnx": "feature-extractor-onnx"}
ACOUSTIC_MODEL = {
    "ts-trace": "jasper-ts-trace",
    "onnx": "jasper-onnx",
    "tensorrt": "jasper-tensorrt",
}
DECODER = {"ts-script": "decoder-ts-script", "onnx": "decoder-onnx"}
FILE_NAMES = {
    "ts-trace": "model.pt",
    "ts-script": "model.pt",
    "onnx": "model.onnx",
    "tensorrt": "model.plan",
}


class FeatureExtractor(nn.Module):
    """``(audio (B, N) float, num_samples (B,) int32) -> (features (B, F, T), lengths (B,) int32)``.

    :meth:`common.features.FilterbankFeatures.forward` in eval mode (no dither, no augmentation):
    T is the longest utterance's frames rounded up to a multiple of ``pad_align``, and frames past
    each length are zero. Features come out in the audio's dtype; the arithmetic inside is fp32
    whatever the dtype (the extractor casts the audio up), so an fp16 extractor is fp16 at its
    interface only. ``pad_to_max_duration`` is not applied: padding never changes the valid frames
    of a model that takes lengths.
    """

    def __init__(self, features: FilterbankFeatures) -> None:
        super().__init__()
        self.features = copy.deepcopy(features).eval()
        self.pad_align = max(int(features.pad_align), 1)

    def forward(
        self, audio: torch.Tensor, num_samples: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, lens = self.features.compute(audio, num_samples)
        # FilterbankFeatures.pad computes the padded length with Python arithmetic, which a trace
        # would freeze at the example's length. Padding by pad_align - 1 and cutting at a length
        # computed from the (traced) frame count keeps the time axis dynamic.
        n_frames = x.size(-1)
        padded = (n_frames + self.pad_align - 1) // self.pad_align * self.pad_align
        x = nn.functional.pad(x, (0, self.pad_align - 1))[..., :padded]
        return x.to(audio.dtype), lens.to(torch.int32)


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
        log_probs, enc_lens = self.model(feats.to(self.dtype), lens)
        return log_probs, enc_lens.to(torch.int32)


class GreedyDecoder(nn.Module):
    """``(log_probs (B, T_enc, K), enc_lengths (B,) int32) -> ids (B, T_enc) int32``: the per-frame
    argmax, the blank (K - 1) past each length (:func:`jasper.model.greedy_decode`). The CTC
    collapse and the labels are the client's (:func:`common.metrics.ctc_greedy_text`)."""

    def forward(self, log_probs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return greedy_decode(log_probs, lens)


@dataclass
class ExportedFile:
    """One exported component: its Triton model name, format and file (relative to the manifest),
    and the largest difference to the PyTorch module measured right after export."""

    name: str
    component: str  # feature-extractor | acoustic-model | decoder
    format: str  # ts-trace | ts-script | onnx | tensorrt
    file: str
    check: dict = field(default_factory=dict)


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
    files: list[ExportedFile] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.labels) + 1

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
