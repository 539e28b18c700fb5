"""QuartzNet: the upstream configs and layout, the B=5/10 variants, the tiny config, non-English
label sets, and the pretrained-checkpoint downloader (scripts/download_quartznet.sh)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from common.metrics import ctc_greedy_text, word_error_rate
from common.text import normalize, text_to_ids
from jasper import config, nemo
from jasper.model import Jasper, greedy_decode, num_parameters
from tests.conftest import CONFIGS, REFERENCE, REPO
from utils import download_quartznet

QUARTZNET_15X5 = CONFIGS / "quartznet15x5_speedp-online-1.15_speca.yaml"
QUARTZNET_15X5_DROP = CONFIGS / "quartznet15x5_speedp-online-1.15_speca_drop0.2.yaml"
QUARTZNET_10X5 = CONFIGS / "quartznet10x5_speedp-online-1.15_speca.yaml"
QUARTZNET_5X5 = CONFIGS / "quartznet5x5_speedp-online-1.15_speca.yaml"
QUARTZNET_TINY = CONFIGS / "quartznet_tiny.yaml"
GERMAN = list(" abcdefghijklmnopqrstuvwxyzäöüß'")


def build(cfg: dict) -> Jasper:
    return config.build_model(cfg)


def counted_parameters(cfg: dict) -> int:
    """Parameters of a QuartzNet config counted by hand: a separable sub-block has a depthwise
    (C_in x k) and a pointwise (C_in x C_out) conv, a dense one C_in x C_out x k; BatchNorm 2 x C_out;
    a residual branch a 1x1 conv and BatchNorm; the classifier C x K weights and K biases."""
    enc = cfg["quartznet"]["encoder"]
    n_classes = config.num_classes(cfg["labels"])
    channels, total = enc["in_feats"], 0
    for block in enc["blocks"]:
        k, out, c_in = block["kernel_size"][0], block["filters"], channels
        for _ in range(block["repeat"]):
            total += (c_in * k + c_in * out if block.get("separable") else c_in * out * k) + 2 * out
            c_in = out
        if block["residual"]:
            total += channels * out + 2 * out
        channels = out
    return total + channels * n_classes + n_classes


# --------------------------------------------------------------------------------------------------
# Configs and layout


@pytest.mark.parametrize("path", [QUARTZNET_15X5, QUARTZNET_15X5_DROP], ids=lambda p: p.stem)
def test_quartznet15x5_has_upstream_state_dict_layout(path):
    expected = json.loads((REFERENCE / "quartznet15x5_state_dict.json").read_text())
    cfg = config.load(path)
    with torch.device("meta"):
        model = build(cfg)
    got = [
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in model.state_dict().items()
    ]
    assert got == expected["state_dict"]  # keys (mconv naming), order, shapes, dtypes: 637 entries
    assert num_parameters(model) == expected["num_parameters"] == 18_924_381
    assert counted_parameters(cfg) == 18_924_381  # the hand count below is right


def test_quartznet15x5_configs_carry_upstream_training_settings():
    base, drop = config.load(QUARTZNET_15X5), config.load(QUARTZNET_15X5_DROP)
    train_ds, _ = config.input(base, "train")
    speed = train_ds["speed_perturbation"]
    assert (speed["min_rate"], speed["max_rate"], speed["discrete"]) == (0.85, 1.15, False)
    for cfg, dropout, max_freq, max_time in ((base, 0.0, 15, 55), (drop, 0.2, 20, 75)):
        spec = config.input(cfg, "train")[1]["spec_augment"]
        assert (spec["freq_masks"], spec["max_freq"], spec["time_masks"], spec["max_time"]) == (
            2, max_freq, 2, max_time,
        )  # fmt: skip
        blocks = cfg["quartznet"]["encoder"]["blocks"]
        assert {b["dropout"] for b in blocks} == {dropout}
        # Conv1, B1..B5 x3, Conv2 (dilation 2), Conv3: all separable but the 1x1 epilogue.
        b_kernels = [k for k in (33, 39, 51, 63, 75) for _ in range(3)]
        assert [b["kernel_size"][0] for b in blocks] == [33, *b_kernels, 87, 1]
        assert [b.get("separable", False) for b in blocks] == [True] * 17 + [False]
        assert [b["residual"] for b in blocks] == [False] + [True] * 15 + [False, False]
        assert blocks[16]["dilation"] == [2] and blocks[0]["stride"] == [2]


@pytest.mark.parametrize(
    ("path", "copies", "paper_millions"), [(QUARTZNET_5X5, 1, 6.7), (QUARTZNET_10X5, 2, 12.8)]
)
def test_b5_and_b10_variants_use_each_block_fewer_times(path, copies, paper_millions):
    cfg, full = config.load(path), config.load(QUARTZNET_15X5)
    blocks, full_blocks = (
        cfg["quartznet"]["encoder"]["blocks"],
        full["quartznet"]["encoder"]["blocks"],
    )
    assert len(blocks) == 3 + 5 * copies
    distinct = full_blocks[1::3][:5]  # B1..B5 of the 15x5 config
    assert blocks[1:-2] == [b for b in distinct for _ in range(copies)]
    assert blocks[0] == full_blocks[0] and blocks[-2:] == full_blocks[-2:]
    with torch.device("meta"):
        model = build(cfg)
    assert num_parameters(model) == counted_parameters(cfg)
    assert round(num_parameters(model) / 1e6, 1) == paper_millions  # Kriman et al. 2019, table 3


def test_tiny_quartznet_padded_batch_equals_single_runs():
    cfg = config.load(QUARTZNET_TINY)
    model = build(cfg)
    assert all(".conv." not in k for k in model.state_dict())  # QuartzNet naming: mconv/mout
    for module in model.modules():  # non-trivial BatchNorm statistics: eval mode matters
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    model.eval()
    lens = torch.tensor([160, 97, 33])
    feats = torch.randn(3, 64, 160)
    feats = feats * (torch.arange(160)[None, None, :] < lens[:, None, None])
    with torch.no_grad():
        batch, batch_lens = model(feats, lens)
        for i, n in enumerate(lens.tolist()):
            single, single_len = model(feats[i : i + 1, :, :n], lens[i : i + 1])
            assert batch_lens[i] == single_len[0] == (n - 1) // 2 + 1
            assert (batch[i, : single_len[0]] - single[0]).abs().max() <= 1e-5


# --------------------------------------------------------------------------------------------------
# Other languages


def one_hot_log_probs(ids: list[int], n_classes: int) -> torch.Tensor:
    """Per-frame log-probs that spell ``ids`` with CTC: each symbol twice, then a blank."""
    blank = n_classes - 1
    frames = [f for i in ids for f in (i, i, blank)]
    return torch.log_softmax(
        10.0 * torch.nn.functional.one_hot(torch.tensor(frames), n_classes).float(), -1
    )[None]


def test_german_labels_round_trip_through_decoding_and_wer():
    reference = normalize("Grüße aus Köln: schöne Straße, Mädchen!", GERMAN)
    assert reference == "grüße aus köln schöne straße mädchen"  # no ASCII transliteration
    log_probs = one_hot_log_probs(text_to_ids(reference, GERMAN), len(GERMAN) + 1)
    ids = greedy_decode(log_probs, torch.tensor([log_probs.size(1)]))[0]
    hypothesis = ctc_greedy_text(ids, GERMAN)
    assert hypothesis == reference
    assert word_error_rate([hypothesis], [reference]) == (0.0, 0, 6)
    assert word_error_rate(["grüsse aus köln schöne strasse mädchen"], [reference]) == (2 / 6, 2, 6)


def test_german_quartznet_survives_nemo_round_trip(tmp_path):
    cfg = config.load(QUARTZNET_TINY)
    cfg["labels"] = GERMAN
    state_dict = build(cfg).state_dict()
    nemo.save(tmp_path / "de.nemo", cfg, state_dict)
    cfg2, state_dict2 = nemo.load(tmp_path / "de.nemo")
    assert cfg2["labels"] == GERMAN
    assert state_dict2["decoder.layers.0.weight"].shape[0] == len(GERMAN) + 1  # + blank
    raw = nemo.read_archive(tmp_path / "de.nemo")[0]
    assert raw["decoder"]["vocabulary"] == GERMAN and raw["decoder"]["num_classes"] == len(GERMAN)


# --------------------------------------------------------------------------------------------------
# Downloads (offline: file:// URLs)


def make_zip(path: Path, member: str, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"models/{member}", payload)  # NGC zips may nest the file
        zf.writestr("README.txt", "a checkpoint\n")
    return path


def write_csv(path: Path, source: Path, size: int | str = "", sha256: str = "") -> Path:
    rows = [
        "language,url,archive,member,size,sha256",
        f"de,{source.as_uri()},stt_de_quartznet15x5_1.0.0rc1.zip,stt_de_quartznet15x5.nemo,{size},{sha256}",
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def source(tmp_path):
    payload = os.urandom(1 << 20) + b"nemo"  # more than one download chunk
    return make_zip(tmp_path / "source.zip", "stt_de_quartznet15x5.nemo", payload), payload


def run(dest: Path, csv: Path, language: str = "de") -> int:
    return download_quartznet.main([language, str(dest), "--csv", str(csv), "--no-progress"])


def test_first_download_records_size_and_sha256_and_later_runs_verify(tmp_path, source, capsys):
    zip_path, payload = source
    csv, dest = write_csv(tmp_path / "c.csv", zip_path), tmp_path / "ckpt"
    assert run(dest, csv) == 0
    assert (dest / "stt_de_quartznet15x5.nemo").read_bytes() == payload
    record = json.loads((dest / "stt_de_quartznet15x5_1.0.0rc1.zip.checksum.json").read_text())
    assert record["size"] == zip_path.stat().st_size
    assert record["sha256"] == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert "recorded size" in capsys.readouterr().out
    assert run(dest, csv) == 0
    assert "match" in capsys.readouterr().out


def test_a_changed_download_is_refused(tmp_path, source, capsys):
    zip_path, _ = source
    csv, dest = write_csv(tmp_path / "c.csv", zip_path), tmp_path / "ckpt"
    assert run(dest, csv) == 0
    archive = dest / "stt_de_quartznet15x5_1.0.0rc1.zip"
    archive.unlink()
    (dest / "stt_de_quartznet15x5.nemo").unlink()
    make_zip(zip_path, "stt_de_quartznet15x5.nemo", b"something else")  # the source changed
    capsys.readouterr()
    assert run(dest, csv) == 1
    assert "expected" in capsys.readouterr().err
    assert not (dest / "stt_de_quartznet15x5.nemo").exists()
    assert archive.with_name(archive.name + ".bad").is_file()


def test_csv_checksums_are_verified_and_downloads_resume(tmp_path, source, capsys):
    zip_path, payload = source
    data = zip_path.read_bytes()
    dest = tmp_path / "ckpt"
    dest.mkdir()
    wrong = write_csv(tmp_path / "wrong.csv", zip_path, len(data), "0" * 64)
    assert run(dest, wrong) == 1
    assert "sha256" in capsys.readouterr().err
    # A download cut off halfway continues from the .part file and matches the listed sha256.
    (dest / "stt_de_quartznet15x5_1.0.0rc1.zip.part").write_bytes(data[: len(data) // 2])
    right = write_csv(tmp_path / "right.csv", zip_path, len(data), hashlib.sha256(data).hexdigest())
    assert run(dest, right) == 0
    assert (dest / "stt_de_quartznet15x5.nemo").read_bytes() == payload


def test_download_script_runs_offline(tmp_path, source):
    zip_path, payload = source
    env = {
        **os.environ,
        "CSV": str(write_csv(tmp_path / "c.csv", zip_path)),
        "CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "PYTHON": sys.executable,
    }
    script = ["bash", "scripts/download_quartznet.sh"]
    done = subprocess.run(
        [*script, "de", "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ckpt" / "stt_de_quartznet15x5.nemo").read_bytes() == payload
    unknown = subprocess.run(
        [*script, "xx"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert unknown.returncode == 2 and "unknown language" in unknown.stderr


def test_checkpoint_list_has_the_upstream_sources():
    rows = download_quartznet.read_csv(download_quartznet.DEFAULT_CSV)
    assert sorted(rows) == sorted(["en", "ca", "de", "es", "fr", "it", "pl", "ru", "zh"])
    assert rows["en"].url == (
        "https://api.ngc.nvidia.com/v2/models/nvidia/quartznet_pyt_ckpt_amp/versions/21.03.0/zip"
    )
    assert rows["en"].member == "nvidia_quartznet_210504.pt"
    for lang in ("ca", "de", "es", "fr", "it", "pl", "ru", "zh"):
        assert rows[lang].url == (
            f"https://api.ngc.nvidia.com/v2/models/nvidia/nemo/stt_{lang}_quartznet15x5/versions/1.0.0rc1/zip"
        )
        assert rows[lang].member == f"stt_{lang}_quartznet15x5.nemo"
