"""NeMo ``.nemo`` interop (jasper/nemo.py, utils/convert_nemo.py) against a real file NeMo wrote.

The reference (tests/data/reference/nemo/README.md) is a small QuartzNet saved by NeMo 3.0.0 with
NeMo's own features, log-probs and greedy ids on three real recordings.
"""

from __future__ import annotations

import gzip
import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from common.checkpoint import load_checkpoint
from common.features import FilterbankFeatures
from jasper import config, nemo
from jasper.model import Jasper, greedy_decode, num_parameters
from tests.conftest import CONFIGS, REFERENCE, TINY_CONFIG
from utils import convert_nemo

NEMO_DIR = REFERENCE / "nemo"
REAL_NEMO = NEMO_DIR / "quartznet_small.nemo"
NAMES = ("example1", "goforward", "sense_and_sensibility_0870")
# Sections of NeMo's own file that a converted model does not need: NeMo fills in its default
# decoding, the optimiser belongs to a training run, and the version is NeMo's own stamp.
NOT_WRITTEN = {"optim", "decoding", "nemo_version"}


@pytest.fixture(scope="module")
def outputs():
    return np.load(NEMO_DIR / "quartznet_small_outputs.npz")


@pytest.fixture(scope="module")
def loaded():
    return nemo.load(REAL_NEMO)


def build(cfg: dict, state_dict: dict | None = None) -> Jasper:
    model = config.build_model(cfg)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


def front_end(cfg: dict) -> FilterbankFeatures:
    return FilterbankFeatures(**config.input(cfg, "val")[1]).eval()


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w:") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def randomized(model: Jasper, seed: int = 0) -> dict[str, torch.Tensor]:
    """Non-trivial weights and BatchNorm statistics, so that eval mode and every tensor matter."""
    gen = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            value.copy_(0.5 + torch.rand(value.shape, generator=gen))
        elif value.is_floating_point():
            value.copy_(0.1 * torch.randn(value.shape, generator=gen))
        else:
            value.fill_(7)
    return state


# --------------------------------------------------------------------------------------------------
# Reading NeMo's file


def test_real_nemo_loads_into_our_schema(loaded):
    cfg, state_dict = loaded
    vocabulary = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]
    assert cfg["labels"] == vocabulary
    assert config.model_section(cfg) == "quartznet"  # separable blocks -> QuartzNet naming
    blocks = cfg["quartznet"]["encoder"]["blocks"]
    # README: filters/kernel/stride/dilation/repeat/residual/separable of the 7 blocks.
    assert [
        (
            b["filters"],
            b["kernel_size"][0],
            b["stride"][0],
            b["dilation"][0],
            b["repeat"],
            b["residual"],
            b.get("separable", False),
        )
        for b in blocks
    ] == [
        (64, 33, 2, 1, 1, False, True),
        (64, 33, 1, 1, 2, True, True),
        (64, 39, 1, 1, 3, True, True),
        (96, 51, 1, 1, 2, True, True),
        (128, 63, 1, 1, 3, True, True),
        (128, 87, 1, 2, 1, False, True),
        (256, 1, 1, 1, 1, False, False),
    ]
    _, features = config.input(cfg, "val")
    assert features["length_rounding"] == "floor"
    assert features["log_zero_guard"] == 2.0**-24
    assert features["stft_pad_mode"] == "constant"
    assert features["normalize"] == "per_feature" and features["dither"] == 0.0
    model = build(cfg, state_dict)  # strict load: every key and shape fits
    assert num_parameters(model) == 226_909
    assert not any(k.startswith("preprocessor.") for k in state_dict)
    assert "encoder.layers.1.mconv.5.weight" in state_dict  # ".conv." infix removed


@pytest.mark.parametrize("name", NAMES)
def test_model_reproduces_nemo_log_probs_from_nemo_features(loaded, outputs, name):
    model = build(*loaded)
    feats = torch.from_numpy(outputs[f"feats_{name}"])[None]
    feat_len = torch.tensor([int(outputs[f"feat_len_{name}"])])
    with torch.no_grad():
        log_probs, enc_len = model(feats, feat_len)
    assert enc_len.item() == int(outputs[f"enc_len_{name}"])
    valid = enc_len.item()
    diff = np.abs(log_probs[0, :valid].numpy() - outputs[f"log_probs_{name}"][:valid]).max()
    assert diff <= 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_front_end_and_whole_chain_reproduce_nemo(loaded, outputs, name):
    cfg, state_dict = loaded
    model, featurizer = build(cfg, state_dict), front_end(cfg)
    samples = torch.from_numpy(outputs[f"samples_{name}"])[None]
    with torch.no_grad():
        feats, feat_len = featurizer(samples, torch.tensor([samples.size(1)]))
        log_probs, enc_len = model(feats, feat_len)
    n = int(outputs[f"feat_len_{name}"])
    assert feat_len.item() == n
    assert feats.shape[-1] == outputs[f"feats_{name}"].shape[-1]  # same padding to 16 frames
    assert np.abs(feats[0, :, :n].numpy() - outputs[f"feats_{name}"][:, :n]).max() <= 1e-3
    valid = int(outputs[f"enc_len_{name}"])
    assert enc_len.item() == valid
    ids = greedy_decode(log_probs, enc_len)[0, :valid].numpy()
    assert ids.tolist() == outputs[f"greedy_{name}"][:valid].tolist()


def test_padded_batch_equals_single_runs_and_nemo_batch(loaded, outputs):
    cfg, state_dict = loaded
    model, featurizer = build(cfg, state_dict), front_end(cfg)
    lengths = torch.from_numpy(outputs["batch_lengths"])
    with torch.no_grad():
        feats, feat_lens = featurizer(torch.from_numpy(outputs["batch_samples"]), lengths)
        batch_lp, batch_lens = model(feats, feat_lens)
    assert batch_lens.tolist() == outputs["batch_enc_lens"].tolist()
    for i, name in enumerate(outputs["batch_names"]):
        samples = torch.from_numpy(outputs[f"samples_{name}"])[None]
        with torch.no_grad():
            single_lp, single_len = model(*featurizer(samples, torch.tensor([samples.size(1)])))
        valid = single_len.item()
        assert batch_lens[i].item() == valid
        assert (batch_lp[i, :valid] - single_lp[0, :valid]).abs().max() <= 1e-4
        assert (
            np.abs(batch_lp[i, :valid].numpy() - outputs["batch_log_probs"][i, :valid]).max()
            <= 1e-4
        )


@pytest.mark.parametrize("variant", ["gzip", "no_dot_prefix", "gzip_no_dot_prefix"])
def test_gzip_and_unprefixed_nemo_files_load(tmp_path, loaded, variant):
    files = members(REAL_NEMO)
    if "no_dot_prefix" in variant:
        files = {name.removeprefix("./"): data for name, data in files.items()}
    compressed = variant.startswith("gzip")
    path = write_tar(tmp_path / "model.nemo", files, "w:gz" if compressed else "w:")
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compressed
    cfg, state_dict = nemo.load(path)
    assert cfg == loaded[0]
    assert list(state_dict) == list(loaded[1])
    assert all(torch.equal(state_dict[k], loaded[1][k]) for k in state_dict)


def test_interpolated_config_values_are_resolved(tmp_path, loaded):
    """Training configs say ``vocabulary: ${model.labels}``; NeMo resolves that when it saves, but
    hand-written or older files may keep it."""

    def edit(cfg):
        cfg["preprocessor"]["sample_rate"] = "${sample_rate}"
        cfg["decoder"]["vocabulary"] = "${model.labels}"

    assert nemo.load(_config_edited(tmp_path, edit))[0] == loaded[0]


# --------------------------------------------------------------------------------------------------
# Broken files


def _without_member(tmp_path: Path) -> Path:
    files = members(REAL_NEMO)
    del files["./model_weights.ckpt"]
    return write_tar(tmp_path / "broken.nemo", files)


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "broken.nemo"
    path.write_bytes(REAL_NEMO.read_bytes()[: REAL_NEMO.stat().st_size // 2])
    return path


def _truncated_gzip(tmp_path: Path) -> Path:
    data = gzip.compress(REAL_NEMO.read_bytes())
    path = tmp_path / "broken.nemo"
    path.write_bytes(data[: len(data) // 2])
    return path


def _not_an_archive(tmp_path: Path) -> Path:
    path = tmp_path / "broken.nemo"
    path.write_text("model_config.yaml\n")
    return path


def _weights_edited(tmp_path: Path, edit) -> Path:
    files = members(REAL_NEMO)
    weights = torch.load(io.BytesIO(files["./model_weights.ckpt"]), weights_only=True)
    edit(weights)
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    files["./model_weights.ckpt"] = buffer.getvalue()
    return write_tar(tmp_path / "broken.nemo", files)


def _config_edited(tmp_path: Path, edit) -> Path:
    files = members(REAL_NEMO)
    cfg = yaml.safe_load(files["./model_config.yaml"])
    edit(cfg)
    files["./model_config.yaml"] = yaml.safe_dump(cfg).encode()
    return write_tar(tmp_path / "broken.nemo", files)


def _set_block(key, value):
    def edit(cfg):
        cfg["encoder"]["jasper"][2][key] = value

    return edit


BROKEN = {
    "missing member": (_without_member, ["missing model_weights.ckpt"]),
    "truncated tar": (_truncated, ["truncated or corrupt", "model_weights.ckpt"]),
    "truncated tar.gz": (_truncated_gzip, ["broken.nemo"]),
    "not an archive": (_not_an_archive, ["not a .nemo archive"]),
    "missing key": (
        lambda p: _weights_edited(p, lambda w: w.pop("encoder.encoder.3.mconv.6.conv.weight")),
        ["1 keys missing", "encoder.encoder.3.mconv.6.conv.weight"],
    ),
    "unexpected key": (
        lambda p: _weights_edited(
            p, lambda w: w.update({"encoder.encoder.9.mconv.0.conv.weight": torch.zeros(1)})
        ),
        ["1 unexpected", "encoder.encoder.9.mconv.0.conv.weight"],
    ),
    "shape mismatch": (
        lambda p: _config_edited(p, _set_block("kernel", [41])),
        ["encoder.encoder.2.mconv.0.conv.weight", "(64, 1, 39)", "(64, 1, 41)"],
    ),
    "unsupported option": (
        lambda p: _config_edited(p, _set_block("se", True)),
        ["encoder.jasper[2].se=True", "not supported"],
    ),
    "vocabulary size": (
        lambda p: _config_edited(p, lambda c: c["decoder"].update(num_classes=30)),
        ["decoder.num_classes=30", "28 symbols"],
    ),
    "bpe model": (
        lambda p: _config_edited(
            p, lambda c: c.update(target="nemo.collections.asr.models.EncDecCTCModelBPE")
        ),
        ["EncDecCTCModelBPE"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_nemo_gives_a_clear_error(tmp_path, case):
    make, fragments = BROKEN[case]
    path = make(tmp_path)
    with pytest.raises(nemo.NemoFormatError) as err:
        nemo.load(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


# --------------------------------------------------------------------------------------------------
# Writing .nemo files


def test_written_nemo_has_the_layout_and_config_keys_of_nemos_own(tmp_path, loaded):
    out = nemo.save(tmp_path / "out.nemo", *loaded)
    with tarfile.open(REAL_NEMO) as real_tar, tarfile.open(out) as our_tar:
        assert [(m.name, m.type) for m in our_tar.getmembers()] == [
            (m.name, m.type) for m in real_tar.getmembers()
        ]
    assert out.read_bytes()[:2] != b"\x1f\x8b"  # plain tar, as NeMo 3.0.0 writes
    real, ours = members(REAL_NEMO), members(out)
    real_cfg, our_cfg = (
        yaml.safe_load(real["./model_config.yaml"]),
        yaml.safe_load(ours["./model_config.yaml"]),
    )
    assert set(real_cfg) - NOT_WRITTEN == set(our_cfg)
    for key, section in real_cfg.items():
        if isinstance(section, dict) and key not in NOT_WRITTEN:
            assert set(section) <= set(our_cfg[key]), key
    for key in (
        "target",
        "preprocessor",
        "encoder",
        "decoder",
        "labels",
        "sample_rate",
        "spec_augment",
    ):
        assert our_cfg[key] == real_cfg[key], key
    assert our_cfg["decoder"]["num_classes"] == 28  # without the blank, as NeMo counts

    real_w = torch.load(io.BytesIO(real["./model_weights.ckpt"]), weights_only=True)
    our_w = torch.load(io.BytesIO(ours["./model_weights.ckpt"]), weights_only=True)
    assert list(our_w) == list(real_w)  # same keys in the same order, buffers first
    for key, value in real_w.items():
        assert our_w[key].shape == value.shape and our_w[key].dtype == value.dtype
        if key.startswith("preprocessor."):  # from our FilterbankFeatures
            assert (our_w[key] - value).abs().max() <= 1e-6, key
        else:
            assert torch.equal(our_w[key], value), key


def test_nemo_round_trip_is_lossless(tmp_path, loaded):
    cfg, state_dict = loaded
    nemo.save(tmp_path / "a.nemo", cfg, state_dict)
    cfg2, state_dict2 = nemo.load(tmp_path / "a.nemo")
    assert cfg2 == cfg
    assert list(state_dict2) == list(state_dict)
    assert all(torch.equal(state_dict2[k], state_dict[k]) for k in state_dict)


@pytest.mark.parametrize(
    "path", [CONFIGS / "quartznet_tiny.yaml", TINY_CONFIG], ids=["quartznet", "jasper_dense"]
)
def test_our_checkpoint_to_nemo_and_back_is_lossless(tmp_path, path, caplog):
    cfg = config.load(path)
    model = build(cfg)
    state_dict = randomized(model)
    with caplog.at_level(logging.WARNING, logger="jasper.nemo"):
        nemo.save(tmp_path / "m.nemo", cfg, state_dict)
    # DeepLearningExamples' front end (ceil lengths, reflect padding) cannot be expressed for NeMo.
    assert "length_rounding=ceil" in caplog.text
    nemo_cfg = yaml.safe_load(members(tmp_path / "m.nemo")["./model_config.yaml"])
    section = config.model_section(cfg)
    if section == "jasper":  # dense residuals keep NeMo's mconv naming and residual_dense flags
        assert [b.get("residual_dense", False) for b in nemo_cfg["encoder"]["jasper"]] == [
            bool(b.get("residual_dense")) for b in cfg["jasper"]["encoder"]["blocks"]
        ]
        weights = torch.load(
            io.BytesIO(members(tmp_path / "m.nemo")["./model_weights.ckpt"]), weights_only=True
        )
        assert "encoder.encoder.3.res.2.0.conv.weight" in weights
        assert "encoder.encoder.3.mconv.4.conv.weight" in weights

    cfg2, state_dict2 = nemo.load(tmp_path / "m.nemo")
    assert config.model_section(cfg2) == section
    assert cfg2["labels"] == cfg["labels"]
    assert cfg2[section] == cfg[section]
    assert list(state_dict2) == list(state_dict)
    assert all(torch.equal(state_dict2[k], state_dict[k]) for k in state_dict)
    feats, lens = torch.randn(2, 64, 96), torch.tensor([96, 61])
    with torch.no_grad():
        a, b = build(cfg, state_dict)(feats, lens), build(cfg2, state_dict2)(feats, lens)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("ema", [True, False])
def test_saving_a_checkpoint_writes_its_ema_weights_unless_told_otherwise(tmp_path, ema):
    cfg = config.load(CONFIGS / "quartznet_tiny.yaml")
    raw, averaged = randomized(build(cfg), seed=1), randomized(build(cfg), seed=2)
    ckpt = {"state_dict": raw, "ema_state_dict": averaged, "epoch": 3}
    nemo.save(tmp_path / "m.nemo", cfg, ckpt, ema=ema)
    _, state_dict = nemo.load(tmp_path / "m.nemo")
    expected = averaged if ema else raw
    assert all(torch.equal(state_dict[k], expected[k]) for k in expected)


def test_cli_converts_in_both_directions(tmp_path, loaded, capsys):
    pt = tmp_path / "model.pt"
    assert (
        convert_nemo.main([str(REAL_NEMO), str(pt), "--config_out", str(tmp_path / "model.yaml")])
        == 0
    )
    ckpt = load_checkpoint(pt)
    assert ckpt["labels"] == loaded[0]["labels"] and ckpt["config"] == loaded[0]
    assert config.load(tmp_path / "model.yaml") == loaded[0]
    build(ckpt["config"], ckpt["state_dict"])

    # Back to .nemo, gzip-compressed for NeMo < 1.7; a folder as DEST names the file after SRC.
    (tmp_path / "out").mkdir()
    assert convert_nemo.main([str(pt), str(tmp_path / "out"), "--gzip"]) == 0
    out = tmp_path / "out" / "model.nemo"
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    real_w = torch.load(io.BytesIO(members(REAL_NEMO)["./model_weights.ckpt"]), weights_only=True)
    our_w = torch.load(io.BytesIO(members(out)["./model_weights.ckpt"]), weights_only=True)
    assert all(
        torch.equal(our_w[k], v) for k, v in real_w.items() if not k.startswith("preprocessor.")
    )

    # An upstream-style checkpoint (weights only) needs its YAML.
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": ckpt["state_dict"]}, bare)
    with pytest.raises(SystemExit, match="--model_config"):
        convert_nemo.main([str(bare), str(tmp_path / "bare.nemo")])
    args = [str(bare), str(tmp_path / "bare.nemo"), "--model_config", str(tmp_path / "model.yaml")]
    assert convert_nemo.main(args) == 0
    assert nemo.load(tmp_path / "bare.nemo")[0] == loaded[0]
    with pytest.raises(SystemExit, match="gives a .pt file"):
        convert_nemo.main([str(REAL_NEMO), str(tmp_path / "wrong.nemo")])
    assert convert_nemo.main([str(tmp_path / "model.yaml"), str(tmp_path / "x.nemo")]) == 2
    assert "expected a .nemo or a .pt file" in capsys.readouterr().err
