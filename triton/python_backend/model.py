"""Triton Python-backend model that runs one exported component (a TorchScript or ONNX file).

``model_repository.py --target cpu`` copies this file into ``<model>/1/model.py`` of every
component, beside the exported file; the model's ``config.pbtxt`` says which file and format
(parameters ``artifact`` and ``format``), and the inputs and outputs are the config's, in order.
It runs in the server's backend stub, with the server's environment (``triton/scripts/
setup_server.sh``): torch, onnxruntime and numpy, none of this repository's code.

Requests whose inputs have the same shapes past the batch axis run as one batch (what Triton's
dynamic batcher gathers); the others run one by one. Every request is checked before anything
runs, and one the component cannot serve gets an INVALID_ARGUMENT response (HTTP 400) that says
what is wrong, while the model goes on serving the others; an error of the runtime itself is
INTERNAL (500). The checks: each input of the config's data type, rank and fixed dimensions, at
least one row, float inputs finite (no NaN or infinity), and the lengths (the second input) one
per row within ``[min_length, size]`` where size is the first input's extent along
``length_axis`` (at most ``max_length`` when that is set). The exported TorchScript modules check
the same (``deploy_modules.check_inputs``), for servers that run them natively.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class RequestError(ValueError):
    """The request cannot be served; the message goes back to the client."""


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        self.name = cfg["name"]
        self.inputs = [_Tensor.from_config(t) for t in cfg["input"]]
        self.outputs = [_Tensor.from_config(t) for t in cfg["output"]]
        # What the second input measures: the first input's extent along this axis (model shape,
        # batch axis 0); 0: the model takes no lengths.
        self.length_axis = int(params.get("length_axis", "0"))
        self.min_length = int(params.get("min_length", "1"))
        self.max_length = int(params.get("max_length", "0"))
        # How the client calls the inputs (the ensemble's names), for the error messages.
        self.labels = json.loads(params.get("input_labels", "[]")) or [i.name for i in self.inputs]
        threads = int(params.get("cpu_threads", "0"))
        path = Path(args["model_repository"]) / args["model_version"] / params["artifact"]
        if params["format"] == "torchscript":
            import torch

            if threads > 0:
                torch.set_num_threads(threads)
            self.torch = torch
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
            self.run = self._run_torchscript
        elif params["format"] == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            if threads > 0:
                options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
            self.run = self._run_onnx
        else:
            raise ValueError(f"{self.name}: unknown format {params['format']!r}")

    def _run_torchscript(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with self.torch.inference_mode():
            out = self.module(*(self.torch.from_numpy(a) for a in arrays))
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]

    def _run_onnx(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        feeds = {i.name: a for i, a in zip(self.session.get_inputs(), arrays, strict=True)}
        return self.session.run(None, feeds)

    def _read(self, request) -> list[np.ndarray]:
        """The request's inputs in the model's shapes, checked (:class:`RequestError`)."""
        arrays = []
        for spec, label in zip(self.inputs, self.labels, strict=True):
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is None:
                raise RequestError(f"{self.name}: input {label} is missing")
            arrays.append(spec.to_model(spec.check(tensor.as_numpy(), f"{self.name}: {label}")))
        if len({a.shape[0] for a in arrays}) > 1:
            raise RequestError(
                f"{self.name}: the inputs have different batch sizes {[a.shape[0] for a in arrays]}"
            )
        if self.length_axis > 0:
            self._check_lengths(*arrays[:2])
        return arrays

    def _check_lengths(self, x: np.ndarray, lens: np.ndarray) -> None:
        what, lens_label = f"{self.name}: {self.labels[0]}", self.labels[1]
        size = x.shape[self.length_axis]
        if size == 0:
            raise RequestError(f"{what} is empty (shape {list(x.shape)})")
        if 0 < self.max_length < size:
            raise RequestError(
                f"{what}: {size} is longer than the configured maximum of {self.max_length}"
            )
        low, high = int(lens.min()), int(lens.max())
        if low < self.min_length or high > size:
            values = lens.tolist() if lens.size <= 8 else f"from {low} to {high}"
            raise RequestError(
                f"{self.name}: {lens_label} {values} outside [{self.min_length}, {size}]: each "
                f"must be at least {self.min_length} (the shortest input served) and at most "
                f"the {size} sent"
            )

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[np.ndarray]]]] = defaultdict(list)
        for i, request in enumerate(requests):
            try:
                arrays = self._read(request)
            except RequestError as e:
                responses[i] = _error(str(e), pb_utils.TritonError.INVALID_ARG)
                continue
            key = tuple((a.shape[1:], a.dtype.str) for a in arrays)
            groups[key].append((i, arrays))
        for members in groups.values():
            sizes = [arrays[0].shape[0] for _, arrays in members]
            batch = [
                np.concatenate([arrays[k] for _, arrays in members])
                for k in range(len(self.inputs))
            ]
            try:
                outputs = self.run(batch)
            except Exception as e:  # the runtime's own error types; reported, server goes on
                for i, _ in members:
                    responses[i] = _error(
                        f"{self.name}: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL
                    )
                continue
            start = 0
            for (i, _), size in zip(members, sizes, strict=True):
                tensors = [
                    pb_utils.Tensor(spec.name, spec.from_model(out[start : start + size]))
                    for spec, out in zip(self.outputs, outputs, strict=True)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return responses


def _error(message: str, code):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


class _Tensor:
    """A config input or output: name, numpy dtype, and the ``reshape`` between the config's dims
    (what Triton sees) and the model's shape (what the exported file takes or gives)."""

    def __init__(self, name: str, dtype: np.dtype, dims: list[int], reshape: list[int] | None):
        self.name, self.dtype, self.dims, self.reshape = name, dtype, dims, reshape

    @classmethod
    def from_config(cls, t: dict) -> _Tensor:
        dtype = pb_utils.triton_string_to_numpy(t["data_type"])
        reshape = t.get("reshape")
        dims = [int(d) for d in t["dims"]]  # protobuf's JSON may write int64 as strings
        shape = None if reshape is None else [int(d) for d in reshape.get("shape", [])]
        return cls(t["name"], np.dtype(dtype), dims, shape)

    def check(self, a: np.ndarray, what: str) -> np.ndarray:
        """``a`` if it is what the config declares (dtype; batch axis, then ``dims`` with -1 for
        any size, or the ``reshape`` dims, which Triton has applied already), with at least one
        row and, for floats, no NaN or infinity."""
        if a.dtype != self.dtype:
            raise RequestError(f"{what}: {a.dtype} data where the model takes {self.dtype}")
        dims = self.dims if self.reshape is None else self.reshape
        expected = ["batch", *("any" if d < 0 else d for d in dims)]
        if a.ndim != len(expected) or any(
            d >= 0 and n != d for n, d in zip(a.shape[1:], dims, strict=True)
        ):
            raise RequestError(f"{what}: shape {list(a.shape)} where the model takes {expected}")
        if a.shape[0] == 0:
            raise RequestError(f"{what}: no rows (shape {list(a.shape)})")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise RequestError(f"{what} holds NaN or infinite values")
        return a

    def to_model(self, a: np.ndarray) -> np.ndarray:
        if self.reshape is not None:
            a = a.reshape(a.shape[0], *self.reshape)
        return np.ascontiguousarray(a)

    def from_model(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a).astype(self.dtype, copy=False)
        if self.reshape is not None:
            a = a.reshape(a.shape[0], *self.dims)
        return a
