"""The training speed levers change nothing but speed: one padding mask per block instead of one
per convolution (jasper/model.py) gives upstream's outputs, gradients and BatchNorm statistics
bit for bit, and ``train.py --compile`` trains to the eager run's weights (float64, so that the
comparison does not depend on the CPU's float32 kernels). Their GPU speed is measured by
bench/gpu_check.sh (bench/train_speed.py)."""

from __future__ import annotations

import copy

import pytest
import torch

import train
from common.checkpoint import load_checkpoint
from jasper import config
from jasper import model as jasper_model
from jasper.model import CTCLoss, MaskedConv1d, upstream_masked_conv
from tests.conftest import REPO, TINY_CONFIG, make_corpus

QUARTZNET = REPO / "configs" / "quartznet_tiny.yaml"


def train_step(model, feats, lens, targets, target_lens):
    """Forward, CTC, backward in training mode; returns outputs, gradients and BN statistics."""
    model.zero_grad(set_to_none=True)
    log_probs, enc_lens = model(feats, lens)
    CTCLoss(log_probs.size(-1))(log_probs, targets, enc_lens, target_lens).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    stats = {n: b.clone() for n, b in model.named_buffers()}
    return log_probs.detach(), enc_lens, grads, stats


@pytest.mark.parametrize("config_path", [TINY_CONFIG, QUARTZNET], ids=["jasper", "quartznet"])
def test_one_mask_per_block_is_upstreams_masking(config_path, monkeypatch):
    cfg = config.load(config_path)
    torch.manual_seed(0)
    model = config.build_model(cfg).train()
    reference = copy.deepcopy(model)
    n_feats = cfg[config.model_section(cfg)]["encoder"]["in_feats"]
    feats = torch.randn(3, n_feats, 96)
    lens = torch.tensor([96, 71, 40])  # padding in two of three utterances
    targets, target_lens = torch.randint(0, len(cfg["labels"]), (3, 12)), torch.tensor([12, 9, 5])

    built = []
    monkeypatch.setattr(
        jasper_model, "padding_mask",
        lambda *a, _real=jasper_model.padding_mask: built.append(1) or _real(*a),
    )  # fmt: skip
    ours = train_step(model, feats, lens, targets, target_lens)
    masked = [m for m in model.modules() if isinstance(m, MaskedConv1d) and m.masked]
    blocks = len(model.encoder.layers)
    # One mask per block (a second in QuartzNet's strided separable prologue, whose pointwise conv
    # reads the new lengths), not one per convolution.
    assert blocks <= len(built) <= blocks + 1 < len(masked)

    monkeypatch.setattr(
        MaskedConv1d,
        "forward",
        lambda self, x, x_lens, pad=None: upstream_masked_conv(self, x, x_lens),
    )
    upstream = train_step(reference, feats, lens, targets, target_lens)
    assert torch.equal(ours[0], upstream[0]) and torch.equal(ours[1], upstream[1])
    for got, want in zip(ours[2:], upstream[2:], strict=True):
        assert got.keys() == want.keys()
        for name in got:
            assert torch.equal(got[name], want[name]), name


def test_compiled_training_trains_to_the_eager_weights(tmp_path):
    """Two steps of the tiny model through train.py, eager and with --compile: the same weights
    up to float64 rounding (inductor may reorder sums)."""
    root = tmp_path / "data"
    root.mkdir()
    manifest = make_corpus(root, 8, seed=3, name="train")
    common = [
        "--model_config", str(TINY_CONFIG), "--dataset_dir", str(root),
        "--train_manifests", str(manifest), "--dali_device", "none", "--device", "cpu",
        "--num_workers", "0", "--batch_size", "4", "--grad_accumulation_steps", "1",
        "--epochs", "1", "--lr", "0.01", "--warmup_epochs", "0", "--hold_epochs", "1",
        "--ema", "0", "--seed", "5", "--save_frequency", "1", "--no-resume",
        "--dtype", "float64",
    ]  # fmt: skip
    weights = {}
    for form in ("--no-compile", "--compile"):
        out = tmp_path / form
        assert train.main([*common, "--output_dir", str(out), form]) == 0
        weights[form] = load_checkpoint(out / "Jasper_epoch1_checkpoint.pt")["state_dict"]
    eager, compiled = weights["--no-compile"], weights["--compile"]
    assert eager.keys() == compiled.keys()
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-9, atol=1e-12, msg=name)
