"""The acoustic model: upstream state_dict layout, upstream checkpoints, masking, loss, decoding."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from common.checkpoint import load_checkpoint, load_model_state, model_weights
from common.metrics import ctc_greedy_text
from jasper import config
from jasper.model import CTCLoss, Jasper, greedy_decode, num_parameters
from tests.conftest import FULL_CONFIG, REFERENCE, TINY_CONFIG

SMALL = REFERENCE / "small_model"


def build(cfg: dict) -> Jasper:
    return config.build_model(cfg)


def test_full_model_has_upstream_state_dict_layout():
    expected = json.loads((REFERENCE / "jasper10x5dr_state_dict.json").read_text())
    cfg = config.load(FULL_CONFIG)
    with torch.device("meta"):
        model = build(cfg)
    got = [
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in model.state_dict().items()
    ]
    assert got == expected["state_dict"]  # keys, order, shapes and dtypes
    assert num_parameters(model) == expected["num_parameters"] == 332_632_349


def test_building_twice_gives_the_same_model_and_leaves_config_untouched():
    cfg = config.load(FULL_CONFIG)
    before = copy.deepcopy(cfg)
    with torch.device("meta"):
        first, second = build(cfg), build(cfg)
    assert cfg == before
    assert num_parameters(first) == num_parameters(second) == 332_632_349
    assert list(first.state_dict()) == list(second.state_dict())


def small_model_and_io():
    cfg = config.load(SMALL / "config.yaml")
    io = np.load(SMALL / "io.npz")
    return build(cfg).eval(), cfg, io


@pytest.mark.parametrize("ema", [False, True])
def test_upstream_checkpoint_reproduces_upstream_outputs(ema):
    model, cfg, io = small_model_and_io()
    ckpt = load_checkpoint(SMALL / "checkpoint.pt")
    load_model_state(model, model_weights(ckpt, ema=ema))
    suffix = "_ema" if ema else ""
    with torch.no_grad():
        log_probs, enc_lens = model(
            torch.from_numpy(io["feats"]), torch.from_numpy(io["feat_lens"])
        )
    assert np.abs(log_probs.numpy() - io["log_probs" + suffix]).max() <= 1e-4
    assert enc_lens.tolist() == io["enc_lens" + suffix].tolist()
    ids = greedy_decode(log_probs, enc_lens)
    expected = json.loads((SMALL / "transcripts.json").read_text())
    texts = [
        ctc_greedy_text(ids[i, : enc_lens[i]].tolist(), cfg["labels"]) for i in range(len(ids))
    ]
    assert texts == expected["transcripts_valid_frames" + suffix]


def test_legacy_checkpoint_forms_load(tmp_path):
    """Pre-2021 key names (upstream common/helpers.py, convert_v1_state_dict) and the ``amp``
    entry of checkpoints from before upstream's switch to native AMP (Nov 2021, now ``scaler``)
    load too."""
    model, _, io = small_model_and_io()
    ckpt = torch.load(SMALL / "checkpoint.pt", weights_only=True)
    legacy = {"audio_preprocessor.featurizer.fb": torch.zeros(1)}
    for key, value in ckpt["state_dict"].items():
        key = key.replace("encoder.layers.", "jasper_encoder.encoder.")
        key = key.replace("decoder.layers.", "jasper_decoder.decoder_layers.")
        legacy[key] = value
    old = {"epoch": 3, "state_dict": legacy, "ema_state_dict": None, "amp": None}
    torch.save(old, tmp_path / "jasper_fp16.pt")
    loaded = load_checkpoint(tmp_path / "jasper_fp16.pt")
    load_model_state(model, model_weights(loaded, ema=True))  # no EMA: falls back to raw weights
    with torch.no_grad():
        log_probs, _ = model(torch.from_numpy(io["feats"]), torch.from_numpy(io["feat_lens"]))
    assert np.abs(log_probs.numpy() - io["log_probs"]).max() <= 1e-4


def padded_batch_matches_single_runs(model: Jasper, lengths: list[int], n_feats: int = 64) -> float:
    model.eval()
    feats = [torch.randn(n_feats, n) for n in lengths]
    batch = torch.zeros(len(lengths), n_feats, max(lengths) + 37)  # extra padding on purpose
    for i, f in enumerate(feats):
        batch[i, :, : f.shape[1]] = f
    lens = torch.tensor(lengths)
    worst = 0.0
    with torch.no_grad():
        batch_lp, batch_lens = model(batch, lens)
        for i, f in enumerate(feats):
            lp, enc_len = model(f[None], lens[i : i + 1])
            assert batch_lens[i] == enc_len[0]
            n = int(enc_len[0])
            worst = max(worst, (batch_lp[i, :n] - lp[0, :n]).abs().max().item())
    return worst


def randomize_batchnorm(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)


def test_padded_batch_equals_single_runs_tiny():
    model = build(config.load(TINY_CONFIG))
    randomize_batchnorm(model)
    assert padded_batch_matches_single_runs(model, [301, 173, 58]) <= 1e-4


def test_padded_batch_equals_single_runs_full_slice():
    """Prologue and the first two dense blocks of jasper10x5dr (the full model is too big for CI)."""
    cfg = config.load(FULL_CONFIG)
    cfg["jasper"]["encoder"]["blocks"] = cfg["jasper"]["encoder"]["blocks"][:3]
    cfg["jasper"]["decoder"]["in_feats"] = 256
    model = build(cfg)
    randomize_batchnorm(model)
    assert padded_batch_matches_single_runs(model, [211, 96]) <= 1e-4


def test_model_without_masks_returns_the_same_pair():
    cfg = config.load(TINY_CONFIG)
    masked = build(cfg).eval()
    cfg["jasper"]["encoder"]["use_conv_masks"] = False
    unmasked = build(cfg).eval()
    unmasked.load_state_dict(masked.state_dict())
    feats, lens = torch.randn(2, 64, 160), torch.tensor([160, 160])
    with torch.no_grad():
        lp_m, len_m = masked(feats, lens)
        lp_u, len_u = unmasked(feats, lens)
    assert torch.equal(len_m, len_u) and len_u.tolist() == [80, 80]
    assert (lp_m - lp_u).abs().max() <= 1e-5  # full-length input: masks change nothing


def test_encoder_lengths_follow_the_conv_length_rule():
    model = build(config.load(TINY_CONFIG)).eval()
    lens = torch.tensor([1, 2, 159, 160, 161])
    with torch.no_grad():
        _, enc_lens = model(torch.randn(5, 64, 161), lens)
    assert enc_lens.tolist() == [1, 1, 80, 80, 81]  # stride-2 prologue: ceil(L / 2)
    assert torch.equal(model.encoder.output_lengths(lens), enc_lens)


def test_ctc_loss_uses_last_class_as_blank_and_batch_mean():
    torch.manual_seed(1)
    log_probs = torch.randn(3, 50, 29).log_softmax(-1)
    targets = torch.randint(0, 28, (3, 10))
    in_lens, tgt_lens = torch.tensor([50, 40, 30]), torch.tensor([10, 7, 3])
    loss = CTCLoss(29)(log_probs, targets, in_lens, tgt_lens)
    ref = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1), targets, in_lens, tgt_lens, blank=28, reduction="none"
    ).mean()
    assert torch.allclose(loss, ref)


def test_greedy_decode_turns_padding_into_blanks():
    log_probs = torch.full((1, 4, 5), -10.0)
    log_probs[0, :, 2] = 0.0  # symbol 2 wins everywhere
    assert greedy_decode(log_probs).tolist() == [[2, 2, 2, 2]]
    assert greedy_decode(log_probs, torch.tensor([2])).tolist() == [[2, 2, 4, 4]]
