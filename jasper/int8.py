"""int8 acoustic model on the CPU: ONNX Runtime static quantization of the exported network.

The features stay in PyTorch (:class:`common.features.FilterbankFeatures`); only the acoustic
model, ``(feats (B, F, T), feat_lens (B,)) -> (log_probs (B, T_enc, K), enc_lens (B,))``, becomes
an int8 ONNX graph:

1. :func:`export_onnx`: BatchNorm folded into the convolutions
   (:func:`jasper.prepare.fold_batchnorm`), conv masks off, exported by the torch.export-based
   ONNX exporter with dynamic batch and time.
2. :func:`export_int8`: ONNX Runtime's ``quantize_static`` in the QDQ format, weights int8 per
   output channel, activations uint8 per tensor with ranges calibrated (min/max) on the features
   of a few real utterances. ORT fuses each QuantizeLinear -> DequantizeLinear -> Conv chain into
   an integer convolution (VNNI dot products on AVX-512 CPUs); the log-softmax stays in float.
3. :class:`Int8Model`: the ORT session with the acoustic model's call signature.

Without masks the network's outputs depend on the padding, so :class:`Int8Model` runs every
utterance of a batch alone on its valid frames, which is what a masked model computes for it
(the same reasoning as :class:`jasper.prepare.SpeedOptions` ``skip_masks``). Batch 1, the CPU case,
pays nothing for it.

    model, cfg = load_model("Jasper_best_checkpoint.pt")
    export_int8(model, cfg, ["data/audio/example1.wav", ...], "jasper_int8.onnx")
    transcriber = Transcriber(Int8Model("jasper_int8.onnx"), cfg)

Accuracy and speed: ``bench/results/cpu_int8.md``; the commands: ``docs/cpu_inference.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.audio import load_audio
from common.features import FilterbankFeatures
from jasper import config, decoding_settings
from jasper.model import Jasper, MaskedConv1d
from jasper.prepare import fold_batchnorm
from jasper.transcribe import audio_files, load_model

log = logging.getLogger(__name__)

INPUTS = ("feats", "feat_lens")
OUTPUTS = ("log_probs", "enc_lens")
METADATA_KEY = "jasper_int8"
PAD_LEADING = 16  # zero feature frames before each utterance, as jasper.transcribe.Transcriber


class _AcousticGraph(nn.Module):
    """What is exported: the model with BatchNorm folded and no conv masks (see the module doc)."""

    def __init__(self, model: Jasper) -> None:
        super().__init__()
        model = copy.deepcopy(model).float().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        fold_batchnorm(model)
        for m in model.modules():
            if isinstance(m, MaskedConv1d):
                m.masked = False
        self.model = model

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(feats, lens)


def conv_geometry(model: nn.Module) -> list[tuple[int, int, int]]:
    """``(kernel, stride, dilation)`` of every :class:`MaskedConv1d` in module order: what
    :func:`jasper.transcribe.receptive_field` reads (the main path's span and stride)."""
    return [
        (m.kernel_size[0], m.stride[0], m.dilation[0])
        for m in model.modules()
        if isinstance(m, MaskedConv1d)
    ]


def export_onnx(model: Jasper, path: str | Path) -> Path:
    """The fp32 ONNX graph of ``model`` (BatchNorm folded, no masks) at ``path``, runnable by
    :class:`Int8Model` too (its metadata holds the conv geometry)."""
    path = Path(path)
    graph = _AcousticGraph(model)
    n_feats = next(m for m in model.modules() if isinstance(m, MaskedConv1d)).in_channels
    example = (torch.randn(2, n_feats, 96), torch.tensor([96, 96]))
    batch, frames = torch.export.Dim("batch"), torch.export.Dim("frames", min=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter notes about Python values in the length math
        program = torch.onnx.export(
            graph, example, input_names=list(INPUTS), output_names=list(OUTPUTS),
            dynamic_shapes=({0: batch, 2: frames}, {0: batch}), dynamo=True, optimize=True,
            verbose=False,
        )  # fmt: skip
    program.model.metadata_props[METADATA_KEY] = json.dumps(
        {"conv_geometry": conv_geometry(model), "int8": None}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    return path


def utterance_features(
    features: FilterbankFeatures, audio: np.ndarray | torch.Tensor, pad_leading: int = PAD_LEADING
) -> torch.Tensor:
    """Features (1, F, T) of one recording as :class:`jasper.transcribe.Transcriber` feeds them to
    the model: the valid frames only, ``pad_leading`` zero frames in front."""
    audio = torch.as_tensor(audio, dtype=torch.float32).reshape(1, -1)
    with torch.inference_mode():
        feats, lens = features.compute(audio, torch.tensor([audio.size(1)]))
    return nn.functional.pad(feats[:, :, : int(lens[0])], (pad_leading, 0))


class _Calibration:
    """ORT's CalibrationDataReader protocol (``get_next() -> dict | None``) over feature tensors."""

    def __init__(self, feats: Sequence[torch.Tensor]) -> None:
        self._feats: Iterator[torch.Tensor] = iter(feats)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._feats, None)
        if x is None:
            return None
        return {INPUTS[0]: x.numpy(), INPUTS[1]: np.array([x.size(-1)], dtype=np.int64)}


def export_int8(
    model: Jasper,
    cfg: dict,
    calibration_audio: Sequence[str | Path | np.ndarray],
    out_path: str | Path,
    *,
    pad_leading: int = PAD_LEADING,
) -> Path:
    """Write the statically quantized (int8 QDQ) acoustic model of ``model`` to ``out_path``.

    Args:
        model: the trained model (any precision; exported in fp32).
        cfg: its config: the ``input_val`` front end computes the calibration features.
        calibration_audio: recordings (paths, or samples at the model's rate) whose features
            calibrate the activation ranges: a few utterances of real speech, as the model will
            hear it (bench/results/cpu_int8.md used the repository's ten recordings).
        out_path: the ``.onnx`` file to write.
        pad_leading: zero frames before each utterance's features, as at inference.

    Returns:
        ``out_path``; its metadata records the calibration set and the quantization settings.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not calibration_audio:
        raise ValueError("export_int8 needs at least one calibration recording")
    dataset_kw, features_kw = config.input(cfg, "val")
    features = FilterbankFeatures(**features_kw).eval()
    names, feats = [], []
    for item in calibration_audio:
        if isinstance(item, (str, Path)):
            samples = load_audio(item, target_sr=int(dataset_kw["sample_rate"]))
            names.append(Path(item).name)
        else:
            samples = np.asarray(item, dtype=np.float32)
            names.append(f"<{samples.size} samples>")
        feats.append(utterance_features(features, samples, pad_leading))
    metadata = {
        "conv_geometry": conv_geometry(model),
        "int8": {
            "format": "QDQ",
            "weights": "int8 per output channel",
            "activations": "uint8 per tensor",
            "calibration": "MinMax",
            "float_convs": "the first (features in) and the classifier (logits out)",
            "calibration_audio": names,
            "pad_leading": pad_leading,
        },
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx")
        # Graph nodes are in topological order: the first Conv reads the features, the last one
        # is the classifier. ORT's quant_pre_process is skipped: the exporter's graph already
        # carries its shapes, pre-processing left the quantized graph identical and took 3 more GB.
        convs = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"]
        with _quiet_quantizer():
            quantize_static(
                str(fp32),
                str(out_path),
                _Calibration(feats),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,  # u8 x s8: the VNNI dot-product form
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                # Keeping the two end convs in float (a fraction of a percent of the flops) kept
                # more greedy decisions of the fp32 model: bench/results/cpu_int8.md.
                nodes_to_exclude=[convs[0], convs[-1]],
            )
    quantized = onnx.load(str(out_path))
    del quantized.metadata_props[:]
    entry = quantized.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(quantized, str(out_path))
    return out_path


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantizer logs "consider pre-processing" warnings on the root logger (see above)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


class Int8Model(nn.Module):
    """An exported (int8 or fp32) ONNX acoustic model run by ONNX Runtime on the CPU.

    ``forward(feats (B, F, T), feat_lens (B,))`` returns ``(log_probs (B, T_enc, K) float32,
    enc_lens (B,) int64)`` on the CPU, like :class:`jasper.model.Jasper`; each utterance runs
    alone on its valid frames, and log-probs past ``enc_lens`` are 0 (padding).

    The module holds 1-channel stand-ins of the model's convolutions (kernel, stride, dilation
    from the file's metadata), so that code reading the model's geometry, such as
    :func:`jasper.transcribe.receptive_field`, works unchanged. ``threads``: ORT intra-op threads
    (default: torch's).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"int8 model not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(f"{self.path} was not written by jasper.int8 (no {METADATA_KEY})")
        self.metadata = json.loads(meta[METADATA_KEY])
        self.geometry = nn.ModuleList(
            MaskedConv1d(1, 1, k, s, (k // 2) * d, d, masked=False)
            for k, s, d in self.metadata["conv_geometry"]
        )
        self.dtype = torch.float32

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = feats.detach().float().cpu()
        outputs, enc_lens = [], []
        for x, n in zip(feats, lens.tolist(), strict=True):
            log_probs, enc_len = self.session.run(
                None,
                {
                    INPUTS[0]: np.ascontiguousarray(x[None, :, :n].numpy()),
                    INPUTS[1]: np.array([n], dtype=np.int64),
                },
            )
            outputs.append(torch.from_numpy(log_probs[0]))
            enc_lens.append(int(enc_len[0]))
        log_probs = nn.utils.rnn.pad_sequence(outputs, batch_first=True)
        return log_probs, torch.tensor(enc_lens, dtype=torch.int64)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write the int8 ONNX acoustic model of a checkpoint (for inference.py --int8).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="checkpoint (.pt or .nemo)")
    p.add_argument("--model_config", default=None, help="config, if the checkpoint has none")
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="quantize the EMA weights (the raw ones, with a warning, when the checkpoint has "
        "none), as inference.py and inference.sh use them by default",
    )
    p.add_argument(
        "--calibration",
        nargs="+",
        default=["data/audio"],
        help="recordings or folders of recordings to calibrate the activation ranges on",
    )
    p.add_argument("--output", required=True, help="the .onnx file to write")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, cfg = load_model(args.ckpt, args.model_config, ema=args.ema)
    recordings = audio_files(args.calibration)
    # Calibrate on the features as inference will feed them: the checkpoint's leading padding.
    pad_leading = decoding_settings.pad_leading(args.ckpt)
    out = export_int8(model, cfg, recordings, args.output, pad_leading=pad_leading)
    log.info("int8 model of %s (calibrated on %d recordings): %s", args.ckpt, len(recordings), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
