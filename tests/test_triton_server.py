"""A real Triton server on 127.0.0.1 serving the reference checkpoint (acceptance 2 and 3).

The server is the ``tritonserver`` that the PyPI package nvidia-pytriton bundles, in the virtualenv
that triton/scripts/setup_server.sh creates (idempotent; the first run installs it). The test
exports the reference checkpoint, generates the CPU model repository, starts the server with
run_server.sh on free ports, and checks that:

- every recording of data/audio goes through both ensembles over HTTP and gRPC and comes back
  with exactly the transcript ``inference.py --pad_leading 0`` gives (one file per request);
- wrong dtype, empty audio and audio longer than the configured maximum get error responses, and
  the server goes on answering;
- the load tool runs briefly and writes its tables;
- stop_server.sh leaves no server or backend-stub process.

Skipped (with the reason) only where nvidia-pytriton has no build for the platform; any other
failure to set up or start the server fails the test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import AUDIO, REFERENCE, REPO

SMALL = REFERENCE / "small_model"
SMALL_CKPT, SMALL_CONFIG = SMALL / "checkpoint.pt", SMALL / "config.yaml"
SCRIPTS = REPO / "triton" / "scripts"
MAX_SECONDS = 20.0  # the repository's limit: longer audio must be refused
ENSEMBLES = ["jasper-ts-trace-ensemble", "jasper-onnx-ensemble"]
LABELS = yaml.safe_load(SMALL_CONFIG.read_text())["labels"]


def _load_client():
    folder = str(REPO / "triton")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("triton_client", REPO / "triton" / "client.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _run(
    cmd: list[str], env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _server_processes(pid: int) -> list[str]:
    """Processes in the server's session or process group (its backend stubs join both)."""
    out = _run(["ps", "-e", "-o", "pid=,pgid=,sid=,args="]).stdout.splitlines()
    return [
        line
        for line in out
        if (f := line.split(None, 3)) and (f[1] == str(pid) or f[2] == str(pid))
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """fp32 exports of the reference checkpoint (TorchScript and ONNX, traced on the CPU)."""
    folder = tmp_path_factory.mktemp("export")
    done = _run(
        [
            sys.executable,
            "triton/export.py",
            "--ckpt",
            str(SMALL_CKPT),
            "--model_config",
            str(SMALL_CONFIG),
            "--export_dir",
            str(folder),
            "--convert",
            "feature-extractor",
            "decoder",
            "ts-trace",
            "onnx",
            "--precisions",
            "fp32",
            "--check_files",
            "3",
            "--device",
            "cpu",
        ]
    )
    assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, exported):
    setup = _run(["bash", str(SCRIPTS / "setup_server.sh")], timeout=1800)
    if setup.returncode == 3:
        pytest.skip(f"nvidia-pytriton cannot be installed here: {setup.stderr.strip()}")
    assert setup.returncode == 0, f"setup_server.sh failed:\n{setup.stdout}\n{setup.stderr}"

    work = tmp_path_factory.mktemp("triton")
    python = sys.executable
    repo = work / "repo"
    generated = _run(
        [
            python,
            "triton/model_repository.py",
            "--export_dir",
            str(exported),
            "--precision",
            "fp32",
            "--target",
            "cpu",
            "--backends",
            "ts-trace",
            "onnx",
            "--output",
            str(repo),
            "--max_duration",
            str(MAX_SECONDS),
            "--dynamic_batching",
            "--preferred_batch_sizes",
            "2",
            "4",
        ]
    )
    assert generated.returncode == 0, generated.stderr

    http, grpc, metrics = _free_ports(3)
    env = {
        **os.environ,
        "MODEL_REPOSITORY": str(repo),
        "HTTP_PORT": str(http),
        "GRPC_PORT": str(grpc),
        "METRICS_PORT": str(metrics),
        "PID_FILE": str(work / "server.pid"),
        "LOG_FILE": str(work / "server.log"),
        "WAIT_TIMEOUT": "150",
    }
    t0 = time.perf_counter()
    started = _run(["bash", str(SCRIPTS / "run_server.sh")], env=env)
    assert started.returncode == 0, started.stderr
    pid = int((work / "server.pid").read_text())
    info = {"env": env, "pid": pid, "work": work, "http": f"127.0.0.1:{http}"}
    info["grpc"] = f"127.0.0.1:{grpc}"
    try:
        ready = _run(["bash", str(SCRIPTS / "wait_for_server.sh")], env=env, timeout=200)
        assert ready.returncode == 0, ready.stderr + (work / "server.log").read_text()[-3000:]
        info["start_seconds"] = time.perf_counter() - t0
        yield info
    finally:
        _run(["bash", str(SCRIPTS / "stop_server.sh")], env=env)


@pytest.fixture(scope="module")
def inference_transcripts(tmp_path_factory):
    """``{path: transcript}`` from inference.py with the same padding as the server (none)."""
    out = tmp_path_factory.mktemp("inference") / "predictions.txt"
    done = _run(
        [
            sys.executable,
            "inference.py",
            "--ckpt",
            str(SMALL_CKPT),
            "--model_config",
            str(SMALL_CONFIG),
            "--transcribe_wav",
            str(AUDIO),
            "--pad_leading",
            "0",
            "--cpu",
            "--save_predictions",
            str(out),
            "--output_dir",
            str(out.parent),
        ]
    )
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    return dict(line.split("\t", 1) for line in lines)


@pytest.fixture(scope="module")
def client_module():
    return _load_client()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ENSEMBLES)
def test_ensembles_give_the_transcripts_of_inference_py(
    server, inference_transcripts, client_module, protocol, model
):
    client = client_module.SpeechClient(server[protocol], protocol, model)
    try:
        assert client.served.labels == LABELS  # from the exported checkpoint, not a fixed list
        assert len(inference_transcripts) == 11
        for path, expected in inference_transcripts.items():
            text = client.transcribe([client.load(path)])[0]
            assert text == expected, path
    finally:
        client.close()


def test_run_client_script_prints_transcripts_and_manifest_wer(
    server, inference_transcripts, tmp_path
):
    """run_client.sh (gRPC) on the folder, and on a manifest of the LibriVox recordings with
    their transcripts: the WER is common.metrics' over the printed transcripts."""
    env = {**server["env"], "PROTOCOL": "grpc", "PYTHON": sys.executable}
    env["PREDICTION_FILE"] = str(tmp_path / "folder.txt")
    done = _run(["bash", str(SCRIPTS / "run_client.sh"), "ts-trace", ".", str(AUDIO)], env=env)
    assert done.returncode == 0, done.stderr
    served = dict(
        line.split("\t", 1) for line in (tmp_path / "folder.txt").read_text().splitlines()
    )
    assert served == inference_transcripts

    entries = []
    for wav in sorted((AUDIO / "librivox").glob("*.wav")):
        text = wav.with_suffix(".txt").read_text().strip()
        entries.append({"transcript": text, "files": [{"fname": str(wav.relative_to(REPO)), "speed": 1.0, "duration": 5.0}]})  # fmt: skip
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(entries))
    env["PREDICTION_FILE"] = str(tmp_path / "manifest.txt")
    done = _run(["bash", str(SCRIPTS / "run_client.sh"), "onnx", str(REPO), str(manifest)], env=env)
    assert done.returncode == 0, done.stderr
    from common.metrics import word_error_rate
    from common.text import normalize

    hyps = [line.split("\t", 1)[1] for line in (tmp_path / "manifest.txt").read_text().splitlines()]
    refs = [normalize(e["transcript"], LABELS) for e in entries]
    wer, errors, words = word_error_rate(hyps, refs)
    assert f"WER {100 * wer:.4f} % ({errors} errors / {words} words, 5 utterances)" in done.stdout


def test_malformed_requests_get_errors_and_the_server_goes_on(server, client_module):
    from tritonclient.utils import InferenceServerException

    good = client_module.SpeechClient(server["http"], "http", ENSEMBLES[0]).load(
        AUDIO / "goforward.wav"
    )
    for protocol in ("http", "grpc"):
        client = client_module.SpeechClient(server[protocol], protocol, ENSEMBLES[1])
        try:
            expected = client.transcribe([good])[0]
            # Wrong dtype: FP64 audio where the ensemble takes FP32.
            inputs, outputs = client.request(
                np.zeros((1, 1600), np.float32), np.array([[1600]], np.int32)
            )
            inputs[0] = client.tc.InferInput("AUDIO_SIGNAL", [1, 1600], "FP64")
            inputs[0].set_data_from_numpy(np.zeros((1, 1600), np.float64))
            with pytest.raises(InferenceServerException, match="FP64"):
                client.client.infer(client.model, inputs, outputs=outputs)
            with pytest.raises(client_module.ClientError, match="empty audio"):
                client.infer(np.zeros((1, 0), np.float32), np.array([[0]], np.int32))
            too_long = int(MAX_SECONDS * 16000) + 1
            with pytest.raises(
                client_module.ClientError, match="longer than the configured maximum"
            ):
                client.infer(np.zeros((1, too_long), np.float32), np.array([[too_long]], np.int32))
            with pytest.raises(client_module.ClientError, match="NUM_SAMPLES"):
                client.infer(np.zeros((1, 1600), np.float32), np.array([[1601]], np.int32))
            # The server goes on answering, with the same result as before.
            assert client.transcribe([good])[0] == expected
        finally:
            client.close()


def test_padded_batches_are_transcribed_per_recording(server, client_module):
    """Several recordings in one request, zero-padded: each gets a transcript of its own length
    (the lengths travel through the ensemble); the longest one equals its single-request result."""
    client = client_module.SpeechClient(server["grpc"], "grpc", ENSEMBLES[0])
    try:
        signals = [client.load(p) for p in (AUDIO / "example1.wav", AUDIO / "goforward.wav")]
        batch = client.transcribe(signals)
        alone = [client.transcribe([s])[0] for s in signals]
        assert batch[0] == alone[0]
        assert len(batch[1]) < len(batch[0])  # 2.8 s vs 10 s: not padded out with symbols
    finally:
        client.close()


def test_load_tool_writes_its_table(server, tmp_path):
    prefix = tmp_path / "perf"
    cmd = [sys.executable, "triton/perf_client.py", "-u", server["grpc"], "-i", "grpc",
           "-m", ENSEMBLES[1], "--batch_sizes", "1", "2", "--concurrency", "1", "2",
           "--audio_seconds", "2", "--modes", "static", "dynamic", "--requests", "8",
           "--seconds", "5", "--warmup", "1", "--output_prefix", str(prefix)]  # fmt: skip
    done = _run(cmd, timeout=240)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "perf.json").read_text())
    levels = report["levels"]
    # static: batch 1 and 2 at concurrency 1 and 2; dynamic: batch-1 requests at 2 and 4.
    assert [(lv["mode"], lv["batch_size"], lv["concurrency"]) for lv in levels] == [
        ("static", 1, 1), ("static", 1, 2), ("static", 2, 1), ("static", 2, 2),
        ("dynamic", 1, 2), ("dynamic", 1, 4),
    ]  # fmt: skip
    assert report["server_batching"]["dynamic_batching"] is not None
    for lv in levels:
        assert lv["errors"] == 0 and 0 < lv["requests"] <= 8 and lv["throughput"] > 0
        lat = lv["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]
    table = (tmp_path / "perf.md").read_text()
    assert re.search(r"\| static \| 2 \| 2 \| 2 \| [0-9.]+ \|", table)
    assert "p99 (ms)" in table and "inferences/s" in table


def test_client_reads_stereo_flac_at_any_rate_as_inference_does(server, client_module, tmp_path):
    """A 44.1 kHz stereo FLAC goes through the client's audio reading (resampled, channels
    averaged, silence trimmed as the config says) and gets the transcript jasper.transcribe
    (inference.py's library) gives for the same file."""
    import soundfile as sf
    import soxr

    from jasper.transcribe import Transcriber

    mono, rate = sf.read(AUDIO / "goforward.wav", dtype="float32")
    resampled = soxr.resample(mono, rate, 44100)
    stereo = np.stack([resampled, 0.5 * resampled], axis=1)
    path = tmp_path / "goforward_stereo.flac"
    sf.write(path, stereo, 44100)
    transcriber = Transcriber.from_checkpoint(SMALL_CKPT, SMALL_CONFIG, device="cpu", pad_leading=0)
    expected = transcriber.transcribe_file(path).text
    client = client_module.SpeechClient(server["http"], "http", ENSEMBLES[1])
    try:
        assert client.transcribe([client.load(path)]) == [expected]
    finally:
        client.close()


def test_stop_server_leaves_no_server_or_stub_process(server):
    assert _server_processes(server["pid"]), "the server should be running before the stop"
    stopped = _run(["bash", str(SCRIPTS / "stop_server.sh")], env=server["env"])
    assert stopped.returncode == 0, stopped.stderr
    assert _server_processes(server["pid"]) == []
    leftover = _run(["ps", "-e", "-o", "args="]).stdout
    assert str(server["work"]) not in leftover
    assert not (server["work"] / "server.pid").exists()


def test_gpu_repository_is_valid_triton_config_with_native_backends(exported, tmp_path):
    """The NGC target (no GPU here to serve it): every config.pbtxt parses as Triton's
    ModelConfig, the acoustic models use the native platforms on GPU instances, and the ensemble
    wires the lengths from the extractor through the model to the decoder."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    done = _run(
        [
            sys.executable,
            "triton/model_repository.py",
            "--export_dir",
            str(exported),
            "--precision",
            "fp32",
            "--target",
            "gpu",
            "--backends",
            "ts-trace",
            "onnx",
            "--output",
            str(tmp_path / "repo"),
            "--instances",
            "2",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert "exported on cpu" in done.stderr  # TorchScript for the GPU must be traced on CUDA
    configs = {}
    for path in sorted((tmp_path / "repo").glob("*/config.pbtxt")):
        cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert cfg.name == path.parent.name
        configs[cfg.name] = cfg
    assert configs["feature-extractor-ts-trace"].platform == "pytorch_libtorch"
    assert configs["decoder-ts-script"].platform == "pytorch_libtorch"
    assert configs["jasper-onnx"].platform == "onnxruntime_onnx"
    group = configs["jasper-ts-trace"].instance_group[0]
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert not (tmp_path / "repo" / "jasper-onnx" / "1" / "model.py").exists()
    ensemble = configs["jasper-onnx-ensemble"]
    assert [i.name for i in ensemble.input] == ["AUDIO_SIGNAL", "NUM_SAMPLES"]
    assert [o.name for o in ensemble.output] == ["TRANSCRIPT"]
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [
        "feature-extractor-ts-trace",
        "jasper-onnx",
        "decoder-ts-script",
    ]
    assert steps[1].input_map["input__1"] == steps[0].output_map["output__1"]
    assert steps[2].input_map["input__1"] == steps[1].output_map["output__1"]
    assert json.loads(ensemble.parameters["labels"].string_value) == LABELS
    tensorrt = _run(
        [
            sys.executable,
            "triton/model_repository.py",
            "--export_dir",
            str(exported),
            "--precision",
            "fp32",
            "--target",
            "gpu",
            "--backends",
            "tensorrt",
            "--output",
            str(tmp_path / "trt"),
        ]
    )
    assert tensorrt.returncode == 1 and "has no jasper-tensorrt" in tensorrt.stderr
