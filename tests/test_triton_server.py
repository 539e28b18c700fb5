"""A real Triton server on 127.0.0.1 serving the reference checkpoint (acceptance 2 and 3).

The server is the ``tritonserver`` that the PyPI package nvidia-pytriton bundles, in the virtualenv
that triton/scripts/setup_server.sh creates (idempotent; the first run installs it). The test
exports the reference checkpoint, generates the CPU model repository, starts the server with
run_server.sh on free ports, and checks that:

- every recording of data/audio goes through both ensembles over HTTP and gRPC and comes back
  with exactly the transcript ``inference.py`` gives with its defaults (16 leading zero frames,
  which the served extractor puts in front too; one file per request);
- recordings of different lengths padded into one request come back exactly as one-recording
  requests;
- malformed requests (wrong dtype, empty audio, audio longer than the configured maximum or
  shorter than the STFT frames, NaN audio, lengths past the array or negative, to the ensemble
  and to the component models) get 400 / INVALID_ARGUMENT with a message that says what is
  wrong, and the server goes on answering; the client names the files it leaves out;
- the load tool runs briefly and writes its tables;
- stop_server.sh leaves no server or backend-stub process.

Skipped (with the reason) only where nvidia-pytriton has no build for the platform; any other
failure to set up or start the server fails the test.
"""

from __future__ import annotations

import contextlib
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

from tests.conftest import AUDIO, REFERENCE, REPO, load_script

SMALL = REFERENCE / "small_model"
SMALL_CKPT, SMALL_CONFIG = SMALL / "checkpoint.pt", SMALL / "config.yaml"
SCRIPTS = REPO / "triton" / "scripts"
MAX_SECONDS = 20.0  # the repository's limit: longer audio must be refused
ENSEMBLES = ["jasper-ts-trace-ensemble", "jasper-onnx-ensemble"]
LABELS = yaml.safe_load(SMALL_CONFIG.read_text())["labels"]


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


def _model_repository(
    exported, target: str, backends: list[str], output, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """triton/model_repository.py on the fp32 exports."""
    cmd = [sys.executable, "triton/model_repository.py", "--export_dir", str(exported)]
    cmd += ["--precision", "fp32", "--target", target, "--backends", *backends]
    return _run([*cmd, "--output", str(output), *extra])


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
    repo = work / "repo"
    limit = ("--max_duration", str(MAX_SECONDS))
    batching = ("--dynamic_batching", "--preferred_batch_sizes", "2", "4")
    generated = _model_repository(exported, "cpu", ["ts-trace", "onnx"], repo, limit + batching)
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
    """``{path: transcript}`` from inference.py with the same weights (raw) as the server and its
    default leading padding (16 frames, which the served extractor puts in front too)."""
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
            "--no-ema",  # the weights the export holds (exported without --ema)
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
    return load_script("triton", "client")


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


INVALID = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}


def _inputs(client, named: list[tuple[str, np.ndarray]]) -> list:
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in named:
        dtype = np_to_triton_dtype(array.dtype)
        inputs.append(client.tc.InferInput(name, list(array.shape), dtype))
        inputs[-1].set_data_from_numpy(array)
    return inputs


def _refusal(client, model: str, named: list[tuple[str, np.ndarray]]) -> tuple[str, str]:
    """``(status, message)`` of a request the server must refuse; ``named`` are the inputs."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        client.client.infer(model, _inputs(client, named))
    return str(caught.value.status()), caught.value.message()


def test_malformed_requests_get_invalid_argument_and_the_server_goes_on(server, client_module):
    good = client_module.SpeechClient(server["http"], "http", ENSEMBLES[0]).load(
        AUDIO / "goforward.wav"
    )
    too_long = int(MAX_SECONDS * 16000) + 1
    noise = (0.1 * np.random.default_rng(0).standard_normal((1, 1600))).astype(np.float32)
    ensemble_cases = [  # (AUDIO_SIGNAL, NUM_SAMPLES, what the message says)
        (noise.astype(np.float64), [[1600]], "FP64"),
        (np.zeros((1, 0), np.float32), [[0]], "AUDIO_SIGNAL is empty"),
        (np.zeros((1, too_long), np.float32), [[too_long]], "longer than the configured maximum"),
        (noise, [[1601]], r"NUM_SAMPLES \[1601\] outside \[257, 1600\]"),
        (noise, [[-5]], r"NUM_SAMPLES \[-5\] outside"),
        (noise[:, :160], [[160]], r"NUM_SAMPLES \[160\] outside \[257, 160\]"),  # 10 ms
        (np.full((1, 1600), np.nan, np.float32), [[1600]], "AUDIO_SIGNAL holds NaN"),
    ]
    features = np.zeros((1, 64, 30), np.float32)
    component_cases = [  # (model, input__0, input__1, message)
        ("jasper-onnx", features, [[31]], r"feature lengths \[31\] outside \[1, 30\]"),
        ("jasper-ts-trace", features, [[-1]], r"feature lengths \[-1\] outside"),
        ("jasper-onnx", np.zeros((1, 64, 0), np.float32), [[0]], "features is empty"),
        ("decoder-ts-script", np.zeros((1, 20, 29), np.float32), [[21]], "encoder lengths"),
    ]
    for protocol in ("http", "grpc"):
        client = client_module.SpeechClient(server[protocol], protocol, ENSEMBLES[1])
        try:
            expected = client.transcribe([good])[0]
            for audio, lens, message in ensemble_cases:
                named = [("AUDIO_SIGNAL", audio), ("NUM_SAMPLES", np.array(lens, np.int32))]
                status, text = _refusal(client, client.model, named)
                assert status == INVALID[protocol] and re.search(message, text), (status, text)
            for model, x, lens, message in component_cases:
                named = [("input__0", x), ("input__1", np.array(lens, np.int32))]
                status, text = _refusal(client, model, named)
                assert status == INVALID[protocol] and re.search(message, text), (status, text)
            # The server goes on answering, with the same result as before.
            assert client.transcribe([good])[0] == expected
        finally:
            client.close()


def _infer(client, model: str, named: list[tuple[str, np.ndarray]], outputs: list[str]):
    """The named outputs of a request to any model of the server (ensemble or component)."""
    result = client.client.infer(model, _inputs(client, named))
    return [result.as_numpy(name) for name in outputs]


@pytest.mark.parametrize("model", ENSEMBLES)
def test_padded_batches_equal_one_recording_requests(server, client_module, model):
    """Recordings of different lengths zero-padded into one request: each comes back with the
    ids of its own one-recording request, frame for frame, and the served extractor and acoustic
    model give it the same log-probs to float rounding (the extractor gives every recording the
    features it gets alone; the lengths travel through the ensemble). On the reference model the
    old extractor's differences (0.02 in the log-probs) flipped no argmax: the log-probs show it."""
    client = client_module.SpeechClient(server["grpc"], "grpc", model)
    acoustic = model.removesuffix("-ensemble")
    try:
        paths = sorted(AUDIO.rglob("*.wav"))[:8]
        seconds = (9, 2.3, 4.05, 1.07, 3.3, 2.79, 0.9, 3.71)
        signals = [client.load(p)[: int(s * 16000)] for p, s in zip(paths, seconds, strict=True)]

        def log_probs(audio, lens):
            named = [("input__0", audio), ("input__1", lens)]
            outputs = ["output__0", "output__1"]
            feats, feat_lens = _infer(client, "feature-extractor-ts-trace", named, outputs)
            named = [("input__0", feats), ("input__1", feat_lens)]
            return _infer(client, acoustic, named, outputs)

        for size in (2, 5, 8):
            batch = client.pad(signals[:size])
            ids = client.infer(*batch)
            lp, enc_lens = log_probs(*batch)
            for i, s in enumerate(signals[:size]):
                alone = client.pad([s])
                alone_ids = client.infer(*alone)[0]
                assert np.array_equal(ids[i, : alone_ids.size], alone_ids), (size, paths[i])
                assert (ids[i, alone_ids.size :] == len(LABELS)).all()  # blanks past its end
                lp1, n = log_probs(*alone)
                n = int(n.reshape(-1)[0])
                assert int(enc_lens.reshape(-1)[i]) == n
                assert np.abs(lp[i, :n] - lp1[0, :n]).max() <= 5e-5, (size, paths[i])
    finally:
        client.close()


def test_client_names_the_files_it_leaves_out_and_transcribes_the_others(
    server, inference_transcripts, tmp_path
):
    """A folder with a 10 ms recording, one full of NaN, a corrupt MP3 and a good recording:
    three errors naming the files, the good one transcribed, exit status 1."""
    import soundfile as sf

    folder = tmp_path / "mixed"
    folder.mkdir()
    sf.write(folder / "short.wav", 0.3 * np.random.default_rng(0).standard_normal(160), 16000)
    sf.write(folder / "nan.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    (folder / "corrupt.mp3").write_bytes(np.random.default_rng(1).bytes(4000))
    (folder / "good.wav").write_bytes((AUDIO / "goforward.wav").read_bytes())
    cmd = [sys.executable, "triton/client.py", str(folder), "-u", server["http"]]
    done = _run([*cmd, "-m", ENSEMBLES[0]])
    assert done.returncode == 1, done.stderr
    assert f"{folder / 'short.wav'}: 0.010 s of audio is too short" in done.stderr
    assert f"{folder / 'nan.wav'}: 16000 of 16000 samples are NaN" in done.stderr
    assert f"cannot decode audio file {folder / 'corrupt.mp3'}" in done.stderr
    assert "3 of 4 recordings left out" in done.stderr and "Traceback" not in done.stderr
    expected = inference_transcripts[str(AUDIO / "goforward.wav")]
    assert done.stdout.splitlines() == [f"{folder / 'good.wav'}\t{expected}"]


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


def test_client_reads_stereo_flac_and_mp3_at_any_rate_as_inference_does(
    server, client_module, tmp_path
):
    """A 44.1 kHz stereo FLAC, and an MP3 of it, go through the client's audio reading
    (decoded, resampled, channels averaged, silence trimmed as the config says) and get the
    transcripts jasper.transcribe (inference.py's library, its defaults) gives for the files."""
    import av
    import soundfile as sf
    import soxr

    from jasper.transcribe import Transcriber

    mono, rate = sf.read(AUDIO / "goforward.wav", dtype="float32")
    resampled = soxr.resample(mono, rate, 44100)
    stereo = np.stack([resampled, 0.5 * resampled], axis=1)
    flac, mp3 = tmp_path / "goforward_stereo.flac", tmp_path / "goforward_stereo.mp3"
    sf.write(flac, stereo, 44100)
    with av.open(str(flac)) as inp, av.open(str(mp3), "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=44100)
        stream.layout = "stereo"
        convert = av.AudioResampler(format=stream.format, layout="stereo", rate=44100)
        frames = [f for frame in inp.decode(audio=0) for f in convert.resample(frame)]
        for frame in [*frames, *convert.resample(None), None]:
            for packet in stream.encode(frame):
                out.mux(packet)
    transcriber = Transcriber.from_checkpoint(SMALL_CKPT, SMALL_CONFIG, device="cpu")
    client = client_module.SpeechClient(server["http"], "http", ENSEMBLES[1])
    try:
        for path in (flac, mp3):
            expected = transcriber.transcribe_file(path).text
            assert client.transcribe([client.load(path)]) == [expected], path
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
    """The NGC target (no GPU here to serve it): CPU traces are refused; with the exports marked
    as traced on CUDA, every config.pbtxt parses as Triton's ModelConfig, the acoustic models use
    the native platforms on GPU instances, and the ensemble wires the lengths from the extractor
    through the model to the decoder."""
    import shutil

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    refused = _model_repository(exported, "gpu", ["onnx"], tmp_path / "refused")
    assert refused.returncode == 1 and "feature-extractor-ts-trace (cpu)" in refused.stderr
    assert not (tmp_path / "refused").exists()
    # The configs do not depend on where the files were traced: mark a copy as CUDA exports.
    exported = shutil.copytree(exported, tmp_path / "cuda_export")
    manifest_path = exported / "fp32" / "export.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["device"] = "cuda"
    for f in manifest["files"]:
        f["device"] = "cuda" if f["format"].startswith("ts-") else f["device"]
    manifest_path.write_text(json.dumps(manifest))
    done = _model_repository(
        exported, "gpu", ["ts-trace", "onnx"], tmp_path / "repo", ("--instances", "2")
    )
    assert done.returncode == 0, done.stderr
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
    tensorrt = _model_repository(exported, "gpu", ["tensorrt"], tmp_path / "trt")
    assert tensorrt.returncode == 1 and "has no jasper-tensorrt" in tensorrt.stderr
