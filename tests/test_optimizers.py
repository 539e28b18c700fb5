"""Optimizers, LR schedule and EMA against hand-computed numbers. Upstream (DeepLearningExamples,
PyTorch/SpeechRecognition/Jasper): Novograd, AdamW and lr_policy in common/optimizers.py, apply_ema
in train.py; QuartzNet's train.py adds apex FusedNovoGrad and FusedLAMB.

Hand-computed cases run in float64 so that the expected literals can be checked tightly; the
arithmetic that produced each literal is written beside it.
"""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from torch import nn

from common.optimizers import (
    AdamW,
    FusedNovograd,
    Lamb,
    LRSchedule,
    Novograd,
    apply_ema,
    build_optimizer,
    lr_for_step,
    lr_policy,
    make_ema_model,
)

NOVOGRADS = [Novograd, FusedNovograd]


def run_steps(opt_cls, initial, grads_per_step, **hyper):
    """Parameters (float64) after one optimizer step per entry of ``grads_per_step``."""
    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in initial]
    opt = opt_cls(params, **hyper)
    trajectory = []
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        trajectory.append([p.detach().clone().tolist() for p in params])
    return params, opt, trajectory


# ---------------------------------------------------------------------------------------------
# Novograd (upstream common/optimizers.py, Novograd.step)

# lr 0.1, betas (0.5, 0.5), eps 1.0, weight decay 0.5. Both tensors are in one group; each has its
# own squared norm n and scalar second moment v.
NOVOGRAD_HYPER = dict(lr=0.1, betas=(0.5, 0.5), eps=1.0, weight_decay=0.5)
NOVOGRAD_GRADS = [
    ([0.0, 3.0], [0.0, 0.0, 0.0]),
    ([12.0, -3.0], [1.0, 2.0, 2.0]),
    ([-4.0, 1.0], [-2.0, 9.0, 2.0]),
]
NOVOGRAD_EXPECTED = [
    # a = [1, 2]
    # step 1: n = 9; v = 0 so v = n = 9 (not 0.5*9); denom = sqrt(9) + eps = 4
    #   g/denom = [0, 0.75]; + wd*p = 0.5*[1, 2] -> g' = [0.5, 1.75]; m = g'
    #   p = [1 - 0.05, 2 - 0.175] = [0.95, 1.825]
    # b = [1, -2, 4]
    # step 1: n = 0; v = 0 -> v = n = 0; denom = 0 + eps = 1; g' = 0 + 0.5*p = [0.5, -1, 2]
    #   m = g'; p = [1 - 0.05, -2 + 0.1, 4 - 0.2] = [0.95, -1.9, 3.8]
    ([0.95, 1.825], [0.95, -1.9, 3.8]),
    # a step 2: n = 144 + 9 = 153; v = 0.5*9 + 0.5*153 = 81; denom = 9 + 1 = 10
    #   g/denom = [1.2, -0.3]; + 0.5*[0.95, 1.825] = [0.475, 0.9125] -> g' = [1.675, 0.6125]
    #   m = 0.5*[0.5, 1.75] + g' = [1.925, 1.4875]  (no (1 - b1) factor, no bias correction)
    #   p = [0.95 - 0.1925, 1.825 - 0.14875] = [0.7575, 1.67625]
    # b step 2: n = 1 + 4 + 4 = 9; v == 0 -> v = n = 9 (blending would give 4.5); denom = 4
    #   g/denom = [0.25, 0.5, 0.5]; + 0.5*[0.95, -1.9, 3.8] -> g' = [0.725, -0.45, 2.4]
    #   m = 0.5*[0.5, -1, 2] + g' = [0.975, -0.95, 3.4]
    #   p = [0.95 - 0.0975, -1.9 + 0.095, 3.8 - 0.34] = [0.8525, -1.805, 3.46]
    ([0.7575, 1.67625], [0.8525, -1.805, 3.46]),
    # a step 3: n = 16 + 1 = 17; v = 0.5*81 + 0.5*17 = 49; denom = 7 + 1 = 8
    #   g/denom = [-0.5, 0.125]; + 0.5*[0.7575, 1.67625] = [0.37875, 0.838125]
    #   g' = [-0.12125, 0.963125]; m = 0.5*[1.925, 1.4875] + g' = [0.84125, 1.706875]
    #   p = [0.7575 - 0.084125, 1.67625 - 0.1706875] = [0.673375, 1.5055625]
    # b step 3: n = 4 + 81 + 4 = 89; v = 0.5*9 + 0.5*89 = 49; denom = 8
    #   g/denom = [-0.25, 1.125, 0.25]; + 0.5*[0.8525, -1.805, 3.46] = [0.42625, -0.9025, 1.73]
    #   g' = [0.17625, 0.2225, 1.98]; m = 0.5*[0.975, -0.95, 3.4] + g' = [0.66375, -0.2525, 3.68]
    #   p = [0.8525 - 0.066375, -1.805 + 0.02525, 3.46 - 0.368] = [0.786125, -1.77975, 3.092]
    ([0.673375, 1.5055625], [0.786125, -1.77975, 3.092]),
]


@pytest.mark.parametrize("opt_cls", NOVOGRADS)
def test_novograd_hand_computed(opt_cls):
    params, opt, trajectory = run_steps(
        opt_cls, [[1.0, 2.0], [1.0, -2.0, 4.0]], NOVOGRAD_GRADS, **NOVOGRAD_HYPER
    )
    for got, want in zip(trajectory, NOVOGRAD_EXPECTED):
        for got_p, want_p in zip(got, want):
            assert got_p == pytest.approx(want_p, abs=1e-12)
    a, b = (opt.state[p] for p in params)
    assert set(a) == {"step", "exp_avg", "exp_avg_sq"}
    assert int(a["step"]) == 3 and a["exp_avg_sq"].dim() == 0
    assert a["exp_avg_sq"].item() == pytest.approx(49.0, abs=1e-12)
    assert b["exp_avg_sq"].item() == pytest.approx(49.0, abs=1e-12)
    assert a["exp_avg"].tolist() == pytest.approx([0.84125, 1.706875], abs=1e-12)
    assert b["exp_avg"].tolist() == pytest.approx([0.66375, -0.2525, 3.68], abs=1e-12)


@pytest.mark.parametrize("opt_cls", NOVOGRADS)
def test_novograd_recipe_defaults(opt_cls):
    # Defaults betas (0.95, 0), eps 1e-8; lr 0.01, no weight decay; p = [1, 2].
    # step 1: g = [3, 4], v = 25, denom = 5 (+1e-8) -> g' = [0.6, 0.8]; m = g'
    #   p = [1 - 0.006, 2 - 0.008] = [0.994, 1.992]
    # step 2: g = [0, -2], v = n = 4 (b2 = 0 forgets 25); denom = 2 -> g' = [0, -1]
    #   m = 0.95*[0.6, 0.8] + [0, -1] = [0.57, -0.24]
    #   p = [0.994 - 0.0057, 1.992 + 0.0024] = [0.9883, 1.9944]
    _, _, trajectory = run_steps(opt_cls, [[1.0, 2.0]], [([3.0, 4.0],), ([0.0, -2.0],)], lr=0.01)
    assert trajectory[0][0] == pytest.approx([0.994, 1.992], abs=1e-10)
    assert trajectory[1][0] == pytest.approx([0.9883, 1.9944], abs=1e-10)


@pytest.mark.parametrize("opt_cls", NOVOGRADS)
def test_novograd_eps_is_added_to_the_norm(opt_cls):
    # A gradient of norm 5e-8 with eps 1e-8: denom = 5e-8 + 1e-8 = 6e-8 (sqrt(v + eps) would
    # give 1e-4 and a step 800 times smaller); g' = [3e-8, 4e-8] / 6e-8 = [0.5, 2/3];
    # p = [0, 0] - 0.3 * g' = [-0.15, -0.2].
    _, _, trajectory = run_steps(opt_cls, [[0.0, 0.0]], [([3e-8, 4e-8],)], lr=0.3)
    assert trajectory[0][0] == pytest.approx([-0.15, -0.2], rel=1e-9)


@pytest.mark.parametrize("opt_cls", NOVOGRADS)
def test_novograd_grad_averaging_and_amsgrad(opt_cls):
    # lr 0.1, betas (0.5, 0), p = [0, 0]; step 1: g = [3, 4], step 2: g = [0, 2].
    grads = [([3.0, 4.0],), ([0.0, 2.0],)]
    # grad_averaging: step 1 g' = 0.5 * [0.6, 0.8] = [0.3, 0.4]; p = [-0.03, -0.04]
    #   step 2: v = 4, g' = 0.5 * [0, 1] = [0, 0.5]; m = 0.5*[0.3, 0.4] + g' = [0.15, 0.7]
    #   p = [-0.03 - 0.015, -0.04 - 0.07] = [-0.045, -0.11]
    _, _, averaged = run_steps(
        opt_cls, [[0.0, 0.0]], grads, lr=0.1, betas=(0.5, 0.0), grad_averaging=True
    )
    assert averaged[1][0] == pytest.approx([-0.045, -0.11], abs=1e-9)
    # amsgrad: step 2 divides by sqrt(max(25, 4)) = 5, not 2: g' = [0, 0.4]
    #   step 1: p = [-0.06, -0.08], m = [0.6, 0.8]; step 2: m = [0.3, 0.4] + [0, 0.4] = [0.3, 0.8]
    #   p = [-0.06 - 0.03, -0.08 - 0.08] = [-0.09, -0.16]
    _, opt, ams = run_steps(opt_cls, [[0.0, 0.0]], grads, lr=0.1, betas=(0.5, 0.0), amsgrad=True)
    assert ams[1][0] == pytest.approx([-0.09, -0.16], abs=1e-9)
    (state,) = opt.state.values()
    assert state["max_exp_avg_sq"].item() == pytest.approx(25.0)


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # No bias before BatchNorm, as in Jasper: BN cancels that bias, so its gradient is rounding
        # noise, which Novograd's per-tensor normalisation turns into O(lr) steps that differ
        # between any two summation orders.
        self.conv = nn.Conv1d(4, 8, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Conv1d(8, 5, kernel_size=1)
        self.unused = nn.Linear(2, 2)  # never gets a gradient: must be skipped, with no state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.bn(self.conv(x))))


def two_groups(net: SmallConvNet) -> list[dict]:
    return [
        {"params": [*net.conv.parameters(), *net.bn.parameters()]},
        {"params": [*net.out.parameters(), *net.unused.parameters()], "lr": 0.02},
    ]


def train_five_steps(opt_cls, net: SmallConvNet) -> torch.optim.Optimizer:
    opt = opt_cls(two_groups(net), lr=0.01, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(1)
    dtype = net.conv.weight.dtype
    for _ in range(5):
        x = torch.randn(3, 4, 16, generator=gen, dtype=dtype)
        target = torch.randn(3, 5, 16, generator=gen, dtype=dtype)
        loss = (net(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def test_fused_novograd_matches_novograd_on_a_conv_net():
    # In float64 so that the verdict does not depend on the CPU's float32 kernels.
    torch.manual_seed(0)
    net_ref = SmallConvNet().double()
    initial = {k: v.clone() for k, v in net_ref.state_dict().items()}
    net_fused = SmallConvNet().double()
    net_fused.load_state_dict(initial)
    opt_ref = train_five_steps(Novograd, net_ref)
    opt_fused = train_five_steps(FusedNovograd, net_fused)

    moved = False
    for (name, p_ref), p_fused in zip(net_ref.named_parameters(), net_fused.parameters()):
        torch.testing.assert_close(p_fused, p_ref, atol=1e-12, rtol=1e-10, msg=name)
        if name.startswith("unused"):
            assert p_ref not in opt_ref.state and p_fused not in opt_fused.state
            continue
        moved = moved or not torch.equal(p_ref, initial[name])
        s_ref, s_fused = opt_ref.state[p_ref], opt_fused.state[p_fused]
        assert int(s_ref["step"]) == int(s_fused["step"]) == 5
        torch.testing.assert_close(s_fused["exp_avg"], s_ref["exp_avg"], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(s_fused["exp_avg_sq"], s_ref["exp_avg_sq"], rtol=1e-10, atol=0)
    assert moved


@pytest.mark.parametrize("opt_cls", NOVOGRADS)
def test_upstream_novograd_state_dict_resumes(opt_cls):
    # Upstream's state after step 2 of the hand-computed case (tensor a): Python-int step,
    # float32 0-d exp_avg_sq (upstream's torch.zeros([])), upstream's param-group keys.
    upstream = {
        "state": {
            0: {
                "step": 2,
                "exp_avg": torch.tensor([1.925, 1.4875], dtype=torch.float64),
                "exp_avg_sq": torch.tensor(81.0),
            }
        },
        "param_groups": [
            {
                "lr": 0.1,
                "betas": (0.5, 0.5),
                "eps": 1.0,
                "weight_decay": 0.5,
                "grad_averaging": False,
                "amsgrad": False,
                "params": [0],
            }
        ],
    }
    p = torch.tensor([0.7575, 1.67625], dtype=torch.float64, requires_grad=True)
    opt = opt_cls([p], lr=123.0)  # the loaded group's hyper-parameters replace these
    opt.load_state_dict(upstream)
    p.grad = torch.tensor([-4.0, 1.0], dtype=torch.float64)
    opt.step()
    assert p.tolist() == pytest.approx([0.673375, 1.5055625], abs=1e-12)  # step 3 above
    assert torch.is_tensor(opt.state[p]["step"]) and int(opt.state[p]["step"]) == 3


@pytest.mark.parametrize("name", ["novograd", "fused_novograd", "adamw", "lamb"])
def test_optimizer_state_survives_a_weights_only_checkpoint(name):
    net = SmallConvNet()
    opt = train_five_steps(lambda groups, **kw: build_optimizer(name, groups, **kw), net)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    twin = SmallConvNet()
    twin.load_state_dict(net.state_dict())
    opt_twin = build_optimizer(name, two_groups(twin), lr=1.0, weight_decay=0.0)
    opt_twin.load_state_dict(loaded)  # restores lr and weight decay as well as the moments
    for o, model in ((opt, net), (opt_twin, twin)):
        o.zero_grad()
        model(torch.ones(2, 4, 16)).sum().backward()
        o.step()
    for p, q in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, atol=0, rtol=0)


@pytest.mark.parametrize("opt_cls", [Novograd, FusedNovograd, AdamW, Lamb])
def test_sparse_gradients_are_rejected(opt_cls):
    emb = nn.Embedding(4, 3, sparse=True)
    opt = opt_cls(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


# ---------------------------------------------------------------------------------------------
# AdamW (upstream common/optimizers.py, AdamW) and LAMB (apex FusedLAMB, QuartzNet's `lamb98`)


def test_adamw_hand_computed():
    # lr 0.1, betas (0.6, 0.96), eps 0.6, wd 0.5; p = [1, -2]; g1 = [5, -5], g2 = [1, -5].
    # step sizes: t=1: 0.1 * sqrt(1 - 0.96) / (1 - 0.6) = 0.1 * 0.2 / 0.4 = 0.05
    #             t=2: 0.1 * sqrt(1 - 0.9216) / (1 - 0.36) = 0.1 * 0.28 / 0.64 = 0.04375
    # step 1: m = 0.4*g = [2, -2]; v = 0.04*g^2 = [1, 1]; denom = sqrt(v) + 0.6 = [1.6, 1.6]
    #   m/denom = [1.25, -1.25]; + wd*p = [0.5, -1] -> [1.75, -2.25]
    #   p = [1 - 0.05*1.75, -2 + 0.05*2.25] = [0.9125, -1.8875]
    # step 2: m = 0.6*[2, -2] + 0.4*[1, -5] = [1.6, -3.2]
    #   v = 0.96*[1, 1] + 0.04*[1, 25] = [1, 1.96]; denom = [1 + 0.6, 1.4 + 0.6] = [1.6, 2.0]
    #   m/denom = [1.0, -1.6]; + 0.5*[0.9125, -1.8875] = [0.45625, -0.94375] -> [1.45625, -2.54375]
    #   p = [0.9125 - 0.04375*1.45625, -1.8875 + 0.04375*2.54375]
    #     = [0.9125 - 0.0637109375, -1.8875 + 0.1112890625] = [0.8487890625, -1.7762109375]
    # (torch.optim.AdamW decays by lr*wd and adds eps after bias correction: other numbers.)
    _, _, trajectory = run_steps(
        AdamW,
        [[1.0, -2.0]],
        [([5.0, -5.0],), ([1.0, -5.0],)],
        lr=0.1,
        betas=(0.6, 0.96),
        eps=0.6,
        weight_decay=0.5,
    )
    assert trajectory[0][0] == pytest.approx([0.9125, -1.8875], abs=1e-12)
    assert trajectory[1][0] == pytest.approx([0.8487890625, -1.7762109375], abs=1e-12)


def test_lamb_hand_computed():
    # lr 0.1, betas (0.5, 0.75), eps 0.2, wd 0.1, max_grad_norm 1; x = [3, 4], y = [0, 0, 0].
    # step 1: gx = [6, 0], gy = [0, 0, 8]; global ||G|| = sqrt(36 + 64) = 10 > 1, so all
    #   gradients are divided by 10: gx^ = [0.6, 0], gy^ = [0, 0, 0.8].
    #   m = 0.5*g^, v = 0.25*g^^2; bias corrections 0.5 and 0.25 -> m^ = g^, sqrt(v^) = |g^|
    #   ux = [0.6/(0.6 + 0.2), 0/(0 + 0.2)] + 0.1*[3, 4] = [1.05, 0.4]
    #   ||ux|| = sqrt(1.1025 + 0.16) = 1.12361025271221; ratio = 5 / 1.12361 = 4.44994159489985
    #   x = [3 - 0.1*4.44994*1.05, 4 - 0.1*4.44994*0.4] = [2.53275613253552, 3.82200233620401]
    #   uy = [0, 0, 0.8/1.0]; ||y|| = 0 so the trust ratio is 1: y = [0, 0, -0.08]
    # step 2: gx = [0.2, -0.4], gy = [0.4, 0, -0.2]; ||G|| = sqrt(0.4) < 1: no clipping.
    #   bias corrections 1 - 0.5^2 = 0.75, 1 - 0.75^2 = 0.4375
    #   mx = 0.5*[0.3, 0] + 0.5*[0.2, -0.4] = [0.25, -0.2]; m^ = [1/3, -0.266667]
    #   vx = 0.75*[0.09, 0] + 0.25*[0.04, 0.16] = [0.0775, 0.04]; v^ = [0.177143, 0.0914286]
    #   ax = m^ / (sqrt(v^) + 0.2) = [0.536869434906683, -0.530815591741980]
    #   ux = ax + 0.1*x = [0.790145048160235, -0.148615358121579]; ||ux|| = 0.803999826991116
    #   ||x|| = 4.58503603964518; ratio = 5.70278237099153
    #   x = x - 0.1*5.70278*ux = [2.08215360741807, 3.90675444063944]
    #   my = 0.5*[0, 0, 0.4] + 0.5*[0.4, 0, -0.2] = [0.2, 0, 0.1]; m^ = [0.266667, 0, 0.133333]
    #   vy = 0.75*[0, 0, 0.16] + 0.25*[0.16, 0, 0.04] = [0.04, 0, 0.13]; v^ = [0.0914286, 0, 0.297143]
    #   uy = [0.530815591741980, 0, 0.178944948567984 - 0.008]; ||uy|| = 0.557662413900470
    #   ||y|| = 0.08; ratio = 0.143455965483588
    #   y = [-0.00761486632070876, 0, -0.0824523072641362]
    _, _, trajectory = run_steps(
        Lamb,
        [[3.0, 4.0], [0.0, 0.0, 0.0]],
        [([6.0, 0.0], [0.0, 0.0, 8.0]), ([0.2, -0.4], [0.4, 0.0, -0.2])],
        lr=0.1,
        betas=(0.5, 0.75),
        eps=0.2,
        weight_decay=0.1,
        max_grad_norm=1.0,
    )
    (x1, y1), (x2, y2) = trajectory
    assert x1 == pytest.approx([2.53275613253552, 3.82200233620401], abs=1e-12)
    assert y1 == pytest.approx([0.0, 0.0, -0.08], abs=1e-12)
    assert x2 == pytest.approx([2.08215360741807, 3.90675444063944], abs=1e-12)
    assert y2 == pytest.approx([-0.00761486632070876, 0.0, -0.0824523072641362], abs=1e-12)


def test_build_optimizer_names_and_recipe_settings():
    p = [nn.Parameter(torch.zeros(2))]
    novograd = build_optimizer("novograd", p, lr=0.01, weight_decay=1e-3)
    assert type(novograd) is Novograd
    assert novograd.defaults["betas"] == (0.95, 0.0) and novograd.defaults["eps"] == 1e-8
    assert novograd.defaults["lr"] == 0.01 and novograd.defaults["weight_decay"] == 1e-3
    fused = build_optimizer("fused_novograd", p, lr=0.01, weight_decay=1e-3)
    assert type(fused) is FusedNovograd and fused.defaults == novograd.defaults
    assert build_optimizer("adamw", p, 0.01, 0.0).defaults["betas"] == (0.9, 0.999)
    for name in ("lamb", "lamb98"):
        lamb = build_optimizer(name, p, lr=0.01, weight_decay=1e-3)
        assert type(lamb) is Lamb
        assert lamb.defaults["betas"] == (0.9, 0.98) and lamb.defaults["eps"] == 1e-9
        assert lamb.defaults["max_grad_norm"] == 1.0
    assert build_optimizer("novograd", p, 0.01, 0.0, betas=(0.9, 0.5)).defaults["betas"] == (
        0.9,
        0.5,
    )
    with pytest.raises(ValueError, match="novograd, fused_novograd, adamw, lamb"):
        build_optimizer("sgd", p, 0.01, 0.0)


# ---------------------------------------------------------------------------------------------
# LR policy (upstream common/optimizers.py, lr_policy)

SPE = 544  # steps per epoch of the recipe (8 GPUs x 64 utterances per step)
RECIPE = LRSchedule(
    steps_per_epoch=SPE,
    warmup_epochs=2,
    hold_epochs=140,
    num_epochs=440,
    policy="exponential",
    exp_gamma=0.981,
    min_lr=1e-5,
)


def first_step(epoch: int) -> int:
    return (epoch - 1) * SPE + 1


@pytest.mark.parametrize(
    "epoch, expected",
    [(143, "9.81e-03"), (200, "3.29e-03"), (300, "4.83e-04"), (380, "1.04e-04"), (440, "3.29e-05")],
)
def test_exponential_policy_recipe_numbers(epoch, expected):
    # 0.01 * 0.981 ** (epoch - 2 - 140), constant through the epoch
    for step in (first_step(epoch), epoch * SPE):
        assert f"{lr_policy(step, epoch, 0.01, RECIPE):.2e}" == expected
    assert lr_policy(first_step(143), 143, 0.01, RECIPE) == pytest.approx(0.00981, rel=1e-12)


def test_warmup_and_hold():
    # W = 2 * 544 = 1088 steps: a = (step + 1) / 1089 while step < 1088, then 1 until 142 * 544.
    assert lr_policy(1, 1, 0.01, RECIPE) == pytest.approx(0.01 * 2 / 1089, rel=1e-12)
    assert lr_policy(1087, 2, 0.01, RECIPE) == pytest.approx(0.01 * 1088 / 1089, rel=1e-12)
    assert lr_policy(1088, 2, 0.01, RECIPE) == 0.01
    assert lr_policy(142 * SPE, 142, 0.01, RECIPE) == 0.01  # gamma ** 0 in the last hold epoch


def test_min_lr_floor():
    # gamma 0.5 at epoch 160: 0.01 * 0.5 ** 18 = 3.8e-8 -> floored to min_lr 1e-5
    fast = dataclasses.replace(RECIPE, exp_gamma=0.5)
    assert lr_policy(first_step(160), 160, 0.01, fast) == 1e-5
    # the floor applies during warmup too: 0.01 * 2 / 1089 = 1.8e-5 < 1e-4
    assert lr_policy(1, 1, 0.01, dataclasses.replace(RECIPE, min_lr=1e-4)) == 1e-4


def test_legacy_polynomial_policy():
    # 10 steps per epoch, 2 warmup + 3 hold epochs of 10: W = 20, H = 30; 10 epochs = 100 steps.
    # decay: a = ((100 - step) / (100 - 20 - 30)) ** 2
    legacy = LRSchedule(
        steps_per_epoch=10, warmup_epochs=2, hold_epochs=3, num_epochs=10, policy="legacy"
    )
    expected = {
        19: 0.1 * 20 / 21,  # warmup (19 + 1) / (20 + 1)
        20: 0.1,  # hold
        49: 0.1,
        50: 0.1,  # (50 / 50) ** 2 = 1
        75: 0.025,  # (25 / 50) ** 2 = 0.25
        90: 0.004,  # (10 / 50) ** 2 = 0.04
        100: 1e-5,  # 0 -> min_lr
    }
    for step, lr in expected.items():
        assert lr_policy(step, (step - 1) // 10 + 1, 0.1, legacy) == pytest.approx(lr, rel=1e-12)


def test_lr_orders():
    # published (default): step s runs at policy(s)
    assert lr_for_step(1, 0.01, RECIPE) == pytest.approx(0.01 * 2 / 1089, rel=1e-12)
    assert lr_for_step(1088, 0.01, RECIPE) == 0.01
    assert lr_for_step(first_step(143), 0.01, RECIPE) == pytest.approx(0.00981, rel=1e-12)
    # upstream-current: step 1 at the peak LR, step k at policy(k - 1) in the epoch of step k - 1
    cur = dataclasses.replace(RECIPE, order="upstream-current")
    assert lr_for_step(1, 0.01, cur) == 0.01
    assert lr_for_step(2, 0.01, cur) == pytest.approx(0.01 * 2 / 1089, rel=1e-12)
    assert lr_for_step(1089, 0.01, cur) == 0.01
    assert lr_for_step(first_step(143), 0.01, cur) == 0.01  # policy(142 * 544) in epoch 142
    assert lr_for_step(first_step(143) + 1, 0.01, cur) == pytest.approx(0.00981, rel=1e-12)
    with pytest.raises(ValueError, match="published, upstream-current"):
        dataclasses.replace(RECIPE, order="after")
    with pytest.raises(ValueError, match="exponential, legacy, cosine"):
        dataclasses.replace(RECIPE, policy="linear")


# ---------------------------------------------------------------------------------------------
# EMA (upstream train.py, apply_ema)


def test_ema_two_steps_by_hand():
    model = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1)).double()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(0.0)
    ema = make_ema_model(model)
    assert not any(p.requires_grad for p in ema.parameters())

    def set_model(weight: float, running_mean: float, batches: int) -> None:
        with torch.no_grad():
            model[0].weight.fill_(weight)
            model[1].running_mean.fill_(running_mean)
            model[1].num_batches_tracked.fill_(batches)

    set_model(2.0, 1.0, 1)
    apply_ema(model, ema, 0.9)
    # weight: 0.9*1 + 0.1*2 = 1.1; running_mean: 0.9*0 + 0.1*1 = 0.1; running_var stays 1
    assert ema[0].weight.item() == pytest.approx(1.1, abs=1e-12)
    assert ema[1].running_mean.item() == pytest.approx(0.1, abs=1e-12)
    assert ema[1].running_var.item() == 1.0
    assert ema[1].num_batches_tracked.item() == 1  # copied (upstream: int(0.1) = 0)

    set_model(4.0, 3.0, 2)
    apply_ema(nn.DataParallel(model), ema, 0.9)  # DDP-style wrappers are unwrapped
    # weight: 0.9*1.1 + 0.1*4 = 1.39; running_mean: 0.9*0.1 + 0.1*3 = 0.39
    assert ema[0].weight.item() == pytest.approx(1.39, abs=1e-12)
    assert ema[1].running_mean.item() == pytest.approx(0.39, abs=1e-12)
    assert ema[0].bias.item() == 0.0 and ema[1].num_batches_tracked.item() == 2

    apply_ema(model, ema, 0.0)  # decay 0 = EMA off: nothing changes
    assert ema[0].weight.item() == pytest.approx(1.39, abs=1e-12)
    # The EMA copy's state dict is a model state dict (ema_state_dict in checkpoints).
    fresh = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1)).double()
    fresh.load_state_dict(ema.state_dict())
    assert fresh[0].weight.item() == pytest.approx(1.39, abs=1e-12)


def test_cosine_policy_decays_from_peak_to_floor():
    cosine = LRSchedule(
        steps_per_epoch=10, warmup_epochs=1, hold_epochs=0, num_epochs=5, policy="cosine"
    )
    assert lr_policy(5, 1, 0.01, cosine) == pytest.approx(0.01 * 6 / 11)  # warmup as upstream
    assert lr_policy(10, 2, 0.01, cosine) == pytest.approx(0.01)  # decay starts at the peak
    assert lr_policy(30, 4, 0.01, cosine) == pytest.approx(0.005)  # half-way: half the peak
    assert lr_policy(50, 5, 0.01, cosine) == pytest.approx(1e-5)  # the end: the floor
