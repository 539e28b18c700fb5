"""Export a checkpoint's feature extractor, acoustic model and greedy decoder for serving.

The counterpart of upstream's ``triton/converter.py`` with ``triton/jasper_module.py`` (NVIDIA
DeepLearningExamples, ``PyTorch/SpeechRecognition/Jasper``), driven by their
``triton/scripts/export_model.sh`` as ours is:

    python triton/export.py --ckpt CKPT [--model_config YAML] [--ema] --export_dir triton/model_repo \\
        --convert feature-extractor decoder ts-trace onnx tensorrt --precisions fp32 fp16

writes ``<export_dir>/<precision>/<model name>/1/model.{pt,onnx,plan}`` (upstream's layout) and
``<export_dir>/<precision>/export.json`` (labels, audio settings, files and the checks below), which
``model_repository.py`` and ``client.py`` read.

``--convert`` takes upstream's words: ``feature-extractor`` and ``decoder`` (TorchScript:
``feature-extractor-ts-trace``, ``decoder-ts-script``), ``ts-trace``, ``onnx`` and ``tensorrt``
(the acoustic model: ``jasper-ts-trace``, ``jasper-onnx``, ``jasper-tensorrt``), and also model
names, e.g. ``feature-extractor-onnx`` and ``decoder-onnx``, the ONNX forms upstream lacked. The
default is exactly what ``model_repository.py`` serves; the two ONNX forms serve no model of the
repository and are written only when named. :data:`EXPORTS` is the table of model name ->
component and format that the export loops over.

Every file is checked right after export against the PyTorch module on real recordings
(``--check_audio``), each alone and three of them padded into one batch: the extractor's features
and lengths against :class:`common.features.FilterbankFeatures` run on each recording alone, with
``--pad_leading`` zero frames in front (inference.py's default, 16: the served ensemble transcribes
as ``inference.py`` and ``scripts/inference.sh`` do with their defaults); the acoustic model's log-probs
against the checkpoint's :class:`jasper.model.Jasper` (fp32: within ``--tolerance``; fp16: the same
greedy transcripts as the PyTorch model run in fp16, upstream's ``.half()``); the decoder's ids
exactly. A failed check removes nothing but exits non-zero, naming the file and the difference.

fp16 exports run on the CPU too (TorchScript and ONNX Runtime have the fp16 kernels they need).
TorchScript files are traced on ``--device``: a file traced on the CPU holds CPU constants and
serves on the CPU (the Python-backend server) only; the manifest records each file's device and
``model_repository.py --target gpu`` refuses CPU traces. Export on CUDA for Triton's libtorch
backend on a GPU. The TensorRT engine is built from the ONNX file with the TensorRT 8.6/10 Python API (one
optimisation profile over batch and time) when ``tensorrt`` imports, else a message says why not.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from deploy_modules import (
    ACOUSTIC_MODEL,
    DECODER,
    FEATURE_EXTRACTOR,
    FILE_NAMES,
    PRECISIONS,
    SERVED_DECODER,
    SERVED_EXTRACTOR,
    AcousticModel,
    ExportedFile,
    ExportManifest,
    FeatureExtractor,
    GreedyDecoder,
    frames_for_seconds,
)
from torch import nn

from common.audio import AudioLoadError, load_audio
from common.checkpoint import CheckpointError
from common.features import FilterbankFeatures
from jasper import config, decoding_settings
from jasper.model import Jasper, MaskedConv1d, greedy_decode
from jasper.transcribe import audio_files, load_model, shortest_audio

CONVERT_WORDS = {  # upstream's words: what model_repository.py serves
    "feature-extractor": SERVED_EXTRACTOR,
    "decoder": SERVED_DECODER,
    "ts-trace": ACOUSTIC_MODEL["ts-trace"],
    "onnx": ACOUSTIC_MODEL["onnx"],
    "tensorrt": ACOUSTIC_MODEL["tensorrt"],
}
FEATURE_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}  # features are O(1): STFT implementations differ
PAD_LEADING = 16  # inference.py's --pad_leading default (upstream's): tests/test_serving_input.py
FP16_LOG_PROB_TOLERANCE = 0.05  # measured: 0.018 on the reference model, TorchScript and ONNX
CHECK_BATCH = 3  # recordings padded into one batch for the batch check


class ExportError(RuntimeError):
    """An export or its check failed; the message names the file and the difference."""


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Export Jasper's feature extractor, acoustic model and decoder to "
        "TorchScript, ONNX and TensorRT for Triton, each checked against PyTorch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="checkpoint (this recipe's, upstream's, .nemo)")
    p.add_argument(
        "--model_config", default=None, help="YAML config (default: the checkpoint's own)"
    )
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="export the EMA weights (the raw weights, with a warning, if there are none)",
    )
    p.add_argument("--export_dir", default="triton/model_repo", help="where the files go")
    p.add_argument(
        "--convert",
        nargs="+",
        default=["feature-extractor", "decoder", "ts-trace", "onnx", "tensorrt"],
        help=f"what to export: {', '.join(CONVERT_WORDS)}, or model names ({', '.join(EXPORTS)})",
    )
    p.add_argument("--precisions", nargs="+", default=["fp16", "fp32"], choices=sorted(PRECISIONS))
    p.add_argument(
        "--pad_leading",
        type=int,
        default=None,
        help="zero feature frames the extractor puts in front (inference.py's --pad_leading); "
        f"default: the checkpoint's decoding settings, else {PAD_LEADING}",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where TorchScript is traced and checks run (auto: cuda when available)",
    )
    p.add_argument(
        "--check_audio",
        nargs="+",
        default=["data/audio"],
        help="recordings (files or folders, searched recursively) for the checks",
    )
    p.add_argument(
        "--check_files",
        type=int,
        default=6,
        help="how many of the --check_audio recordings to use (0: all)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest absolute fp32 log-prob difference allowed",
    )
    p.add_argument(
        "--max_duration",
        type=float,
        default=16.7,
        help="seconds: the longest utterance of the TensorRT profile (and the server's default limit)",
    )
    t = p.add_argument_group("TensorRT engine")
    t.add_argument("--trt_max_batch", type=int, default=8, help="largest batch of the profile")
    t.add_argument("--trt_opt_batch", type=int, default=8, help="batch the engine is tuned for")
    t.add_argument(
        "--trt_opt_duration", type=float, default=7.0, help="seconds the engine is tuned for"
    )
    t.add_argument(
        "--trt_min_duration", type=float, default=0.16, help="shortest utterance (seconds)"
    )
    t.add_argument("--workspace_mb", type=int, default=512, help="builder workspace (MiB)")
    return p


# --------------------------------------------------------------------------------------------
# Recordings for tracing and checks


@dataclass
class Recordings:
    """Real recordings as the model hears them: padded audio (B, N) float32 and lengths (B,)."""

    names: list[str]
    audio: torch.Tensor
    lens: torch.Tensor

    @classmethod
    def load(cls, paths: list[Path], sample_rate: int, trim_silence: bool) -> Recordings:
        signals = [load_audio(p, target_sr=sample_rate, trim_silence=trim_silence) for p in paths]
        longest = max(s.size for s in signals)
        audio = np.zeros((len(signals), longest), dtype=np.float32)
        for i, s in enumerate(signals):
            audio[i, : s.size] = s  # zeros after the end: the client pads this way too
        lens = torch.tensor([s.size for s in signals], dtype=torch.int32)
        return cls([str(p) for p in paths], torch.from_numpy(audio), lens)

    def subset(self, rows: list[int]) -> Recordings:
        lens = self.lens[rows]
        n = int(lens.max())
        return Recordings([self.names[i] for i in rows], self.audio[rows, :n].clone(), lens)

    def batches(self) -> list[Recordings]:
        """Each recording alone, then the first ``CHECK_BATCH`` padded into one batch."""
        singles = [self.subset([i]) for i in range(len(self.names))]
        return singles + [self.subset(list(range(min(CHECK_BATCH, len(self.names)))))]


# --------------------------------------------------------------------------------------------
# Runners: one call signature for a PyTorch module, a TorchScript file, an ONNX file, an engine

Runner = Callable[..., tuple[torch.Tensor, ...]]


def run_torchscript(path: Path, device: torch.device) -> Runner:
    module = torch.jit.load(str(path), map_location=device).eval()

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            out = module(*(x.to(device) for x in inputs))
        return tuple(o.cpu() for o in (out if isinstance(out, tuple) else (out,)))

    return run


def run_onnx(path: Path, device: torch.device) -> Runner:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # fp16 graphs log constant-folding notes that are not errors
    session = ort.InferenceSession(str(path), options, providers=providers)
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds = {n: x.cpu().numpy() for n, x in zip(names, inputs, strict=True)}
        return tuple(torch.from_numpy(o) for o in session.run(None, feeds))

    return run


def run_tensorrt(path: Path, device: torch.device) -> Runner:
    """Runs an engine with torch CUDA tensors as buffers (TensorRT 10 tensor-address API)."""
    import tensorrt as trt

    if device.type != "cuda":
        raise ExportError("checking a TensorRT engine needs CUDA")
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]

    def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stream = torch.cuda.current_stream(device)
        keep = []
        for name, x in zip(inputs, tensors, strict=True):
            x = x.to(device).contiguous()
            keep.append(x)
            context.set_input_shape(name, tuple(x.shape))
            context.set_tensor_address(name, x.data_ptr())
        results = []
        for name in outputs:
            dtype = torch.from_numpy(np.zeros(0, dtype=trt.nptype(engine.get_tensor_dtype(name))))
            out = torch.empty(
                tuple(context.get_tensor_shape(name)), dtype=dtype.dtype, device=device
            )
            context.set_tensor_address(name, out.data_ptr())
            results.append(out)
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportError(f"{path}: TensorRT execution failed")
        stream.synchronize()
        return tuple(r.cpu() for r in results)

    return run


# --------------------------------------------------------------------------------------------
# Export


@contextlib.contextmanager
def quiet_tracing():
    """Tracer and exporter warnings about Python values in the graph are expected here (the
    lengths logic is tensor arithmetic; the checks catch a trace that froze a shape)."""
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, UserWarning, DeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        yield


def save_torchscript(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    script: bool,
    metadata: dict,
) -> None:
    with quiet_tracing(), torch.no_grad():
        if script:
            ts = torch.jit.script(module)
        else:
            ts = torch.jit.trace(module, example, check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(ts, str(path), _extra_files={"metadata.json": json.dumps(metadata)})


def save_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[dict, ...],
    metadata: dict,
    optimize: bool = True,
) -> None:
    """ONNX through the torch.export-based exporter (the TorchScript-based one cannot export the
    complex STFT). Dynamic axes are named; metadata goes into ``metadata_props``."""
    module = module.cpu()
    example = tuple(x.cpu() for x in example)
    with quiet_tracing():
        program = torch.onnx.export(
            module,
            example,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            optimize=optimize,
            verbose=False,
        )
    program.model.metadata_props.update({k: json.dumps(v) for k, v in metadata.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)


def build_tensorrt_engine(
    onnx_path: Path,
    engine_path: Path,
    n_mels: int,
    fp16: bool,
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    workspace_mb: int,
) -> None:
    """Serialised engine from the ONNX file: explicit batch, one optimisation profile
    ``{input: (min, opt, max)}``, the FP16 flag for fp16 (TensorRT 8.6 and 10 API)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # required before TRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors}")
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        cfg.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    cfg.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, cfg)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))


# --------------------------------------------------------------------------------------------
# Checks


@dataclass
class References:
    """The PyTorch results the exports are compared with, per check batch (all fp32)."""

    batches: list[Recordings]
    extractor: FilterbankFeatures  # eval mode, on the CPU
    pad_leading: int
    features: list[tuple[torch.Tensor, torch.Tensor]]  # (B, F, T), (B,)
    log_probs: list[tuple[torch.Tensor, torch.Tensor]]  # (B, T_enc, K), (B,)


def masked_reference(model: Jasper) -> Jasper:
    """The checkpoint's model in fp32 with every convolution masked: on each unpadded utterance
    exactly the no-mask model, and on a padded batch each utterance's own result."""
    ref = copy.deepcopy(model).eval().float()
    for m in ref.modules():
        if isinstance(m, MaskedConv1d):
            m.masked = True
    return ref


@torch.inference_mode()
def features_alone(
    features: FilterbankFeatures, audio: torch.Tensor, lens: torch.Tensor, pad_leading: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the extractor must give a padded batch (B, N): each recording's features as
    FilterbankFeatures computes them for the recording alone, after ``pad_leading`` zero frames
    and followed by zeros, in (B, F, T) with T the extractor's (1 + N // hop + pad_leading frames,
    rounded up to a multiple of pad_align); and the lengths, ``pad_leading`` included."""
    frames = audio.size(1) // features.hop_length + 1 + pad_leading
    align = max(int(features.pad_align), 1)
    out = torch.zeros(audio.size(0), features.n_filt, align * math.ceil(frames / align))
    for i, n in enumerate(lens.tolist()):
        f, fl = features(audio[i : i + 1, :n], torch.tensor([n], device=audio.device))
        out[i, :, pad_leading : pad_leading + int(fl[0])] = f[0, :, : int(fl[0])].float()
    return out.to(audio.dtype), features.feature_lengths(lens.cpu()) + pad_leading


def compute_references(
    model: Jasper,
    features: FilterbankFeatures,
    recordings: Recordings,
    device: torch.device,
    pad_leading: int = PAD_LEADING,
) -> References:
    batches = recordings.batches()
    extractor = features.eval().to(device)
    ref = masked_reference(model).to(device)
    feats, log_probs = [], []
    with torch.inference_mode():
        for b in batches:
            f, fl = features_alone(extractor, b.audio.to(device), b.lens.to(device), pad_leading)
            lp, el = ref(f.to(device), fl.to(device))
            feats.append((f.cpu(), fl.cpu()))
            log_probs.append((lp.cpu(), el.cpu()))
    return References(batches, extractor.cpu(), pad_leading, feats, log_probs)


def near_tie_mismatches(
    log_probs: torch.Tensor, ref_log_probs: torch.Tensor, lens: torch.Tensor, margin: float
) -> tuple[int, int]:
    """``(frames whose argmax differs, of those the ones that are not near-ties)``: a frame is a
    near-tie when the reference's log-probs of the two classes chosen differ by less than
    ``margin``, so that rounding within the precision's tolerance may pick either."""
    ids, ref_ids = greedy_decode(log_probs.float(), lens), greedy_decode(ref_log_probs, lens)
    differing = clear = 0
    for j in range(ids.size(0)):
        n = int(lens[j])
        for t in (ids[j, :n] != ref_ids[j, :n]).nonzero().flatten().tolist():
            differing += 1
            gap = (ref_log_probs[j, t, ids[j, t]] - ref_log_probs[j, t, ref_ids[j, t]]).abs()
            clear += bool(gap >= margin)
    return differing, clear


def check_feature_extractor(run: Runner, refs: References, precision: str) -> dict:
    """Against FilterbankFeatures on each recording of the same input alone, after the leading
    zero frames (:func:`features_alone`): in fp16 the audio itself is rounded, which moves the
    log-mel of quiet frames far more than the arithmetic does."""
    dtype, worst = PRECISIONS[precision], 0.0
    for b in refs.batches:
        f_ref, l_ref = features_alone(refs.extractor, b.audio.to(dtype), b.lens, refs.pad_leading)
        f, fl = run(b.audio.to(dtype), b.lens)
        if tuple(f.shape) != tuple(f_ref.shape) or not torch.equal(fl.long(), l_ref.long()):
            raise ExportError(
                f"features of {b.names}: shape {tuple(f.shape)} lengths {fl.tolist()}, "
                f"expected {tuple(f_ref.shape)} {l_ref.tolist()}"
            )
        worst = max(worst, (f.float() - f_ref.float()).abs().max().item())
    if worst > FEATURE_TOLERANCE[precision]:
        raise ExportError(f"features differ by {worst:.3g} (> {FEATURE_TOLERANCE[precision]})")
    return {"max_abs_feature_diff": worst, "batches": len(refs.batches)}


def check_acoustic_model(run: Runner, refs: References, precision: str, tolerance: float) -> dict:
    """fp32: log-probs within ``tolerance`` of the PyTorch model. fp16: within
    ``FP16_LOG_PROB_TOLERANCE``, and the same greedy ids except at near-ties of the fp32 model
    (on a randomly initialised model two fp16 implementations disagree there; on a trained model
    near-ties are rare and the transcripts are the same)."""
    dtype, worst, differing = PRECISIONS[precision], 0.0, 0
    limit = tolerance if precision == "fp32" else FP16_LOG_PROB_TOLERANCE
    for b, (f, fl), (lp_ref, el_ref) in zip(
        refs.batches, refs.features, refs.log_probs, strict=True
    ):
        lp, el = run(f.to(dtype), fl.to(torch.int32))
        if not torch.equal(el.long(), el_ref.long()):
            raise ExportError(f"encoder lengths {el.tolist()}, expected {el_ref.tolist()}")
        for j in range(lp.size(0)):
            n = int(el_ref[j])
            worst = max(worst, (lp[j, :n].float() - lp_ref[j, :n]).abs().max().item())
        if worst > limit:
            raise ExportError(f"log-probs of {b.names} differ by {worst:.3g} (> {limit})")
        n_diff, n_clear = near_tie_mismatches(lp, lp_ref, el_ref, 2 * limit)
        if n_clear:
            raise ExportError(
                f"greedy ids of {b.names} differ from the PyTorch model's at {n_clear} frames "
                "that are not near-ties"
            )
        differing += n_diff
    return {
        "max_abs_log_prob_diff": worst,
        "near_tie_frames": differing,
        "batches": len(refs.batches),
    }


def check_decoder(run: Runner, refs: References) -> dict:
    for lp, el in refs.log_probs:
        (ids,) = run(lp, el.to(torch.int32))
        if not torch.equal(ids.long(), greedy_decode(lp, el).long()):
            raise ExportError("decoder ids differ from jasper.model.greedy_decode")
    return {"exact": True, "batches": len(refs.log_probs)}


# --------------------------------------------------------------------------------------------


def requested_names(convert: list[str]) -> list[str]:
    names = []
    for word in convert:
        name = CONVERT_WORDS.get(word, word)
        if name not in EXPORTS:
            raise ExportError(f"--convert {word}: use {', '.join(CONVERT_WORDS)} or model names")
        if name not in names:
            names.append(name)
    # The TensorRT engine is built from the ONNX file.
    if ACOUSTIC_MODEL["tensorrt"] in names and ACOUSTIC_MODEL["onnx"] not in names:
        names.insert(names.index(ACOUSTIC_MODEL["tensorrt"]), ACOUSTIC_MODEL["onnx"])
    return names


def tensorrt_available() -> str | None:
    """None when TensorRT can build here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return (
            "the tensorrt Python package is not installed (it comes with the NGC PyTorch "
            "container; elsewhere `pip install tensorrt` on a machine with CUDA)"
        )
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA device"
    return None


# --------------------------------------------------------------------------------------------
# The export table: model name -> component x format


@dataclass
class ExportJob:
    """What the exports of one precision share: the modules, the check data, where files go."""

    args: argparse.Namespace
    precision: str
    model: Jasper
    features: FilterbankFeatures
    refs: References
    device: torch.device
    out_dir: Path
    metadata: dict

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def path(self, name: str) -> Path:
        return self.out_dir / name / "1" / FILE_NAMES[EXPORTS[name].fmt]


# The examples are the padded check batch (the last one): its batch and time axes are both > 1.


def extractor_example(job: ExportJob) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    b = job.refs.batches[-1]
    inputs = (b.audio.to(job.device, job.dtype), b.lens.to(job.device))
    module = FeatureExtractor(job.features, job.refs.pad_leading)
    return module.to(job.device), inputs


def acoustic_example(job: ExportJob) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    feats, lens = job.refs.features[-1]
    inputs = (feats.to(job.device, job.dtype), lens.to(job.device, torch.int32))
    return AcousticModel(job.model, job.dtype).to(job.device), inputs


def decoder_example(job: ExportJob) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    log_probs, lens = job.refs.log_probs[-1]
    return GreedyDecoder(), (log_probs, lens.to(torch.int32))


@dataclass(frozen=True)
class Component:
    """One stage of the served pipeline: its export-ready module with example inputs, the ONNX
    outputs and dynamic axes (input by input), and the check against PyTorch."""

    name: str  # feature-extractor | acoustic-model | decoder
    example: Callable[[ExportJob], tuple[nn.Module, tuple[torch.Tensor, ...]]]
    outputs: tuple[str, ...]
    dynamic_axes: tuple[dict[int, str], ...]
    check: Callable[[Runner, ExportJob], dict]
    # The onnxscript optimizer drops the extractor's ``+ 1e-20`` before the log (it rounds the
    # constant to zero), which turns silent frames into -inf and NaN features.
    onnx_optimize: bool = True


EXTRACTOR = Component(
    "feature-extractor",
    extractor_example,
    ("output__0", "output__1"),
    ({0: "batch", 1: "samples"}, {0: "batch"}),
    lambda run, job: check_feature_extractor(run, job.refs, job.precision),
    onnx_optimize=False,
)
ACOUSTIC = Component(
    "acoustic-model",
    acoustic_example,
    ("output__0", "output__1"),
    ({0: "batch", 2: "frames"}, {0: "batch"}),
    lambda run, job: check_acoustic_model(run, job.refs, job.precision, job.args.tolerance),
)
DECODING = Component(
    "decoder",
    decoder_example,
    ("output__0",),
    ({0: "batch", 1: "enc_frames"}, {0: "batch"}),
    lambda run, job: check_decoder(run, job.refs),
)


def export_trace(job: ExportJob, component: Component, path: Path) -> Runner:
    module, inputs = component.example(job)
    save_torchscript(module, inputs, path, False, job.metadata)
    return run_torchscript(path, job.device)


def export_script(job: ExportJob, component: Component, path: Path) -> Runner:
    module, inputs = component.example(job)
    save_torchscript(module, inputs, path, True, job.metadata)
    return run_torchscript(path, job.device)


def export_onnx(job: ExportJob, component: Component, path: Path) -> Runner:
    module, inputs = component.example(job)
    dims = {}  # one Dim per axis name: inputs that share a name share the size
    dynamic_shapes = tuple(
        {axis: dims.setdefault(n, torch.export.Dim(n)) for axis, n in axes.items()}
        for axes in component.dynamic_axes
    )
    input_names = [f"input__{i}" for i in range(len(inputs))]
    save_onnx(
        module,
        inputs,
        path,
        input_names,
        list(component.outputs),
        dynamic_shapes,
        job.metadata,
        optimize=component.onnx_optimize,
    )
    return run_onnx(path, job.device)


def export_tensorrt(job: ExportJob, component: Component, path: Path) -> Runner:
    """The engine from the acoustic model's ONNX file (exported first, ``requested_names``), with
    one profile from ``--trt_min_duration``/``--trt_opt_duration``/``--max_duration`` and the
    ``--trt_*_batch`` sizes."""
    args, n_mels = job.args, int(job.features.n_filt)
    seconds = (args.trt_min_duration, args.trt_opt_duration, args.max_duration)
    frames = [frames_for_seconds(s, job.features) for s in seconds]
    batches = (1, args.trt_opt_batch, args.trt_max_batch)
    profile = {
        "input__0": tuple((b, n_mels, t) for b, t in zip(batches, frames, strict=True)),
        "input__1": tuple((b,) for b in batches),
    }
    onnx_path = job.path(ACOUSTIC_MODEL["onnx"])
    fp16 = job.precision == "fp16"
    build_tensorrt_engine(onnx_path, path, n_mels, fp16, profile, args.workspace_mb)
    return run_tensorrt(path, job.device)


@dataclass(frozen=True)
class Export:
    """One row of the table: the component, the file format, the function that writes the file
    and returns a runner for it, and why it cannot be built here (None: it can)."""

    component: Component
    fmt: str
    write: Callable[[ExportJob, Component, Path], Runner]
    unavailable: Callable[[], str | None] = lambda: None


EXPORTS: dict[str, Export] = {
    FEATURE_EXTRACTOR["ts-trace"]: Export(EXTRACTOR, "ts-trace", export_trace),
    FEATURE_EXTRACTOR["onnx"]: Export(EXTRACTOR, "onnx", export_onnx),
    ACOUSTIC_MODEL["ts-trace"]: Export(ACOUSTIC, "ts-trace", export_trace),
    ACOUSTIC_MODEL["onnx"]: Export(ACOUSTIC, "onnx", export_onnx),
    ACOUSTIC_MODEL["tensorrt"]: Export(ACOUSTIC, "tensorrt", export_tensorrt, tensorrt_available),
    DECODER["ts-script"]: Export(DECODING, "ts-script", export_script),
    DECODER["onnx"]: Export(DECODING, "onnx", export_onnx),
}


# --------------------------------------------------------------------------------------------


def open_manifest(out_dir: Path, fields: dict) -> ExportManifest:
    """The precision's manifest with ``fields`` set. The files it lists are kept when they come
    from the same checkpoint, weights and labels (this export adds to them), else dropped."""
    try:
        manifest = ExportManifest.load(out_dir)
    except (FileNotFoundError, TypeError, json.JSONDecodeError):
        return ExportManifest(**fields)
    if any(
        getattr(manifest, k) != fields[k] for k in ("labels", "checkpoint", "ema", "pad_leading")
    ):
        manifest.files = []  # other weights or another extractor: the files listed are stale
    for k, v in fields.items():
        setattr(manifest, k, v)
    return manifest


def file_metadata(manifest: ExportManifest) -> dict:
    """What every exported file carries (TorchScript extra file, ONNX ``metadata_props``)."""
    keys = (
        "labels", "sample_rate", "trim_silence", "pad_leading", "precision", "checkpoint", "ema",
    )  # fmt: skip
    return {k: getattr(manifest, k) for k in keys}


def export_file(job: ExportJob, name: str) -> ExportedFile | None:
    """Writes one model's file and checks it; None, with a message, when it cannot be built here."""
    export = EXPORTS[name]
    reason = export.unavailable()
    if reason is not None:
        print(f"{job.precision}: {name} not built: {reason}")
        return None
    t0 = time.perf_counter()
    path = job.path(name)
    check = export.component.check(export.write(job, export.component, path), job)
    summary = ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in check.items()
    )
    print(f"{job.precision}: {path} checked ({summary}) in {time.perf_counter() - t0:.1f} s")
    relative = str(path.relative_to(job.out_dir))
    device = job.device.type if export.fmt in ("ts-trace", "ts-script") else "any"
    if export.fmt == "ts-trace" and job.device.type != "cuda":
        print(
            f"{job.precision}: {name} is traced on {job.device.type}: it serves on the CPU "
            "(model_repository.py --target cpu) only; export with --device cuda for a GPU"
        )
    return ExportedFile(name, export.component.name, export.fmt, relative, check, device)


def export_precision(
    args: argparse.Namespace,
    precision: str,
    names: list[str],
    model: Jasper,
    cfg: dict,
    refs: References,
    device: torch.device,
) -> ExportManifest:
    dataset_kw, features_kw = config.input(cfg, "val")
    features = FilterbankFeatures(**features_kw)
    out_dir = Path(args.export_dir) / precision
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = dict(
        checkpoint=str(args.ckpt),
        ema=bool(args.ema),
        precision=precision,
        device=device.type,
        labels=list(cfg["labels"]),
        sample_rate=int(dataset_kw["sample_rate"]),
        trim_silence=bool(dataset_kw["trim_silence"]),
        n_mels=int(features.n_filt),
        max_duration=float(args.max_duration),
        pad_leading=int(args.pad_leading),
        min_num_samples=shortest_audio(features),
    )
    manifest = open_manifest(out_dir, fields)
    metadata = file_metadata(manifest)
    job = ExportJob(args, precision, model, features, refs, device, out_dir, metadata)
    for name in names:
        exported = export_file(job, name)
        if exported is not None:
            manifest.add(exported)
            manifest.save(out_dir)
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        run(args)
    except (
        ExportError,
        CheckpointError,
        config.ConfigError,
        AudioLoadError,
        FileNotFoundError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> list[ExportManifest]:
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    names = requested_names(args.convert)
    model, cfg = load_model(args.ckpt, args.model_config, ema=args.ema)
    args.pad_leading = decoding_settings.pad_leading(args.ckpt, args.pad_leading)  # as inference
    dataset_kw, features_kw = config.input(cfg, "val")
    files = audio_files(args.check_audio)
    if args.check_files > 0:
        files = files[: args.check_files]
    if len(files) < 2:
        # torch.export fixes an axis whose example size is 1: the batch axis needs two recordings.
        raise ExportError("--check_audio must give at least two recordings")
    recordings = Recordings.load(
        files, int(dataset_kw["sample_rate"]), bool(dataset_kw["trim_silence"])
    )
    if not math.isfinite(args.max_duration) or args.max_duration <= 0:
        raise ExportError("--max_duration must be a positive number of seconds")
    if args.pad_leading < 0:
        raise ExportError("--pad_leading must be 0 or more frames")
    features = FilterbankFeatures(**features_kw)
    refs = compute_references(model, features, recordings, device, args.pad_leading)
    manifests = []
    for precision in args.precisions:
        manifests.append(export_precision(args, precision, names, model, cfg, refs, device))
    return manifests


if __name__ == "__main__":
    sys.exit(main())
