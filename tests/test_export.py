"""triton/export.py: TorchScript and ONNX exports of the three components reproduce PyTorch.

Acceptance 1 of the deployment issue, on the reference checkpoint (tests/data/reference/
small_model, upstream's format, raw and EMA weights; not trained on speech, so its transcripts are
gibberish but deterministic). The exports are loaded here with torch.jit.load and onnxruntime
directly, not through export.py's own checks.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from common.audio import load_audio
from common.features import FilterbankFeatures
from jasper import config
from jasper.decoding import greedy_texts
from jasper.model import greedy_decode
from jasper.transcribe import load_model
from tests.conftest import AUDIO, REFERENCE, load_script

SMALL = REFERENCE / "small_model"
SMALL_CKPT, SMALL_CONFIG = SMALL / "checkpoint.pt", SMALL / "config.yaml"
EXAMPLES = sorted(AUDIO.glob("*.wav"))


export = load_script("triton", "export")

CONVERT = ["feature-extractor", "decoder", "ts-trace", "onnx", "tensorrt"]
CONVERT += ["feature-extractor-onnx", "decoder-onnx"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """``{"raw"|"ema": export dir}``: raw weights in fp32 and fp16, EMA weights in fp32."""
    out, messages = {}, {}
    for weights, precisions, convert in (
        ("raw", ["fp32", "fp16"], CONVERT),
        ("ema", ["fp32"], ["ts-trace", "onnx"]),
    ):
        folder = tmp_path_factory.mktemp(f"export_{weights}")
        argv = ["--ckpt", str(SMALL_CKPT), "--model_config", str(SMALL_CONFIG)]
        argv += ["--export_dir", str(folder), "--convert", *convert, "--precisions", *precisions]
        argv += ["--check_audio", *map(str, EXAMPLES[:3]), "--device", "cpu"]
        if weights == "ema":
            argv.append("--ema")
        args = export.get_parser().parse_args(argv)
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            export.run(args)
        out[weights], messages[weights] = folder, stdout.getvalue()
    out["messages"] = messages
    return out


@functools.cache
def _model(ema: bool):
    """The checkpoint's model and config (shared: the tests only run it)."""
    return load_model(SMALL_CKPT, SMALL_CONFIG, ema=ema)


def _cut_recordings(seconds: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded batch of real speech cut to ``seconds`` (one recording each)."""
    signals = [load_audio(p)[: int(s * 16000)] for p, s in zip(EXAMPLES, seconds, strict=False)]
    audio = np.zeros((len(signals), max(s.size for s in signals)), dtype=np.float32)
    for i, s in enumerate(signals):
        audio[i, : s.size] = s
    return torch.from_numpy(audio), torch.tensor([s.size for s in signals], dtype=torch.int32)


def _features(cfg: dict, audio: torch.Tensor, lens: torch.Tensor):
    features = FilterbankFeatures(**config.input(cfg, "val")[1]).eval()
    with torch.inference_mode():
        return features(audio, lens)


def _runner(path, dtype=torch.float32):
    if path.suffix == ".onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run(*xs):
            return [
                torch.from_numpy(o)
                for o in session.run(None, {n: x.numpy() for n, x in zip(names, xs, strict=True)})
            ]

        return run
    module = torch.jit.load(str(path)).eval()

    def run(*xs):
        with torch.inference_mode():
            out = module(*xs)
        return list(out) if isinstance(out, tuple) else [out]

    return run


BATCHES = {  # batch 1 and 3 at several lengths (seconds of each recording)
    "b1-short": (0.7,),
    "b1-long": (9.3,),
    "b3-mixed": (2.1, 6.4, 4.05),
    "b3-equal": (3.0, 3.0, 3.0),
}


@functools.cache
def _reference(ema: bool, seconds: tuple[float, ...]):
    """``(features, lengths, log_probs, enc_lengths)`` of the PyTorch model on a check batch."""
    model, cfg = _model(ema)
    feats, lens = _features(cfg, *_cut_recordings(list(seconds)))
    with torch.inference_mode():
        log_probs, enc_lens = model(feats, lens)
    return feats, lens, log_probs, enc_lens


@pytest.mark.parametrize("weights", ["raw", "ema"])
@pytest.mark.parametrize("name", ["jasper-ts-trace", "jasper-onnx"])
def test_acoustic_model_exports_reproduce_pytorch_log_probs(exports, weights, name):
    ext = "onnx" if name.endswith("onnx") else "pt"
    run = _runner(exports[weights] / "fp32" / name / "1" / f"model.{ext}")
    for batch, seconds in BATCHES.items():
        feats, lens, ref, ref_lens = _reference(weights == "ema", seconds)
        wrong = _reference(weights != "ema", seconds)[2]
        log_probs, enc_lens = run(feats, lens.to(torch.int32))
        assert enc_lens.tolist() == ref_lens.tolist(), batch
        for i, n in enumerate(ref_lens.tolist()):
            assert (log_probs[i, :n] - ref[i, :n]).abs().max() <= 1e-4, (batch, i)
            # The other weights give other log-probs: the export holds the weights asked for.
            assert (log_probs[i, :n] - wrong[i, :n]).abs().max() > 1e-2, (batch, i)


def _features_alone(cfg: dict, audio: torch.Tensor, lens: torch.Tensor):
    """What the exported extractor gives: each recording's FilterbankFeatures alone, after the
    16 leading zero frames that export.py puts in front by default (inference.py's)."""
    features = FilterbankFeatures(**config.input(cfg, "val")[1]).eval()
    return export.features_alone(features, audio, lens, export.PAD_LEADING)


@pytest.mark.parametrize("name", ["feature-extractor-ts-trace", "feature-extractor-onnx"])
def test_exported_feature_extractor_reproduces_common_features(exports, name):
    _, cfg = _model(ema=False)
    ext = "onnx" if name.endswith("onnx") else "pt"
    run = _runner(exports["raw"] / "fp32" / name / "1" / f"model.{ext}")
    # TorchScript: FFTs over another length round differently; ONNX Runtime's STFT more so.
    tolerance = 1e-5 if ext == "pt" else 1e-3
    cases = [[len_s] for len_s in (10.0, 2.79, 6.36)] + [[10.0, 14.0, 2.5]]
    for seconds in cases:
        audio, lens = _cut_recordings(seconds)
        ref, ref_lens = _features_alone(cfg, audio, lens)
        feats, feat_lens = run(audio, lens)
        assert feats.shape == ref.shape and feat_lens.tolist() == ref_lens.tolist()
        assert (feats - ref).abs().max() <= tolerance, seconds


@pytest.mark.parametrize("name", ["decoder-ts-script", "decoder-onnx"])
def test_exported_decoder_is_greedy_decode(exports, name):
    ext = "onnx" if name.endswith("onnx") else "pt"
    run = _runner(exports["raw"] / "fp32" / name / "1" / f"model.{ext}")
    for batch, frames in ((1, 7), (3, 50)):
        log_probs = torch.randn(batch, frames, 29).log_softmax(-1)
        lens = torch.randint(1, frames + 1, (batch,), dtype=torch.int32)
        (ids,) = run(log_probs, lens)
        assert torch.equal(ids.long(), greedy_decode(log_probs, lens).long())


@pytest.mark.parametrize("name", ["jasper-ts-trace", "jasper-onnx"])
def test_fp16_exports_give_the_same_greedy_transcripts(exports, name):
    """fp16 exports run on the CPU. The reference model is random, so some frames are near-ties
    (top two classes within a few thousandths) that any fp16 implementation may decide either way:
    the TorchScript file gives exactly the transcripts of the module it was traced from run in
    fp16, and both files agree with the fp32 model on every frame that is not a near-tie."""
    model, cfg = _model(ema=False)
    labels = cfg["labels"]
    ext = "onnx" if name.endswith("onnx") else "pt"
    run = _runner(exports["raw"] / "fp16" / name / "1" / f"model.{ext}")
    module = export.AcousticModel(model, torch.float16)
    assert (
        run(torch.zeros(1, 64, 32).half(), torch.tensor([32], dtype=torch.int32))[0].dtype
        == torch.float32
    )
    for batch, seconds in BATCHES.items():
        feats, lens, ref, ref_lens = _reference(False, seconds)
        with torch.inference_mode():
            half, _ = module(feats.half(), lens.to(torch.int32))
        log_probs, enc_lens = run(feats.half(), lens.to(torch.int32))
        assert enc_lens.tolist() == ref_lens.tolist()
        if ext == "pt":
            assert greedy_texts(log_probs, ref_lens, labels) == greedy_texts(half, ref_lens, labels)
        for i, n in enumerate(ref_lens.tolist()):
            assert (log_probs[i, :n] - ref[i, :n]).abs().max() < 0.05
        differing, clear = export.near_tie_mismatches(log_probs, ref, ref_lens, 0.02)
        assert clear == 0, (batch, differing)


def test_fp16_feature_extractor_matches_common_features_on_fp16_audio(exports):
    _, cfg = _model(ema=False)
    audio, lens = _cut_recordings([10.0, 14.0, 2.5])
    ref, ref_lens = _features_alone(cfg, audio.half(), lens)
    for name, ext in (("feature-extractor-ts-trace", "pt"), ("feature-extractor-onnx", "onnx")):
        feats, feat_lens = _runner(exports["raw"] / "fp16" / name / "1" / f"model.{ext}")(
            audio.half(), lens
        )
        assert feats.dtype == torch.float16 and feat_lens.tolist() == ref_lens.tolist()
        assert (feats.float() - ref.float()).abs().max() < 2e-2, name


def test_exports_carry_the_checkpoint_labels_and_audio_settings(exports):
    _, cfg = _model(ema=False)
    folder = exports["raw"] / "fp32"
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["labels"] == cfg["labels"] and manifest["sample_rate"] == 16000
    assert manifest["trim_silence"] is True and manifest["precision"] == "fp32"
    assert manifest["pad_leading"] == 16 and manifest["min_num_samples"] == 257
    names = {f["name"] for f in manifest["files"]}
    assert names == {
        "feature-extractor-ts-trace", "feature-extractor-onnx", "jasper-ts-trace",
        "jasper-onnx", "decoder-ts-script", "decoder-onnx",
    }  # fmt: skip
    extra = {"metadata.json": ""}
    torch.jit.load(str(folder / "jasper-ts-trace" / "1" / "model.pt"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["labels"] == cfg["labels"]
    props = {
        p.key: p.value for p in onnx.load(str(folder / "jasper-onnx/1/model.onnx")).metadata_props
    }
    assert json.loads(props["labels"]) == cfg["labels"]


def test_tensorrt_is_skipped_with_a_reason_when_it_cannot_build(exports):
    reason = export.tensorrt_available()
    if reason is None:
        assert (exports["raw"] / "fp32" / "jasper-tensorrt" / "1" / "model.plan").is_file()
    else:
        assert f"jasper-tensorrt not built: {reason}" in exports["messages"]["raw"]


def test_export_check_fails_for_a_file_that_differs_from_pytorch(exports):
    """The check run right after export rejects log-probs off by more than the tolerance and ids
    that differ from the fp32 model's where the decision was clear."""
    model, cfg = _model(ema=False)
    recordings = export.Recordings.load(EXAMPLES[:3], 16000, True)
    features = FilterbankFeatures(**config.input(cfg, "val")[1])
    refs = export.compute_references(model, features, recordings, torch.device("cpu"))
    good = _runner(exports["raw"] / "fp32" / "jasper-ts-trace" / "1" / "model.pt")
    assert export.check_acoustic_model(good, refs, "fp32", 1e-4)["max_abs_log_prob_diff"] <= 1e-4

    def off(*xs):
        log_probs, lens = good(*xs)
        return log_probs + 1e-3, lens

    with pytest.raises(export.ExportError, match="differ by"):
        export.check_acoustic_model(off, refs, "fp32", 1e-4)

    def swapped(*xs):
        log_probs, lens = good(*xs)
        return log_probs.roll(1, dims=-1), lens

    with pytest.raises(export.ExportError):
        export.check_acoustic_model(swapped, refs, "fp16", 1e-4)


@pytest.mark.gpu
def test_tensorrt_engine_reproduces_pytorch_on_gpu(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    argv = ["--ckpt", str(SMALL_CKPT), "--model_config", str(SMALL_CONFIG)]
    argv += ["--export_dir", str(tmp_path), "--convert", "tensorrt", "--precisions", "fp32", "fp16"]
    argv += ["--device", "cuda", "--check_audio", *map(str, EXAMPLES[:3])]
    assert export.main(argv) == 0
    for precision in ("fp32", "fp16"):
        assert (tmp_path / precision / "jasper-tensorrt" / "1" / "model.plan").is_file()
