"""Serving and bad input (issue "Training at scale", section "Serving and bad input"), without a
server: the exported modules of triton/deploy_modules.py, the Python backend's execute function
(triton/python_backend/model.py, with a stand-in for Triton's ``triton_python_backend_utils``),
model_repository.py, and jasper.transcribe for the same inputs. tests/test_triton_server.py
checks the same through a real server where one runs.

- A padded batch gives each recording what it gets alone (the extractor used to let a shorter
  recording's last frames see the batch's zero padding instead of its own reflected end).
- The served pipeline puts inference.py's 16 leading zero frames in front by default.
- Audio shorter than the STFT can frame (10 ms), NaN or infinite audio, and malformed tensors
  (wrong dtype, rank, empty, lengths past the array or negative) are refused with errors that
  say what and, for files, which; the backend answers them INVALID_ARGUMENT, not INTERNAL.
- model_repository.py refuses CPU-traced TorchScript for the gpu target and keeps an existing
  --output folder it did not write unless --overwrite.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

import inference
from common.audio import AudioLoadError, load_audio
from common.features import FilterbankFeatures
from jasper import config, decoding_settings
from jasper.decoding import greedy_texts
from jasper.transcribe import Transcriber, load_model
from tests.conftest import AUDIO, REFERENCE, REPO, load_script

SMALL = REFERENCE / "small_model"
SMALL_CKPT, SMALL_CONFIG = SMALL / "checkpoint.pt", SMALL / "config.yaml"
RECORDINGS = sorted(AUDIO.rglob("*.wav"))[:8]
# Lengths (seconds) the recordings are cut to: all different, so that every one but the longest
# is padded in a batch.
SECONDS = [2.3, 4.05, 1.07, 3.3, 2.79, 0.9, 3.71, 1.55]
LOG_PROB_TOLERANCE = 5e-5  # float rounding of sums over other lengths; measured 1.3e-5


export = load_script("triton", "export")
repository = load_script("triton", "model_repository")
deploy = sys.modules["deploy_modules"]


@pytest.fixture(scope="module")
def small():
    return load_model(SMALL_CKPT, SMALL_CONFIG)


@pytest.fixture(scope="module")
def signals(small) -> list[np.ndarray]:
    _, cfg = small
    trim = config.input(cfg, "val")[0]["trim_silence"]
    return [
        load_audio(p, trim_silence=trim)[: int(s * 16000)]
        for p, s in zip(RECORDINGS, SECONDS, strict=True)
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """fp32 exports of the reference checkpoint with export.py's defaults (TorchScript traced on
    the CPU, the ONNX acoustic model)."""
    folder = tmp_path_factory.mktemp("export")
    argv = ["--ckpt", str(SMALL_CKPT), "--model_config", str(SMALL_CONFIG)]
    argv += ["--export_dir", str(folder), "--precisions", "fp32", "--device", "cpu"]
    argv += ["--convert", "feature-extractor", "decoder", "ts-trace", "onnx"]
    argv += ["--check_audio", *map(str, RECORDINGS[:3])]
    export.run(export.get_parser().parse_args(argv))
    return folder / "fp32"


def _pad(signals: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    audio = np.zeros((len(signals), max(s.size for s in signals)), np.float32)
    for i, s in enumerate(signals):
        audio[i, : s.size] = s
    return torch.from_numpy(audio), torch.tensor([s.size for s in signals], dtype=torch.int32)


def _torchscript(path):
    module = torch.jit.load(str(path)).eval()

    def run(*xs):
        with torch.inference_mode():
            out = module(*xs)
        return out if isinstance(out, tuple) else (out,)

    return run


def _pipeline(folder):
    """The served ensemble's three steps on (audio, num_samples): (log_probs, enc_lens, ids)."""
    extractor = _torchscript(folder / "feature-extractor-ts-trace" / "1" / "model.pt")
    acoustic = _torchscript(folder / "jasper-ts-trace" / "1" / "model.pt")
    decoder = _torchscript(folder / "decoder-ts-script" / "1" / "model.pt")

    def run(audio, lens):
        log_probs, enc_lens = acoustic(*extractor(audio, lens))
        (ids,) = decoder(log_probs, enc_lens)
        return log_probs, enc_lens, ids

    return run


# --------------------------------------------------------------------------------------------
# 1. A padded batch is transcribed exactly as its recordings one by one


def test_padded_batch_features_are_each_recordings_features_alone(small, signals):
    """Each row of a padded batch through the extractor module equals FilterbankFeatures on
    that recording alone (before the fix, the last frames of the shorter ones saw the zero
    padding: differences of 0.09 in the normalised features)."""
    _, cfg = small
    features = FilterbankFeatures(**config.input(cfg, "val")[1]).eval()
    extractor = deploy.FeatureExtractor(features)
    audio, lens = _pad(signals)
    with torch.inference_mode():
        feats, feat_lens = extractor(audio, lens)
    for i, s in enumerate(signals):
        alone, alone_lens = features(torch.from_numpy(s)[None], torch.tensor([s.size]))
        n = int(alone_lens[0])
        assert int(feat_lens[i]) == n
        assert (feats[i, :, :n] - alone[0, :, :n]).abs().max() <= 1e-5, RECORDINGS[i]
        assert not feats[i, :, n:].any()


@pytest.mark.parametrize("batch_size", [2, 3, 5, 8])
def test_padded_batch_through_the_exported_pipeline_equals_single_runs(
    exported, small, signals, batch_size
):
    """Transcripts and log-probs of recordings of different lengths padded into one batch equal
    those of one-recording requests, through the exported extractor, acoustic model and decoder
    that the ensembles run."""
    _, cfg = small
    run = _pipeline(exported)
    batch = signals[:batch_size]
    log_probs, enc_lens, ids = run(*_pad(batch))
    texts = greedy_texts(log_probs, enc_lens, cfg["labels"])
    for i, s in enumerate(batch):
        lp1, el1, ids1 = run(*_pad([s]))
        n = int(el1[0])
        assert int(enc_lens[i]) == n
        assert (log_probs[i, :n] - lp1[0, :n]).abs().max() <= LOG_PROB_TOLERANCE, RECORDINGS[i]
        assert torch.equal(ids[i, :n], ids1[0, :n]), RECORDINGS[i]
        assert texts[i] == greedy_texts(lp1, el1, cfg["labels"])[0]


# --------------------------------------------------------------------------------------------
# 2. The served pipeline pads as inference.py does by default


def test_leading_padding_defaults_agree_everywhere(exported):
    """Without decoding settings in the checkpoint, 16 zero frames (upstream's): inference.py,
    scripts/inference.sh, export.py and export_model.sh leave it unset and resolve it the same
    way (jasper/decoding_settings.py), and the export and the ensemble's parameters record it."""
    default = decoding_settings.DEFAULTS["pad_leading"]
    assert default == 16 and default == export.PAD_LEADING
    assert inference.get_parser().get_default("pad_leading") is None
    assert export.get_parser().get_default("pad_leading") is None
    for script in ("scripts/inference.sh", "triton/scripts/export_model.sh"):
        text = (REPO / script).read_text()
        assert ': "${PAD_LEADING:=}"' in text and "--pad_leading" in text, script
    manifest = json.loads((exported / "export.json").read_text())
    assert manifest["pad_leading"] == default and manifest["min_num_samples"] == 257


def test_served_pipeline_gives_inference_py_transcripts_with_its_defaults(exported, signals):
    """The exported pipeline equals jasper.transcribe (inference.py's library) with its default
    leading padding, without anyone setting PAD_LEADING=0."""
    transcriber = Transcriber.from_checkpoint(SMALL_CKPT, SMALL_CONFIG, device="cpu")
    assert transcriber.pad_leading == 16
    run = _pipeline(exported)
    for path, s in zip(RECORDINGS, signals, strict=True):
        expected = transcriber.log_probs(s)
        log_probs, enc_lens, _ = run(*_pad([s]))
        n = int(enc_lens[0])
        assert n == expected.size(0), path
        assert (log_probs[0, :n] - expected).abs().max() <= 1e-4, path
        assert transcriber.decode(log_probs[0, :n]) == transcriber.decode(expected), path


# --------------------------------------------------------------------------------------------
# 3 and 4. Too short, NaN and infinite audio: refused, naming the file


@pytest.fixture(scope="module")
def transcriber():
    return Transcriber.from_checkpoint(SMALL_CKPT, SMALL_CONFIG, device="cpu")


def test_a_10_ms_file_is_refused_naming_it_and_the_shortest_length(tmp_path, transcriber):
    rng = np.random.default_rng(0)
    short = tmp_path / "short.wav"
    sf.write(short, 0.3 * rng.standard_normal(160).astype(np.float32), 16000)
    message = r"short\.wav: 0\.010 s of audio.* too short to transcribe \(at least 257 samples"
    with pytest.raises(AudioLoadError, match=message):
        transcriber.transcribe_file(short)
    with pytest.raises(AudioLoadError, match="too short"):
        transcriber.transcribe(np.zeros(256, np.float32))
    # The shortest audio the STFT frames with reflect padding (n_fft // 2 + 1 samples) works.
    assert isinstance(transcriber.transcribe(rng.standard_normal(257).astype(np.float32)), str)


def test_inference_py_reports_a_10_ms_file_without_a_traceback(tmp_path, capsys):
    short = tmp_path / "short.wav"
    sf.write(short, 0.3 * np.random.default_rng(0).standard_normal(160), 16000)
    argv = ["--ckpt", str(SMALL_CKPT), "--model_config", str(SMALL_CONFIG), "--no-ema"]
    argv += ["--output_dir", str(tmp_path / "out"), "--transcribe_wav", str(short), "--cpu"]
    rc = inference.main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and f"{short}: 0.010 s of audio" in err and "Traceback" not in err


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_audio_is_refused_naming_the_file(tmp_path, transcriber, bad):
    audio = 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    audio[8000] = bad
    path = tmp_path / "broken.wav"
    sf.write(path, audio, 16000, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match=r"broken\.wav: 1 of 16000 samples are NaN or inf"):
        load_audio(path)
    with pytest.raises(AudioLoadError, match="broken.wav"):
        transcriber.transcribe_file(path)
    with pytest.raises(AudioLoadError, match="NaN or infinite"):
        transcriber.transcribe(audio)


@pytest.mark.parametrize(
    "model, inputs, message",
    [
        ("feature-extractor-ts-trace", (np.zeros((1, 160)), [160]), r"from 160 to 160 outside \[257"),
        ("feature-extractor-ts-trace", (np.full((1, 1600), np.nan), [1600]), "NaN or infinite"),
        ("feature-extractor-ts-trace", (np.zeros((2, 1600)), [1600, 1601]), "outside"),
        ("jasper-ts-trace", (np.zeros((1, 64, 50)), [51]), r"outside \[1, 50\]"),
        ("jasper-ts-trace", (np.zeros((1, 64, 50)), [-2]), "outside"),
        ("decoder-ts-script", (np.zeros((1, 20, 29)), [0]), r"outside \[1, 20\]"),
        ("decoder-ts-script", (np.zeros((2, 20, 29)), [5]), "1 lengths for a batch of 2"),
    ],
)  # fmt: skip
def test_exported_torchscript_checks_its_inputs(exported, model, inputs, message):
    """For servers that run the files natively (libtorch): a clear error, not a crash deep in
    the STFT or a silent result for lengths past the array."""
    x, lens = inputs
    run = _torchscript(exported / model / "1" / "model.pt")
    with pytest.raises(Exception, match=message):
        run(torch.tensor(x, dtype=torch.float32), torch.tensor(lens, dtype=torch.int32))


# --------------------------------------------------------------------------------------------
# 5. The Python backend answers malformed input INVALID_ARGUMENT


class _TritonError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self.message, self.code = message, code


class _Response:
    def __init__(self, output_tensors, error=None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


def _fake_pb_utils() -> types.ModuleType:
    """What model.py uses of Triton's triton_python_backend_utils."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TritonError, pb.InferenceResponse, pb.Tensor = _TritonError, _Response, _Tensor
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)
    types_ = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT32": np.int32}
    pb.triton_string_to_numpy = types_.__getitem__
    return pb


@pytest.fixture(scope="module")
def cpu_repository(exported, tmp_path_factory):
    repo = tmp_path_factory.mktemp("cpu_repo") / "repo"
    argv = ["--export_dir", str(exported.parent), "--precision", "fp32", "--target", "cpu"]
    argv += ["--backends", "ts-trace", "onnx", "--output", str(repo), "--max_duration", "2"]
    assert repository.main(argv) == 0
    return repo


def _init_backend(repo, name: str):
    """The model's TritonPythonModel, initialised as the server's stub does it (the config as
    JSON, the model's folder, version 1)."""
    cfg = text_format.Parse(
        (repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    path = repo / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"backend_{name.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    as_dict = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    for tensor in as_dict["input"] + as_dict["output"]:  # numbers, as Triton writes them
        tensor["dims"] = [int(d) for d in tensor["dims"]]
        if "reshape" in tensor:
            tensor["reshape"]["shape"] = [int(d) for d in tensor["reshape"].get("shape", [])]
    model.initialize(
        {
            "model_config": json.dumps(as_dict),
            "model_repository": str(repo / name),
            "model_version": "1",
        }
    )
    return model


@pytest.fixture(scope="module")
def backend(cpu_repository):
    """``model name -> TritonPythonModel``, with the stand-in utilities installed meanwhile."""
    pb = _fake_pb_utils()
    saved = sys.modules.get(pb.__name__)
    sys.modules[pb.__name__] = pb
    try:
        names = [
            "feature-extractor-ts-trace",
            "jasper-ts-trace",
            "jasper-onnx",
            "decoder-ts-script",
        ]
        yield {name: _init_backend(cpu_repository, name) for name in names}
    finally:
        if saved is None:
            sys.modules.pop(pb.__name__, None)
        else:
            sys.modules[pb.__name__] = saved


def _request(*arrays: np.ndarray) -> dict:
    """A request with ``input__0``, ``input__1``, ... as Triton hands them to the backend (the
    lengths already reshaped from (B, 1) to (B,))."""
    return {f"input__{i}": _Tensor(f"input__{i}", a) for i, a in enumerate(arrays)}


F32, I32 = np.float32, np.int32
AUDIO_OK = (0.1 * np.random.default_rng(0).standard_normal((1, 1600))).astype(F32)
MALFORMED = [  # model, inputs, what the message says
    ("feature-extractor-ts-trace", (AUDIO_OK.astype(np.float64), np.array([1600], I32)), "float64 data"),
    ("feature-extractor-ts-trace", (AUDIO_OK[None], np.array([1600], I32)), r"shape \[1, 1, 1600\]"),
    ("feature-extractor-ts-trace", (np.zeros((1, 0), F32), np.array([0], I32)), "AUDIO_SIGNAL is empty"),
    ("feature-extractor-ts-trace", (np.zeros((0, 1600), F32), np.zeros(0, I32)), "no rows"),
    ("feature-extractor-ts-trace", (AUDIO_OK, np.array([1601], I32)), r"NUM_SAMPLES \[1601\] outside \[257, 1600\]"),
    ("feature-extractor-ts-trace", (AUDIO_OK, np.array([-5], I32)), r"NUM_SAMPLES \[-5\] outside"),
    ("feature-extractor-ts-trace", (AUDIO_OK[:, :160], np.array([160], I32)), r"\[160\] outside \[257"),
    ("feature-extractor-ts-trace", (np.full((1, 1600), np.nan, F32), np.array([1600], I32)), "AUDIO_SIGNAL holds NaN"),
    ("feature-extractor-ts-trace", (np.zeros((1, 40000), F32), np.array([40000], I32)), "longer than the configured maximum of 32000"),
    ("feature-extractor-ts-trace", (AUDIO_OK, np.array([1600, 1600], I32)), "different batch sizes"),
    ("jasper-ts-trace", (np.zeros((1, 64, 30), F32), np.array([31], I32)), r"feature lengths \[31\] outside \[1, 30\]"),
    ("jasper-onnx", (np.zeros((1, 64, 30), F32), np.array([0], I32)), r"\[0\] outside \[1, 30\]"),
    ("jasper-onnx", (np.zeros((1, 64, 0), F32), np.array([0], I32)), "features is empty"),
    ("jasper-onnx", (np.zeros((1, 10, 30), F32), np.array([30], I32)), r"shape \[1, 10, 30\]"),
    ("jasper-onnx", (np.full((1, 64, 30), np.inf, F32), np.array([30], I32)), "NaN or infinite"),
    ("jasper-onnx", (np.zeros((1, 64, 30), F32), np.array([30.0], F32)), "float32 data"),
    ("decoder-ts-script", (np.zeros((1, 20, 29), F32), np.array([21], I32)), r"encoder lengths \[21\] outside"),
]  # fmt: skip


@pytest.mark.parametrize("model, inputs, message", MALFORMED)
def test_backend_answers_malformed_input_invalid_argument(backend, model, inputs, message):
    """Each malformed request gets INVALID_ARGUMENT (HTTP 400) saying what is wrong, and a good
    request in the same execute call is served all the same."""
    good = {
        "feature-extractor-ts-trace": (AUDIO_OK, np.array([1600], I32)),
        "jasper-ts-trace": (np.zeros((1, 64, 30), F32), np.array([30], I32)),
        "jasper-onnx": (np.zeros((1, 64, 30), F32), np.array([30], I32)),
        "decoder-ts-script": (np.zeros((1, 20, 29), F32), np.array([20], I32)),
    }[model]
    bad_response, good_response = backend[model].execute([_request(*inputs), _request(*good)])
    assert bad_response.error is not None and bad_response.error.code == "INVALID_ARG"
    assert re.search(message, bad_response.error.message), bad_response.error.message
    assert good_response.error is None and good_response.outputs


def test_backend_reports_a_runtime_failure_as_internal(backend, monkeypatch):
    model = backend["jasper-onnx"]

    def broken(arrays):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "run", broken)
    (response,) = model.execute([_request(np.zeros((1, 64, 30), F32), np.array([30], I32))])
    assert response.error.code == "INTERNAL" and "out of memory" in response.error.message


def test_backend_serves_a_padded_batch_as_the_exported_files_do(backend, exported, signals):
    audio, lens = _pad([signals[i] for i in (2, 5, 7)])  # under the repository's 2 s
    (response,) = backend["feature-extractor-ts-trace"].execute(
        [_request(audio.numpy(), lens.numpy())]
    )
    assert response.error is None
    feats, feat_lens = _torchscript(exported / "feature-extractor-ts-trace" / "1" / "model.pt")(
        audio, lens
    )
    np.testing.assert_array_equal(response.outputs["output__0"], feats.numpy())
    assert response.outputs["output__1"].reshape(-1).tolist() == feat_lens.tolist()


# --------------------------------------------------------------------------------------------
# C. model_repository.py: CPU traces and the --output folder


def _fake_export(folder, device: str = "cpu", file_devices: dict | None = None):
    """An export folder as export.py leaves it (manifest and placeholder files), fast: the
    repository generator only reads the manifest and links the files."""
    files = []
    for name, component, fmt, filename in [
        ("feature-extractor-ts-trace", "feature-extractor", "ts-trace", "model.pt"),
        ("decoder-ts-script", "decoder", "ts-script", "model.pt"),
        ("jasper-ts-trace", "acoustic-model", "ts-trace", "model.pt"),
        ("jasper-onnx", "acoustic-model", "onnx", "model.onnx"),
    ]:
        path = folder / "fp32" / name / "1" / filename
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        entry = {"name": name, "component": component, "format": fmt,
                 "file": f"{name}/1/{filename}", "check": {}}  # fmt: skip
        if file_devices is not None:
            entry["device"] = file_devices.get(name, device)
        files.append(entry)
    manifest = {"checkpoint": "ckpt.pt", "ema": False, "precision": "fp32", "device": device,
                "labels": list("abc"), "sample_rate": 16000, "trim_silence": False, "n_mels": 64,
                "max_duration": 16.7, "files": files}  # fmt: skip
    (folder / "fp32" / "export.json").write_text(json.dumps(manifest))
    return folder


def _generate(export_dir, output, *extra: str) -> list[str]:
    return ["--export_dir", str(export_dir), "--precision", "fp32", "--output", str(output),
            "--backends", "ts-trace", "onnx", *extra]  # fmt: skip


def test_gpu_repository_refuses_torchscript_traced_on_the_cpu(tmp_path, capsys):
    """An error, not a warning: the libtorch backend would fail on the CPU constants of the
    trace at the first request."""
    cpu = _fake_export(tmp_path / "cpu_export")
    assert repository.main(_generate(cpu, tmp_path / "repo", "--target", "gpu")) == 1
    err = capsys.readouterr().err
    assert "feature-extractor-ts-trace (cpu)" in err and "--device cuda" in err
    assert not (tmp_path / "repo").exists()
    # The same exports serve the CPU server.
    assert repository.main(_generate(cpu, tmp_path / "repo", "--target", "cpu")) == 0
    # CUDA exports make a GPU repository.
    cuda = _fake_export(tmp_path / "cuda_export", "cuda")
    assert repository.main(_generate(cuda, tmp_path / "gpu_repo", "--target", "gpu")) == 0


def test_gpu_repository_checks_the_device_of_every_traced_file(tmp_path, capsys):
    """A later export on CUDA that kept an earlier CPU-traced extractor in the manifest: each
    file's own device counts, not the last run's."""
    mixed = _fake_export(tmp_path / "export", "cuda", {"feature-extractor-ts-trace": "cpu"})
    assert repository.main(_generate(mixed, tmp_path / "repo", "--target", "gpu")) == 1
    err = capsys.readouterr().err
    assert "feature-extractor-ts-trace (cpu)" in err and "jasper-ts-trace" not in err


def test_output_folder_the_script_did_not_write_is_kept_unless_overwrite(tmp_path, capsys):
    exports = _fake_export(tmp_path / "export")
    output = tmp_path / "mine"
    output.mkdir()
    (output / "notes.txt").write_text("precious")
    args = _generate(exports, output, "--target", "cpu")
    assert repository.main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (output / "notes.txt").read_text() == "precious"
    assert repository.main([*args, "--overwrite"]) == 0
    assert not (output / "notes.txt").exists() and (output / "jasper-onnx-ensemble").is_dir()
    # Its own repository is replaced without the flag; so is an empty folder.
    assert repository.main(args) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert repository.main(_generate(exports, empty, "--target", "cpu")) == 0
    (tmp_path / "file").write_text("")
    assert repository.main(_generate(exports, tmp_path / "file", "--target", "cpu")) == 1
