"""Transcribe recordings with a Triton server running a ``jasper-*-ensemble``.

Upstream's client is ``triton/jasper-client.py`` with ``triton/speech_utils.py`` (NVIDIA
DeepLearningExamples, ``PyTorch/SpeechRecognition/Jasper``); this one takes the same kind of inputs:

    python triton/client.py --url 127.0.0.1:8000 --protocol http --model jasper-onnx-ensemble \\
        data/audio/example1.wav data/audio/ [--dataset_dir DIR MANIFEST.json] [--batch_size 4]

Inputs are audio files (WAV/FLAC/OGG/Opus/MP3/M4A, any sample rate, mono or multi-channel),
folders (every audio file under them) and manifests (``*.json``, docs/upstream.md#manifests, as
``utils/convert_librispeech.py`` writes them, read by :func:`common.dataset.read_manifests`: the
speed-1.0 file of each entry, relative to ``--dataset_dir``). Audio is read as ``inference.py`` reads it
(:func:`common.audio.load_audio` at the model's rate, channels averaged, silence trimmed when the
model's config says so). Batches are padded with zeros after each recording's end and every
recording sends its own length in ``NUM_SAMPLES`` (upstream's ``SpeechClient.recognize`` padded
with Gaussian noise and sent the longest length for all).

The server returns per-frame ids; they are CTC-collapsed here with the labels the ensemble's
config carries (written there from the exported checkpoint), never a hard-coded list. Output: one
``<name>\\t<transcript>`` line per recording, as ``inference.py --transcribe_wav`` prints; with
manifests, the corpus WER (:func:`common.metrics.word_error_rate`) on their transcripts.

A recording the server would refuse is refused here, naming the file, before anything is sent:
one that cannot be decoded, holds NaN or infinite samples, or is shorter or longer than the
ensemble's ``min_num_samples``/``max_num_samples``. Such a file is reported on stderr and left
out, the others are transcribed, and the exit status is 1. An error of the server names the files
of the request.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.audio import AudioLoadError, load_audio
from common.dataset import ManifestError, read_manifests
from common.metrics import ctc_greedy_text, word_error_rate
from jasper.transcribe import audio_files

NUMPY_TYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}


class ClientError(RuntimeError):
    """The server or the inputs cannot serve the request; the message says why."""


@dataclass
class ServedModel:
    """What the ensemble's config tells a client: how to prepare audio and read the ids."""

    labels: list[str]
    sample_rate: int
    trim_silence: bool
    min_num_samples: int
    max_num_samples: int
    pad_leading: int  # zero frames the served extractor puts in front (inference.py's)
    audio_dtype: type
    max_batch_size: int

    @classmethod
    def from_config(cls, cfg: dict) -> ServedModel:
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        if "labels" not in params:
            raise ClientError(
                f"the config of {cfg.get('name')} carries no labels: regenerate the repository "
                "with triton/model_repository.py"
            )
        audio = next(i for i in cfg["input"] if i["name"] == "AUDIO_SIGNAL")
        return cls(
            labels=json.loads(params["labels"]),
            sample_rate=int(params.get("sample_rate", "16000")),
            trim_silence=json.loads(params.get("trim_silence", "false")),
            min_num_samples=int(params.get("min_num_samples", "1")),
            max_num_samples=int(params.get("max_num_samples", "0")),
            pad_leading=int(params.get("pad_leading", "0")),
            audio_dtype=NUMPY_TYPES[audio["data_type"]],
            max_batch_size=int(cfg.get("max_batch_size", 0)),
        )


class SpeechClient:
    """A connection to one ensemble over HTTP or gRPC (``tritonclient``)."""

    def __init__(self, url: str, protocol: str, model: str, timeout: float = 120.0) -> None:
        self.protocol, self.model = protocol.lower(), model
        if self.protocol == "http":
            import tritonclient.http as tc

            self.client = tc.InferenceServerClient(url=url, network_timeout=timeout)
        elif self.protocol == "grpc":
            import tritonclient.grpc as tc

            self.client = tc.InferenceServerClient(url=url)
        else:
            raise ClientError(f"protocol {protocol!r}: use http or grpc")
        self.tc = tc
        self.timeout = timeout
        try:
            if self.protocol == "http":
                cfg = self.client.get_model_config(model)
            else:
                cfg = self.client.get_model_config(model, as_json=True)["config"]
        except (self.exception_type(), OSError) as e:  # OSError: nothing listens there
            raise ClientError(f"{url}: cannot read the config of {model}: {e}") from e
        self.served = ServedModel.from_config(cfg)

    def exception_type(self) -> type[Exception]:
        from tritonclient.utils import InferenceServerException

        return InferenceServerException

    def request(
        self, audio: np.ndarray, num_samples: np.ndarray
    ) -> tuple[list, list]:  # (inputs, outputs)
        """The request's tensors: ``AUDIO_SIGNAL`` (B, N) and ``NUM_SAMPLES`` (B, 1)."""
        inputs = [
            self.tc.InferInput("AUDIO_SIGNAL", list(audio.shape), _triton_type(audio.dtype)),
            self.tc.InferInput("NUM_SAMPLES", list(num_samples.shape), "INT32"),
        ]
        inputs[0].set_data_from_numpy(audio)
        inputs[1].set_data_from_numpy(num_samples)
        return inputs, [self.tc.InferRequestedOutput("TRANSCRIPT")]

    def infer(self, audio: np.ndarray, num_samples: np.ndarray) -> np.ndarray:
        """Per-frame ids (B, T_enc) int32 of a padded batch; raises :class:`ClientError` with the
        server's message when it refuses the request."""
        inputs, outputs = self.request(audio, num_samples)
        try:
            if self.protocol == "http":
                result = self.client.infer(self.model, inputs, outputs=outputs)
            else:
                result = self.client.infer(
                    self.model, inputs, outputs=outputs, client_timeout=self.timeout
                )
        except (self.exception_type(), OSError) as e:
            raise ClientError(f"{self.model}: {e}") from e
        return result.as_numpy("TRANSCRIPT")

    def pad(self, signals: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Zero-padded batch (B, longest) in the model's audio dtype and lengths (B, 1) int32."""
        longest = max(s.size for s in signals)
        audio = np.zeros((len(signals), longest), dtype=self.served.audio_dtype)
        for i, s in enumerate(signals):
            audio[i, : s.size] = s
        lens = np.array([[s.size] for s in signals], dtype=np.int32)
        return audio, lens

    def transcribe(self, signals: Sequence[np.ndarray]) -> list[str]:
        """Transcripts of recordings (mono float32 at the model's rate), sent as one batch."""
        ids = self.infer(*self.pad(signals))  # the server has blanked the frames past each length
        return [ctc_greedy_text(row.tolist(), self.served.labels) for row in ids]

    def load(self, path: str | Path, offset: float = 0.0, duration: float | None = None):
        """The recording as the served model takes it (mono float32 at its rate, trimmed when its
        config says so).

        Raises:
            common.audio.AudioLoadError: naming the file, when it cannot be read, holds NaN or
                infinite samples, or has fewer or more samples than the ensemble serves.
        """
        samples = load_audio(
            path,
            target_sr=self.served.sample_rate,
            offset=offset,
            duration=duration,
            trim_silence=self.served.trim_silence,
        )
        if samples.size == 0:
            raise AudioLoadError(f"audio file {path} holds only silence")
        rate, least, most = (
            self.served.sample_rate,
            self.served.min_num_samples,
            self.served.max_num_samples,
        )
        if samples.size < least:
            raise AudioLoadError(
                f"{path}: {samples.size / rate:.3f} s of audio is too short to transcribe "
                f"(at least {least} samples, {1000 * least / rate:.1f} ms at {rate} Hz)"
            )
        if most and samples.size > most:
            raise AudioLoadError(
                f"{path}: {samples.size / rate:.1f} s of audio is longer than the server takes "
                f"({most / rate:.1f} s: model_repository.py --max_duration)"
            )
        return samples

    def close(self) -> None:
        self.client.close()


def _triton_type(dtype: np.dtype) -> str:
    return {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16"}[np.dtype(dtype)]


@dataclass
class Item:
    """One recording to transcribe: its name as printed, path, and reference (manifests)."""

    name: str
    path: Path
    reference: str | None = None
    offset: float = 0.0
    duration: float | None = None


def collect(inputs: Sequence[str], dataset_dir: str, labels: Sequence[str]) -> list[Item]:
    """Files and folders as ``inference.py --transcribe_wav`` takes them; ``*.json`` manifests
    through :func:`common.dataset.read_manifests` (transcripts normalised with the labels)."""
    items: list[Item] = []
    for entry in inputs:
        if entry.endswith(".json"):
            utts = read_manifests(
                [entry], dataset_dir, labels, ignore_offline_speed_perturbation=True
            )
            root = Path(dataset_dir)
            for u in utts:
                path = u.files[0].path
                name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
                duration = u.files[0].duration if u.offset else None
                items.append(Item(name, path, u.transcript, u.offset, duration))
        else:
            items += [Item(str(p), p) for p in audio_files([entry])]
    return items


def batched(items: list[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Transcribe audio files, folders or manifests with a Triton Jasper ensemble.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="audio files, folders, or *.json manifests")
    p.add_argument("-u", "--url", default="127.0.0.1:8000", help="server (HTTP or gRPC port)")
    p.add_argument("-i", "--protocol", default="http", choices=["http", "grpc"])
    p.add_argument("-m", "--model", default="jasper-onnx-ensemble", help="ensemble to call")
    p.add_argument("--batch_size", type=int, default=1, help="recordings per request")
    p.add_argument("--dataset_dir", default=".", help="manifests' fname paths are relative to it")
    p.add_argument("--save_predictions", default=None, help="write <name>\\t<transcript> lines")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        client = SpeechClient(args.url, args.protocol, args.model, args.timeout)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        items = collect(args.inputs, args.dataset_dir, client.served.labels)
        size = max(1, args.batch_size)
        if client.served.max_batch_size and size > client.served.max_batch_size:
            raise ClientError(
                f"--batch_size {size} exceeds the model's max_batch_size "
                f"{client.served.max_batch_size}"
            )
        lines, hypotheses, references, skipped = [], [], [], 0
        for batch in batched(items, size):
            loaded, signals = [], []
            for item in batch:
                try:
                    signals.append(client.load(item.path, item.offset, item.duration))
                    loaded.append(item)
                except AudioLoadError as e:  # reported and left out; the others go on
                    print(f"error: {e}", file=sys.stderr)
                    skipped += 1
            if not loaded:
                continue
            try:
                texts = client.transcribe(signals)
            except ClientError as e:
                names = ", ".join(it.name for it in loaded)
                raise ClientError(f"request with {names}: {e}") from e
            for item, text in zip(loaded, texts, strict=True):
                print(f"{item.name}\t{text}", flush=True)
                lines.append(f"{item.name}\t{text}\n")
                if item.reference is not None:
                    hypotheses.append(text)
                    references.append(item.reference)
    except (ClientError, AudioLoadError, ManifestError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if references:
        wer, errors, words = word_error_rate(hypotheses, references)
        print(
            f"WER {100 * wer:.4f} % ({errors} errors / {words} words, {len(references)} utterances)"
        )
    if args.save_predictions:
        Path(args.save_predictions).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save_predictions).write_text("".join(lines), encoding="utf-8")
    if skipped:
        print(f"error: {skipped} of {len(items)} recordings left out (above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
