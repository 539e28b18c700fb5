"""Export a checkpoint's feature extractor, acoustic model and greedy decoder for serving (spec 10).

    python triton/export.py --ckpt CKPT [--model_config YAML] [--ema] --export_dir triton/model_repo \\
        --convert feature-extractor decoder ts-trace onnx tensorrt --precisions fp32 fp16

writes ``<export_dir>/<precision>/<model name>/1/model.{pt,onnx,plan}`` (upstream's layout) and
``<export_dir>/<precision>/export.json`` (labels, audio settings, files and the checks below), which
``model_repository.py`` and ``client.py`` read.

``--convert`` takes upstream's words: ``feature-extractor`` and ``decoder`` (TorchScript:
``feature-extractor-ts-trace``, ``decoder-ts-script``), ``ts-trace``, ``onnx`` and ``tensorrt``
(the acoustic model: ``jasper-ts-trace``, ``jasper-onnx``, ``jasper-tensorrt``), and also model
names, e.g. ``feature-extractor-onnx`` and ``decoder-onnx``, the ONNX forms upstream lacked.

Every file is checked right after export against the PyTorch module on real recordings
(``--check_audio``), each alone and three of them padded into one batch: the extractor's features
and lengths against :class:`common.features.FilterbankFeatures`; the acoustic model's log-probs
against the checkpoint's :class:`jasper.model.Jasper` (fp32: within ``--tolerance``; fp16: the same
greedy transcripts as the PyTorch model run in fp16, upstream's ``.half()``); the decoder's ids
exactly. A failed check removes nothing but exits non-zero, naming the file and the difference.

fp16 exports run on the CPU too (TorchScript and ONNX Runtime have the fp16 kernels they need).
TorchScript files are traced on ``--device``: a file traced on the CPU holds CPU constants and
serves on the CPU (the Python-backend server); export on CUDA for Triton's libtorch backend on a
GPU. The TensorRT engine is built from the ONNX file with the TensorRT 8.6/10 Python API (one
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
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from deploy_modules import (
    ACOUSTIC_MODEL,
    DECODER,
    FEATURE_EXTRACTOR,
    FILE_NAMES,
    PRECISIONS,
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
from common.metrics import ctc_greedy_text
from jasper import config
from jasper.model import Jasper, MaskedConv1d, greedy_decode
from jasper.transcribe import audio_files, load_model

CONVERT_WORDS = {
    "feature-extractor": FEATURE_EXTRACTOR["ts-trace"],
    "decoder": DECODER["ts-script"],
    "ts-trace": ACOUSTIC_MODEL["ts-trace"],
    "onnx": ACOUSTIC_MODEL["onnx"],
    "tensorrt": ACOUSTIC_MODEL["tensorrt"],
}
ALL_NAMES = [*FEATURE_EXTRACTOR.values(), *ACOUSTIC_MODEL.values(), *DECODER.values()]
FEATURE_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}  # features are O(1): STFT implementations differ
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
        help=f"what to export: {', '.join(CONVERT_WORDS)}, or model names ({', '.join(ALL_NAMES)})",
    )
    p.add_argument("--precisions", nargs="+", default=["fp16", "fp32"], choices=sorted(PRECISIONS))
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


def run_torchscript(path: Path, device: torch.device):
    module = torch.jit.load(str(path), map_location=device).eval()

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            out = module(*(x.to(device) for x in inputs))
        return tuple(o.cpu() for o in (out if isinstance(out, tuple) else (out,)))

    return run


def run_onnx(path: Path, device: torch.device):
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


def run_tensorrt(path: Path, device: torch.device):
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


def compute_references(
    model: Jasper, features: FilterbankFeatures, recordings: Recordings, device: torch.device
) -> References:
    batches = recordings.batches()
    extractor = features.eval().to(device)
    ref = masked_reference(model).to(device)
    feats, log_probs = [], []
    with torch.inference_mode():
        for b in batches:
            f, fl = extractor(b.audio.to(device), b.lens.to(device))
            lp, el = ref(f, fl)
            feats.append((f.cpu(), fl.cpu()))
            log_probs.append((lp.cpu(), el.cpu()))
    return References(batches, extractor.cpu(), feats, log_probs)


def decode_texts(log_probs: torch.Tensor, lens: torch.Tensor, labels: list[str]) -> list[str]:
    ids = greedy_decode(log_probs, lens)
    return [ctc_greedy_text(ids[i, : int(lens[i])].tolist(), labels) for i in range(ids.size(0))]


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


def check_feature_extractor(run, refs: References, precision: str) -> dict:
    """Against FilterbankFeatures on the same input: in fp16 the audio itself is rounded, which
    moves the log-mel of quiet frames far more than the arithmetic does."""
    dtype, worst = PRECISIONS[precision], 0.0
    for b in refs.batches:
        with torch.inference_mode():
            f_ref, l_ref = refs.extractor(b.audio.to(dtype), b.lens)
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


def check_acoustic_model(run, refs: References, precision: str, tolerance: float) -> dict:
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


def check_decoder(run, refs: References) -> dict:
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
        if name not in ALL_NAMES:
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
    labels = list(cfg["labels"])
    out_dir = Path(args.export_dir) / precision
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        manifest = ExportManifest.load(out_dir)
        same = (manifest.labels, manifest.checkpoint, manifest.ema) == (
            labels,
            str(args.ckpt),
            bool(args.ema),
        )
        if not same:
            manifest.files = []  # other weights: the files listed are stale
    except (FileNotFoundError, TypeError, json.JSONDecodeError):
        manifest = None
    manifest_fields = dict(
        checkpoint=str(args.ckpt),
        ema=bool(args.ema),
        precision=precision,
        device=device.type,
        labels=labels,
        sample_rate=int(dataset_kw["sample_rate"]),
        trim_silence=bool(dataset_kw["trim_silence"]),
        n_mels=int(features.n_filt),
        max_duration=float(args.max_duration),
    )
    if manifest is None:
        manifest = ExportManifest(**manifest_fields)
    else:
        for k, v in manifest_fields.items():
            setattr(manifest, k, v)
    metadata = {
        "labels": labels,
        "sample_rate": manifest.sample_rate,
        "trim_silence": manifest.trim_silence,
        "precision": precision,
        "checkpoint": str(args.ckpt),
        "ema": bool(args.ema),
    }
    dtype = PRECISIONS[precision]
    example = refs.batches[-1]  # the padded batch: batch and time axes both > 1
    ex_feats, ex_lens = refs.features[-1]
    ex_lp, ex_el = refs.log_probs[-1]
    dyn_b, dyn_n = torch.export.Dim("batch"), torch.export.Dim("samples")
    dyn_t, dyn_te = torch.export.Dim("frames"), torch.export.Dim("enc_frames")

    for name in names:
        t0 = time.perf_counter()
        fmt = next(f for f in FILE_NAMES if name.endswith("-" + f))
        path = out_dir / name / "1" / FILE_NAMES[fmt]
        if name in FEATURE_EXTRACTOR.values():
            component = "feature-extractor"
            module = FeatureExtractor(features).to(device)
            inputs = (example.audio.to(device, dtype), example.lens.to(device))
            if fmt == "ts-trace":
                save_torchscript(module, inputs, path, False, metadata)
                runner = run_torchscript(path, device)
            else:
                # The onnxscript optimizer drops the ``+ 1e-20`` before the log (it rounds the
                # constant to zero), which turns silent frames into -inf and NaN features.
                save_onnx(
                    module,
                    inputs,
                    path,
                    ["input__0", "input__1"],
                    ["output__0", "output__1"],
                    ({0: dyn_b, 1: dyn_n}, {0: dyn_b}),
                    metadata,
                    optimize=False,
                )
                runner = run_onnx(path, device)
            check = check_feature_extractor(runner, refs, precision)
        elif name in ACOUSTIC_MODEL.values():
            component = "acoustic-model"
            if fmt == "tensorrt":
                reason = tensorrt_available()
                if reason is not None:
                    print(f"{precision}: {name} not built: {reason}")
                    continue
                frames = [
                    frames_for_seconds(s, features)
                    for s in (args.trt_min_duration, args.trt_opt_duration, args.max_duration)
                ]
                batches = (1, args.trt_opt_batch, args.trt_max_batch)
                profile = {
                    "input__0": tuple(
                        (b, manifest.n_mels, t) for b, t in zip(batches, frames, strict=True)
                    ),
                    "input__1": tuple((b,) for b in batches),
                }
                build_tensorrt_engine(
                    out_dir / ACOUSTIC_MODEL["onnx"] / "1" / FILE_NAMES["onnx"],
                    path,
                    manifest.n_mels,
                    precision == "fp16",
                    profile,
                    args.workspace_mb,
                )
                runner = run_tensorrt(path, device)
            else:
                module = AcousticModel(model, dtype).to(device)
                inputs = (ex_feats.to(device, dtype), ex_lens.to(device, torch.int32))
                if fmt == "ts-trace":
                    save_torchscript(module, inputs, path, False, metadata)
                    runner = run_torchscript(path, device)
                else:
                    save_onnx(
                        module,
                        inputs,
                        path,
                        ["input__0", "input__1"],
                        ["output__0", "output__1"],
                        ({0: dyn_b, 2: dyn_t}, {0: dyn_b}),
                        metadata,
                    )
                    runner = run_onnx(path, device)
            check = check_acoustic_model(runner, refs, precision, args.tolerance)
        else:
            component = "decoder"
            module = GreedyDecoder()
            inputs = (ex_lp, ex_el.to(torch.int32))
            if fmt == "ts-script":
                save_torchscript(module, inputs, path, True, metadata)
                runner = run_torchscript(path, device)
            else:
                save_onnx(
                    module,
                    inputs,
                    path,
                    ["input__0", "input__1"],
                    ["output__0"],
                    ({0: dyn_b, 1: dyn_te}, {0: dyn_b}),
                    metadata,
                )
                runner = run_onnx(path, device)
            check = check_decoder(runner, refs)
        manifest.add(ExportedFile(name, component, fmt, str(path.relative_to(out_dir)), check))
        manifest.save(out_dir)
        summary = ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in check.items()
        )
        print(f"{precision}: {path} checked ({summary}) in {time.perf_counter() - t0:.1f} s")
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
    refs = compute_references(model, FilterbankFeatures(**features_kw), recordings, device)
    manifests = []
    for precision in args.precisions:
        manifests.append(export_precision(args, precision, names, model, cfg, refs, device))
    return manifests


if __name__ == "__main__":
    sys.exit(main())
