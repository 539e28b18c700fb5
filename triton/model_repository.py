"""Build a Triton model repository from ``export.py``'s files.

Generated where upstream (NVIDIA DeepLearningExamples, ``PyTorch/SpeechRecognition/Jasper``) kept
fixed files: its ``triton/model_repo_configs/{fp16,fp32}/*/config.pbtxt``, copied and linked by
``triton/scripts/prepare_model_repository.sh``.

    python triton/model_repository.py --export_dir triton/model_repo --precision fp16 \\
        --target gpu --backends ts-trace onnx tensorrt --output triton/deploy/model_repo

Targets:

- ``gpu``: the NGC Triton container on a GPU machine. Native backends: ``pytorch_libtorch`` for the
  TorchScript files, ``onnxruntime_onnx``, ``tensorrt_plan``; the acoustic models get
  ``instance_group { kind: KIND_GPU }``. TorchScript traced on the CPU is refused (an error, not
  a warning): a trace holds the device of every tensor it creates, and the CPU constants fail on
  the GPU; export with ``--device cuda`` (``DEVICE=cuda``) on a GPU machine.
- ``cpu``: the ``tritonserver`` that the PyPI package ``nvidia-pytriton`` bundles (development and
  CI; ``triton/scripts/setup_server.sh``). It has only the Python backend, so each component is a
  Python-backend model (``triton/python_backend/model.py``) running the exported TorchScript or
  ONNX file. No TensorRT there.

Models and ensembles keep upstream's names: ``feature-extractor-ts-trace`` and ``decoder-ts-script``
(the extractor and decoder of every ensemble, ``deploy_modules.SERVED_*``),
``jasper-{ts-trace,onnx,tensorrt}`` and ``jasper-{ts-trace,onnx,tensorrt}-ensemble``. An ensemble
takes ``AUDIO_SIGNAL`` (B, N) and ``NUM_SAMPLES`` (B, 1) and returns ``TRANSCRIPT`` (B, T_enc): the
per-frame argmax ids, the blank past each utterance's length, for the client to CTC-collapse.
Unlike upstream, the lengths go through the pipeline (extractor -> acoustic model -> decoder), so
each utterance of a padded batch gets its own result. The ensemble's ``parameters`` carry what a
client needs to prepare audio and read the ids: ``labels`` (JSON), ``sample_rate``,
``trim_silence``, ``min_num_samples`` and ``max_num_samples`` (the audio the server accepts),
``pad_leading`` (the zero frames the extractor puts in front, as ``inference.py --pad_leading``),
``precision``. On the cpu target each component's parameters also say what its Python backend
checks (``length_axis``, ``min_length``, ``max_length``, ``input_labels``: see
``python_backend/model.py``).

The version folders link to the exported files (``--copy`` copies them instead). ``--output`` is
replaced when it is a repository this script wrote (it leaves a ``REPOSITORY_MARK`` file there)
or empty; any other existing folder is kept unless ``--overwrite`` says to delete it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

from deploy_modules import ACOUSTIC_MODEL, SERVED_DECODER, SERVED_EXTRACTOR, ExportManifest

HERE = Path(__file__).resolve().parent
PYTHON_MODEL = HERE / "python_backend" / "model.py"
TRITON_TYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16"}
PLATFORMS = {"ts-trace": "pytorch_libtorch", "ts-script": "pytorch_libtorch",
             "onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}  # fmt: skip
FILE_FORMATS = {"ts-trace": "torchscript", "ts-script": "torchscript", "onnx": "onnx"}
COMPONENT_MAX_BATCH = 64  # upstream's max_batch_size of the extractor and the decoder
LENGTHS = ("TYPE_INT32", [1], [])  # lengths: (B, 1) in the config, (B,) for the model
REPOSITORY_MARK = ".jasper_model_repository"  # in every repository this script writes


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
    p.add_argument(
        "--overwrite",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="delete an existing --output folder that this script did not write",
    )
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


def python_params(
    args: argparse.Namespace,
    manifest: ExportManifest,
    name: str,
    labels: tuple[str, str],
    length_axis: int,
    min_length: int = 1,
    max_length: int = 0,
) -> dict[str, str]:
    """The Python-backend model's parameters (cpu target): the file it runs and its format, and
    what it checks: the inputs' names for the messages, and the lengths (the second input) in
    ``[min_length, size]`` of the first input along ``length_axis``, at most ``max_length``."""
    if args.target != "cpu":
        return {}
    exported = manifest.find(name)
    if exported is None:
        return {}  # write_model says what to export
    params = {"artifact": Path(exported.file).name, "format": FILE_FORMATS[exported.format]}
    if args.cpu_threads > 0:
        params["cpu_threads"] = str(args.cpu_threads)
    params.update(
        input_labels=json.dumps(list(labels)),
        length_axis=str(length_axis),
        min_length=str(min_length),
        max_length=str(max_length),
    )
    return params


def served_configs(
    args: argparse.Namespace, manifest: ExportManifest, max_samples: int
) -> list[tuple[dict, str]]:
    """``(config, format)`` of every model the ensembles run: the extractor, the decoder, and the
    acoustic model of each of ``--backends``."""
    dtype, k = TRITON_TYPES[args.precision], manifest.n_classes
    component_batch = max(COMPONENT_MAX_BATCH, args.max_batch_size)
    extractor = model_config(
        SERVED_EXTRACTOR,
        "ts-trace",
        args,
        [_io("input__0", dtype, [-1]), _io("input__1", *LENGTHS)],
        [_io("output__0", dtype, [manifest.n_mels, -1]), _io("output__1", *LENGTHS)],
        component_batch,
        python_params(
            args,
            manifest,
            SERVED_EXTRACTOR,
            ("AUDIO_SIGNAL", "NUM_SAMPLES"),
            length_axis=1,
            min_length=manifest.min_num_samples,
            max_length=max_samples,
        ),
        acoustic=False,
    )
    decoder = model_config(
        SERVED_DECODER,
        "ts-script",
        args,
        [_io("input__0", "TYPE_FP32", [-1, k]), _io("input__1", *LENGTHS)],
        [_io("output__0", "TYPE_INT32", [-1])],
        component_batch,
        python_params(
            args, manifest, SERVED_DECODER, ("log-probs", "encoder lengths"), length_axis=1
        ),
        acoustic=False,
    )
    acoustic = [
        model_config(
            ACOUSTIC_MODEL[backend],
            backend,
            args,
            [_io("input__0", dtype, [manifest.n_mels, -1]), _io("input__1", *LENGTHS)],
            # Log-probs are fp32 in both precisions: the model's log-softmax runs in fp32.
            [_io("output__0", "TYPE_FP32", [-1, k]), _io("output__1", *LENGTHS)],
            args.max_batch_size,
            python_params(
                args,
                manifest,
                ACOUSTIC_MODEL[backend],
                ("features", "feature lengths"),
                length_axis=2,
            ),
            acoustic=True,
        )
        for backend in args.backends
    ]
    return [(extractor, "ts-trace"), (decoder, "ts-script")] + list(
        zip(acoustic, args.backends, strict=True)
    )


def ensemble_config(acoustic: str, dtype: str, max_batch: int, client_params: dict) -> dict:
    """``jasper-<backend>-ensemble``: audio and its lengths -> extractor -> acoustic model ->
    decoder -> per-frame ids, the lengths passed along at every step."""
    return {
        "name": f"{acoustic}-ensemble",
        "platform": "ensemble",
        "max_batch_size": max_batch,
        "input": [_io("AUDIO_SIGNAL", dtype, [-1]), _io("NUM_SAMPLES", "TYPE_INT32", [1])],
        "output": [_io("TRANSCRIPT", "TYPE_INT32", [-1])],
        "parameters": [
            {"key": key, "value": {"string_value": value}} for key, value in client_params.items()
        ],
        "ensemble_scheduling": {
            "step": [
                _step(
                    SERVED_EXTRACTOR,
                    {"input__0": "AUDIO_SIGNAL", "input__1": "NUM_SAMPLES"},
                    {"output__0": "AUDIO_FEATURES", "output__1": "FEATURE_LENGTHS"},
                ),
                _step(
                    acoustic,
                    {"input__0": "AUDIO_FEATURES", "input__1": "FEATURE_LENGTHS"},
                    {"output__0": "CHARACTER_PROBABILITIES", "output__1": "ENCODED_LENGTHS"},
                ),
                _step(
                    SERVED_DECODER,
                    {"input__0": "CHARACTER_PROBABILITIES", "input__1": "ENCODED_LENGTHS"},
                    {"output__0": "TRANSCRIPT"},
                ),
            ]
        },
    }


def load_exports(args: argparse.Namespace) -> tuple[Path, ExportManifest]:
    """The precision's export folder and manifest; refuses TensorRT on the cpu target, and
    TorchScript traced anywhere but on CUDA on the gpu target (its libtorch backend runs the
    trace on the GPU, where the CPU constants of a CPU trace fail)."""
    export_dir = Path(args.export_dir) / args.precision
    manifest = ExportManifest.load(export_dir)
    if args.target == "cpu" and "tensorrt" in args.backends:
        raise RepositoryError("the cpu target has no TensorRT: leave tensorrt out of --backends")
    if args.target == "gpu":
        served = [SERVED_EXTRACTOR, SERVED_DECODER] + [ACOUSTIC_MODEL[b] for b in args.backends]
        traced_elsewhere = [
            f"{f.name} ({f.device or manifest.device})"
            for f in manifest.files
            if f.name in served
            and f.format == "ts-trace"
            and (f.device or manifest.device) != "cuda"
        ]
        if traced_elsewhere:
            raise RepositoryError(
                f"{export_dir}: TorchScript traced off the GPU cannot serve on the gpu target "
                f"(a trace keeps the device of the tensors it creates): "
                f"{', '.join(traced_elsewhere)}. Export on a CUDA machine with DEVICE=cuda "
                "(export.py --device cuda), or use --target cpu"
            )
    return export_dir, manifest


def prepare_output(repo: Path, overwrite: bool) -> None:
    """An empty ``repo`` folder. An existing one is deleted only when this script wrote it (its
    :data:`REPOSITORY_MARK`), it is empty, or ``overwrite`` says so: ``--output`` pointed at the
    wrong folder must not cost its files."""
    if repo.exists() or repo.is_symlink():
        if not repo.is_dir() or repo.is_symlink():
            raise RepositoryError(f"--output {repo} exists and is not a folder: choose another")
        ours = (repo / REPOSITORY_MARK).is_file()
        if not (ours or overwrite or not any(repo.iterdir())):
            raise RepositoryError(
                f"--output {repo} is a folder that model_repository.py did not write and it is "
                "not empty: choose another folder, or pass --overwrite to delete it"
            )
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    (repo / REPOSITORY_MARK).write_text(
        "Written by triton/model_repository.py, which replaces this folder when run again.\n"
    )


def build(args: argparse.Namespace) -> Path:
    export_dir, manifest = load_exports(args)
    repo = Path(args.output)
    prepare_output(repo, args.overwrite)
    max_duration = args.max_duration or manifest.max_duration
    max_samples = math.floor(max_duration * manifest.sample_rate)
    for cfg, fmt in served_configs(args, manifest, max_samples):
        write_model(repo, export_dir, manifest, cfg, fmt, args)
    client_params = {
        "labels": json.dumps(manifest.labels),
        "sample_rate": str(manifest.sample_rate),
        "trim_silence": json.dumps(manifest.trim_silence),
        "min_num_samples": str(manifest.min_num_samples),
        "max_num_samples": str(max_samples),
        "pad_leading": str(manifest.pad_leading),
        "precision": args.precision,
    }
    dtype = TRITON_TYPES[args.precision]
    for backend in args.backends:
        ensemble = ensemble_config(
            ACOUSTIC_MODEL[backend], dtype, args.max_batch_size, client_params
        )
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
    names = sorted(p.name for p in repo.iterdir() if p.is_dir())
    print(f"{args.target} repository ({args.precision}) in {repo}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
