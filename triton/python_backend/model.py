"""Triton Python-backend model that runs one exported component (a TorchScript or ONNX file).

``model_repository.py --target cpu`` copies this file into ``<model>/1/model.py`` of every
component, beside the exported file; the model's ``config.pbtxt`` says which file and format
(parameters ``artifact`` and ``format``), and the inputs and outputs are the config's, in order.
It runs in the server's backend stub, with the server's environment (``triton/scripts/
setup_server.sh``): torch, onnxruntime and numpy, none of this repository's code.

Requests whose inputs have the same shapes past the batch axis run as one batch (what Triton's
dynamic batcher gathers); the others run one by one. A request the component cannot serve gets an
error response naming the problem, and the model goes on serving the others. With the parameter
``max_num_samples`` (the feature extractor) the audio is checked first: it must hold at least one
sample and at most ``max_num_samples``, and ``NUM_SAMPLES`` must lie in ``[1, samples sent]``.
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
        self.max_num_samples = int(params.get("max_num_samples", "0"))
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
        arrays = []
        for spec in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is None:
                raise RequestError(f"{self.name}: input {spec.name} is missing")
            arrays.append(spec.to_model(tensor.as_numpy()))
        if self.max_num_samples > 0:
            self._check_audio(*arrays[:2])
        return arrays

    def _check_audio(self, audio: np.ndarray, num_samples: np.ndarray) -> None:
        sent = audio.shape[-1]
        if audio.ndim != 2 or sent == 0:
            raise RequestError(f"{self.name}: empty audio (shape {list(audio.shape)})")
        if sent > self.max_num_samples:
            raise RequestError(
                f"{self.name}: {sent} samples is longer than the configured maximum of "
                f"{self.max_num_samples}"
            )
        if num_samples.size and (num_samples.min() < 1 or num_samples.max() > sent):
            raise RequestError(
                f"{self.name}: NUM_SAMPLES {num_samples.tolist()} outside [1, {sent}]"
            )

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[np.ndarray]]]] = defaultdict(list)
        for i, request in enumerate(requests):
            try:
                arrays = self._read(request)
            except RequestError as e:
                responses[i] = _error(str(e))
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
                    responses[i] = _error(f"{self.name}: {type(e).__name__}: {e}")
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


def _error(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


class _Tensor:
    """A config input or output: name, numpy dtype, and the ``reshape`` between the config's dims
    (what Triton sees) and the model's shape (what the exported file takes or gives)."""

    def __init__(self, name: str, dtype: np.dtype, dims: list[int], reshape: list[int] | None):
        self.name, self.dtype, self.dims, self.reshape = name, dtype, dims, reshape

    @classmethod
    def from_config(cls, t: dict) -> _Tensor:
        dtype = pb_utils.triton_string_to_numpy(t["data_type"])
        reshape = t.get("reshape")
        return cls(t["name"], np.dtype(dtype), list(t["dims"]), reshape and reshape["shape"])

    def to_model(self, a: np.ndarray) -> np.ndarray:
        if self.reshape is not None:
            a = a.reshape(a.shape[0], *self.reshape)
        return np.ascontiguousarray(a)

    def from_model(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a).astype(self.dtype, copy=False)
        if self.reshape is not None:
            a = a.reshape(a.shape[0], *self.dims)
        return a
