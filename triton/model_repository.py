"""Build a Triton model repository from ``export.py``'s files (spec 10).

    python triton/model_repository.py --export_dir triton/model_repo --precision fp16 \\
        --target gpu --backends ts-trace onnx tensorrt --output triton/deploy/model_repo

Targets:

- ``gpu``: the NGC Triton container on a GPU machine. Native backends: ``pytorch_libtorch`` for the
  TorchScript files (export them on CUDA), ``onnxruntime_onnx``, ``tensorrt_plan``; the acoustic
  models get ``instance_group { kind: KIND_GPU }``.
- ``cpu``: the ``tritonserver`` that the PyPI package ``nvidia-pytriton`` bundles (development and
  CI; ``triton/scripts/setup_server.sh``). It has only the Python backend, so each component is a
  Python-backend model (``triton/python_backend/model.py``) running the exported TorchScript or
  ONNX file. No TensorRT there.

Models and ensembles keep upstream's names: ``feature-extractor-ts-trace``, ``decoder-ts-script``,
``jasper-{ts-trace,onnx,tensorrt}`` and ``jasper-{ts-trace,onnx,tensorrt}-ensemble``. An ensemble
takes ``AUDIO_SIGNAL`` (B, N) and ``NUM_SAMPLES`` (B, 1) and returns ``TRANSCRIPT`` (B, T_enc): the
per-frame argmax ids, the blank past each utterance's length, for the client to CTC-collapse.
Unlike upstream, the lengths go through the pipeline (extractor -> acoustic model -> decoder), so
each utterance of a padded batch gets its own result. The ensemble's ``parameters`` carry what a
client needs to prepare audio and read the ids: ``labels`` (JSON), ``sample_rate``,
``trim_silence``, ``max_num_samples``, ``precision``.

The version folders link to the exported files (``--copy`` copies them instead).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy_modules import ACOUSTIC_MODEL, DECODER, FEATURE_EXTRACTOR, ExportManifest

HERE = Path(__file__).resolve().parent
PYTHON_MODEL = HERE / "python_backend" / "model.py"
TRITON_TYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16"}
PLATFORMS = {"ts-trace": "pytorch_libtorch", "ts-script": "pytorch_libtorch",
             "onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}  # fmt: skip
FILE_FORMATS = {"ts-trace": "torchscript", "ts-script": "torchscript", "onnx": "onnx"}
COMPONENT_MAX_BATCH = 64  # upstream's max_batch_size of the extractor and the decoder


class Enum(str):
    """A protobuf enum value: written without quotes."""


def to_pbtxt(message: dict, indent: int = 0) -> str:
    """Protobuf text format of a dict: nested dicts are messages, lists of dicts repeated
    messages, lists of scalars repeated scalars."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", to_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += [f"{pad}{key} {{", to_pbtxt(item, indent + 1), f"{pad}}}"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def _scalar(value: object) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a valid text-format string literal for these values
    return str(value)


def _io(name: str, dtype: str, dims: list[int], reshape: list[int] | None = None) -> dict:
    out = {"name": name, "data_type": Enum(dtype), "dims": dims}
    if reshape is not None:
        out["reshape"] = {"shape": reshape}
    return out


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write a Triton model repository (configs, ensembles) from exported files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--export_dir", default="triton/model_repo", help="export.py's --export_dir")
    p.add_argument("--precision", default="fp16", choices=sorted(TRITON_TYPES))
    p.add_argument("--target", default="gpu", choices=["gpu", "cpu"])
    p.add_argument(
        "--backends",
        nargs="+",
        default=["ts-trace", "onnx", "tensorrt"],
        choices=list(ACOUSTIC_MODEL),
        help="acoustic models (one ensemble each)",
    )
    p.add_argument("--output", default="triton/deploy/model_repo", help="repository folder")
    p.add_argument("--max_batch_size", type=int, default=8, help="of the ensembles and models")
    p.add_argument("--instances", type=int, default=1, help="instances of each acoustic model")
    p.add_argument(
        "--dynamic_batching",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="let the server gather requests into batches",
    )
    p.add_argument(
        "--preferred_batch_sizes", type=int, nargs="*", default=[], help="dynamic batching"
    )
    p.add_argument(
        "--max_queue_delay_us", type=int, default=100, help="dynamic batching: longest wait"
    )
    p.add_argument(
        "--max_duration",
        type=float,
        default=None,
        help="seconds: longer audio is refused (cpu target; default: the export's)",
    )
    p.add_argument(
        "--cpu_threads", type=int, default=0, help="threads per Python-backend model (0: default)"
    )
    p.add_argument("--copy", action="store_true", help="copy the exported files, not link them")
    return p


class RepositoryError(RuntimeError):
    """The exports do not allow the requested repository; the message says what to run."""


def model_config(
    name: str,
    fmt: str,
    args: argparse.Namespace,
    inputs: list[dict],
    outputs: list[dict],
    max_batch: int,
    parameters: dict[str, str],
    acoustic: bool,
) -> dict:
    cfg: dict = {"name": name}
    if args.target == "cpu":
        cfg["backend"] = "python"
    else:
        cfg["platform"] = PLATFORMS[fmt]
    cfg.update(max_batch_size=max_batch, input=inputs, output=outputs)
    if args.dynamic_batching:
        batching: dict = {}
        if args.preferred_batch_sizes:
            batching["preferred_batch_size"] = list(args.preferred_batch_sizes)
        batching["max_queue_delay_microseconds"] = args.max_queue_delay_us
        cfg["dynamic_batching"] = batching
    if args.target == "cpu":
        count = args.instances if acoustic else 1
        cfg["instance_group"] = [{"count": count, "kind": Enum("KIND_CPU")}]
    elif acoustic:
        cfg["instance_group"] = [{"count": args.instances, "kind": Enum("KIND_GPU")}]
    if parameters:
        cfg["parameters"] = [
            {"key": k, "value": {"string_value": v}} for k, v in parameters.items()
        ]
    return cfg


def write_model(
    repo: Path,
    export_dir: Path,
    manifest: ExportManifest,
    cfg: dict,
    fmt: str,
    args: argparse.Namespace,
) -> None:
    name = cfg["name"]
    exported = manifest.find(name)
    if exported is None:
        raise RepositoryError(
            f"{export_dir} has no {name}: export it first (triton/scripts/export_model.sh)"
        )
    version = repo / name / "1"
    version.mkdir(parents=True)
    source = (export_dir / exported.file).resolve()
    target = version / source.name
    if args.copy:
        shutil.copy2(source, target)
    else:
        os.symlink(source, target)
    if args.target == "cpu":
        shutil.copy2(PYTHON_MODEL, version / "model.py")
    (repo / name / "config.pbtxt").write_text(to_pbtxt(cfg) + "\n")


def build(args: argparse.Namespace) -> Path:
    export_dir = Path(args.export_dir) / args.precision
    manifest = ExportManifest.load(export_dir)
    if args.target == "cpu" and "tensorrt" in args.backends:
        raise RepositoryError("the cpu target has no TensorRT: leave tensorrt out of --backends")
    if args.target == "gpu" and manifest.device != "cuda":
        ts = [b for b in args.backends if b == "ts-trace"]
        if ts:
            print(
                f"warning: {export_dir} was exported on {manifest.device}: its TorchScript files "
                "hold CPU constants; export on CUDA for the libtorch backend on a GPU",
                file=sys.stderr,
            )
    repo = Path(args.output)
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)

    dtype = TRITON_TYPES[args.precision]
    max_duration = args.max_duration or manifest.max_duration
    max_samples = math.floor(max_duration * manifest.sample_rate)
    k = manifest.n_classes
    mbs = args.max_batch_size
    component_batch = max(COMPONENT_MAX_BATCH, mbs)
    lengths = ("TYPE_INT32", [1], [])  # (B, 1) in the config, (B,) for the model

    def python_params(name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        if args.target != "cpu":
            return {}
        exported = manifest.find(name)
        if exported is None:
            return {}  # write_model says what to export
        params = {"artifact": Path(exported.file).name, "format": FILE_FORMATS[exported.format]}
        if args.cpu_threads > 0:
            params["cpu_threads"] = str(args.cpu_threads)
        return {**params, **(extra or {})}

    extractor = FEATURE_EXTRACTOR["ts-trace"]
    write_model(
        repo,
        export_dir,
        manifest,
        model_config(
            extractor,
            "ts-trace",
            args,
            [_io("input__0", dtype, [-1]), _io("input__1", *lengths)],
            [_io("output__0", dtype, [manifest.n_mels, -1]), _io("output__1", *lengths)],
            component_batch,
            python_params(extractor, {"max_num_samples": str(max_samples)}),
            acoustic=False,
        ),
        "ts-trace",
        args,
    )
    decoder = DECODER["ts-script"]
    write_model(
        repo,
        export_dir,
        manifest,
        model_config(
            decoder,
            "ts-script",
            args,
            [_io("input__0", "TYPE_FP32", [-1, k]), _io("input__1", *lengths)],
            [_io("output__0", "TYPE_INT32", [-1])],
            component_batch,
            python_params(decoder),
            acoustic=False,
        ),
        "ts-script",
        args,
    )
    client_params = {
        "labels": json.dumps(manifest.labels),
        "sample_rate": str(manifest.sample_rate),
        "trim_silence": json.dumps(manifest.trim_silence),
        "max_num_samples": str(max_samples),
        "precision": args.precision,
    }
    for backend in args.backends:
        name = ACOUSTIC_MODEL[backend]
        write_model(
            repo,
            export_dir,
            manifest,
            model_config(
                name,
                backend,
                args,
                [_io("input__0", dtype, [manifest.n_mels, -1]), _io("input__1", *lengths)],
                # Log-probs are fp32 in both precisions: the model's log-softmax runs in fp32.
                [_io("output__0", "TYPE_FP32", [-1, k]), _io("output__1", *lengths)],
                mbs,
                python_params(name),
                acoustic=True,
            ),
            backend,
            args,
        )
        ensemble = {
            "name": f"{name}-ensemble",
            "platform": "ensemble",
            "max_batch_size": mbs,
            "input": [
                _io("AUDIO_SIGNAL", dtype, [-1]),
                _io("NUM_SAMPLES", "TYPE_INT32", [1]),
            ],
            "output": [_io("TRANSCRIPT", "TYPE_INT32", [-1])],
            "parameters": [
                {"key": key, "value": {"string_value": value}}
                for key, value in client_params.items()
            ],
            "ensemble_scheduling": {
                "step": [
                    _step(
                        extractor,
                        {"input__0": "AUDIO_SIGNAL", "input__1": "NUM_SAMPLES"},
                        {"output__0": "AUDIO_FEATURES", "output__1": "FEATURE_LENGTHS"},
                    ),
                    _step(
                        name,
                        {"input__0": "AUDIO_FEATURES", "input__1": "FEATURE_LENGTHS"},
                        {"output__0": "CHARACTER_PROBABILITIES", "output__1": "ENCODED_LENGTHS"},
                    ),
                    _step(
                        decoder,
                        {"input__0": "CHARACTER_PROBABILITIES", "input__1": "ENCODED_LENGTHS"},
                        {"output__0": "TRANSCRIPT"},
                    ),
                ]
            },
        }
        (repo / ensemble["name"] / "1").mkdir(parents=True)
        (repo / ensemble["name"] / "config.pbtxt").write_text(to_pbtxt(ensemble) + "\n")
    return repo


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict:
    return {
        "model_name": model,
        "model_version": -1,
        "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
        "output_map": [{"key": k, "value": v} for k, v in outputs.items()],
    }


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        repo = build(args)
    except (RepositoryError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    names = sorted(p.name for p in repo.iterdir())
    print(f"{args.target} repository ({args.precision}) in {repo}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
