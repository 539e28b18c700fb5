"""Optimizers, the LR schedule and the weight EMA of the recipe.

Upstream's are in ``common/optimizers.py`` and ``train.py`` (``apply_ema``); their equations are in
docs/upstream.md, sections #novograd, #lr-policy and #ema.

- ``Novograd``: upstream's Novograd, one tensor at a time, as upstream runs it.
- ``FusedNovograd``: the same equations over all tensors of a group at once (``torch._foreach_*``);
  QuartzNet's ``fused_novograd`` (upstream: apex ``FusedNovoGrad`` with the settings of
  docs/upstream.md#novograd).
- ``AdamW``: upstream's AdamW, whose weight decay is scaled by the bias-corrected step size (it is
  not ``torch.optim.AdamW``, which decays by ``lr * wd`` and adds eps to the corrected second moment).
- ``Lamb``: apex ``FusedLAMB`` as QuartzNet's ``lamb98`` uses it (betas 0.9/0.98, eps 1e-9).
- ``lr_policy`` / ``lr_for_step`` / ``set_lr``: the warmup-hold-decay schedule.
- ``make_ema_model`` / ``apply_ema``: the weight EMA applied after every optimizer step.

Optimizer state uses upstream's names (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``)
and param-group keys equal to the constructor arguments, so upstream's optimizer state dicts load
(a Python-int ``step`` is accepted and becomes a tensor at the next step).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

OPTIMIZER_NAMES = ("novograd", "fused_novograd", "adamw", "lamb", "lamb98")
LR_POLICIES = ("exponential", "legacy", "cosine")
LR_ORDERS = ("published", "upstream-current")

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def _check_hyperparameters(lr: float, betas: tuple[float, float], eps: float, wd: float) -> None:
    if lr < 0.0:
        raise ValueError(f"invalid learning rate: {lr}")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"invalid betas: {betas} (each in [0, 1))")
    if eps < 0.0:
        raise ValueError(f"invalid eps: {eps}")
    if wd < 0.0:
        raise ValueError(f"invalid weight_decay: {wd}")


def _params_with_grad(group: dict[str, Any], name: str) -> list[torch.Tensor]:
    params = [p for p in group["params"] if p.grad is not None]
    for p in params:
        if p.grad.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
    return params


def _step_counter(state: dict[str, Any]) -> torch.Tensor:
    """The per-parameter step count as a CPU int64 tensor. Upstream stored a Python int; a
    loaded upstream state is converted here, so its count carries on."""
    step = state.get("step", 0)
    if not torch.is_tensor(step):
        step = torch.tensor(int(step), dtype=torch.int64)
        state["step"] = step
    return step


def _buckets(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Parameters split by (device, dtype): the fast ``torch._foreach_*`` kernels and
    ``torch.stack`` of per-tensor scalars need one device and one dtype per list."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    return list(groups.values())


# ---------------------------------------------------------------------------------------------
# Novograd (Ginsburg et al. 2019, https://arxiv.org/abs/1905.11286), as upstream implements it


def _evaluate_closure(closure: Callable[[], float] | None) -> float | None:
    """The loss of ``closure`` (gradients on, as ``step`` runs under no_grad), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _init_adam_state(state: dict[str, Any], p: torch.Tensor) -> None:
    """Per-element first and second moments (AdamW and LAMB), created on the first step."""
    if "exp_avg" not in state:
        state["step"] = torch.zeros((), dtype=torch.int64)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _init_novograd_state(state: dict[str, Any], p: torch.Tensor, amsgrad: bool) -> None:
    if "exp_avg" not in state:
        state["step"] = torch.zeros((), dtype=torch.int64)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # One second moment per tensor (a scalar), not per element: Novograd's layer-wise norm.
        state["exp_avg_sq"] = torch.zeros((), dtype=p.dtype, device=p.device)
    if amsgrad and "max_exp_avg_sq" not in state:
        state["max_exp_avg_sq"] = torch.zeros((), dtype=p.dtype, device=p.device)


class Novograd(Optimizer):
    """Novograd exactly as upstream's ``common/optimizers.py Novograd.step``, per parameter tensor::

        n      = sum(g * g)                       squared L2 norm of the whole tensor
        v      = n                  if v == 0     first step (v starts at 0), and whenever v is 0
        v      = b2 * v + (1 - b2) * n   else     with the recipe's b2 = 0 this is just n
        denom  = sqrt(v) + eps                    (amsgrad: sqrt(max(v_max, v)) + eps)
        g'     = g / denom + wd * p               weight decay after normalisation, in the moment
        g'     = (1 - b1) * g'   if grad_averaging
        m      = b1 * m + g'
        p      = p - lr * m                       no bias correction

    State per parameter: ``step`` (int64 tensor; counted, unused), ``exp_avg`` (m),
    ``exp_avg_sq`` (v, a 0-d tensor) and, with amsgrad, ``max_exp_avg_sq``. Unlike upstream, the
    gradient is left untouched (upstream divided ``p.grad`` in place) and the ``v == 0`` test is a
    ``torch.where`` instead of a host sync per tensor; the numbers are the same.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.0),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_averaging: bool = False,
        amsgrad: bool = False,
    ) -> None:
        _check_hyperparameters(lr, betas, eps, weight_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            grad_averaging=grad_averaging,
            amsgrad=amsgrad,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in _params_with_grad(group, "Novograd"):
                grad = p.grad
                state = self.state[p]
                _init_novograd_state(state, p, group["amsgrad"])
                _step_counter(state).add_(1)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

                norm_sq = grad.square().sum()
                blended = exp_avg_sq * beta2 + norm_sq * (1 - beta2)
                exp_avg_sq.copy_(torch.where(exp_avg_sq == 0, norm_sq, blended))
                if group["amsgrad"]:
                    max_sq = state["max_exp_avg_sq"]
                    torch.maximum(max_sq, exp_avg_sq, out=max_sq)
                    denom = max_sq.sqrt() + group["eps"]
                else:
                    denom = exp_avg_sq.sqrt() + group["eps"]

                update = grad / denom
                if group["weight_decay"] != 0:
                    update.add_(p, alpha=group["weight_decay"])
                if group["grad_averaging"]:
                    update.mul_(1 - beta1)
                exp_avg.mul_(beta1).add_(update)
                p.add_(exp_avg, alpha=-group["lr"])
        return loss


class FusedNovograd(Novograd):
    """``Novograd``'s equations (see there) over all tensors of a group at once.

    This is QuartzNet's ``fused_novograd``: upstream used apex ``FusedNovoGrad(betas=(0.95, 0),
    bias_correction=False, reg_inside_moment=True, grad_averaging=False)`` with its per-tensor L2
    norm, which is the Novograd above. Per-tensor norms come from ``torch._foreach_norm`` (so ``n``
    is the square of the norm rather than a sum of squares: equal up to rounding), the scalar
    second moments are updated as one stacked vector, and the elementwise work is done with
    ``torch._foreach_*``. The per-tensor denominators reach the kernels as a list of Python floats,
    which costs one host sync per step (GradScaler already syncs once per step). State names and
    param-group keys are ``Novograd``'s, so checkpoints move freely between the two.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate_closure(closure)
        for group in self.param_groups:
            for params in _buckets(_params_with_grad(group, "FusedNovograd")):
                self._update_bucket(group, params)
        return loss

    def _update_bucket(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            _init_novograd_state(state, p, group["amsgrad"])
        torch._foreach_add_([_step_counter(s) for s in states], 1)
        grads = [p.grad for p in params]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]

        norm_sq = torch.stack(torch._foreach_norm(grads)).square()
        v_old = torch.stack(exp_avg_sqs)
        v_new = torch.where(v_old == 0, norm_sq, v_old * beta2 + norm_sq * (1 - beta2))
        torch._foreach_copy_(exp_avg_sqs, v_new.unbind(0))
        if group["amsgrad"]:
            max_sqs = [s["max_exp_avg_sq"] for s in states]
            v_new = torch.maximum(torch.stack(max_sqs), v_new)
            torch._foreach_copy_(max_sqs, v_new.unbind(0))
        denoms = (v_new.sqrt() + group["eps"]).tolist()

        updates = torch._foreach_div(grads, denoms)
        if group["weight_decay"] != 0:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        if group["grad_averaging"]:
            torch._foreach_mul_(updates, 1 - beta1)
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, updates)
        torch._foreach_add_(params, exp_avgs, alpha=-group["lr"])


# ---------------------------------------------------------------------------------------------
# AdamW, as upstream implements it


class AdamW(Optimizer):
    """Upstream's AdamW (``common/optimizers.py AdamW.step``), per parameter tensor, at step t::

        m     = b1 * m + (1 - b1) * g
        v     = b2 * v + (1 - b2) * g * g
        denom = sqrt(v) + eps                        (amsgrad: sqrt(max(v_max, v)) + eps)
        p     = p - lr * sqrt(1 - b2**t) / (1 - b1**t) * (wd * p + m / denom)

    The weight decay is multiplied by the bias-corrected step size, and eps is added to the
    uncorrected sqrt(v); ``torch.optim.AdamW`` does neither (it decays by ``lr * wd``), so the two
    give different weights. State names are torch's and upstream's: ``step``, ``exp_avg``,
    ``exp_avg_sq`` and, with amsgrad, ``max_exp_avg_sq``.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        _check_hyperparameters(lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in _params_with_grad(group, "AdamW"):
                grad = p.grad
                state = self.state[p]
                _init_adam_state(state, p)
                if group["amsgrad"] and "max_exp_avg_sq" not in state:
                    state["max_exp_avg_sq"] = torch.zeros_like(p)
                step = _step_counter(state).add_(1)
                t = int(step)  # a CPU tensor: no device sync
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["amsgrad"]:
                    max_sq = state["max_exp_avg_sq"]
                    torch.maximum(max_sq, exp_avg_sq, out=max_sq)
                    denom = max_sq.sqrt().add_(group["eps"])
                else:
                    denom = exp_avg_sq.sqrt().add_(group["eps"])
                step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                direction = torch.mul(p, group["weight_decay"]).addcdiv_(exp_avg, denom)
                p.add_(direction, alpha=-step_size)
        return loss


# ---------------------------------------------------------------------------------------------
# LAMB (You et al. 2019, https://arxiv.org/abs/1904.00962), as apex FusedLAMB computes it


class Lamb(Optimizer):
    """LAMB as apex ``FusedLAMB`` runs it with its defaults (``adam_w_mode=True``,
    ``grad_averaging=True``, ``bias_correction=True``, ``max_grad_norm=1.0``,
    ``use_nvlamb=False``); the constructor defaults are QuartzNet's ``lamb98`` (betas (0.9, 0.98),
    eps 1e-9). At step t, with G the gradients of ALL parameters of all groups::

        c     = ||G|| / max_grad_norm   if ||G|| > max_grad_norm   else 1      (global clipping)
        g^    = g / c
        m     = b1 * m + (1 - b1) * g^
        v     = b2 * v + (1 - b2) * g^ * g^
        u     = (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps) + wd * p     (decoupled decay)
        r     = ||p|| / ||u||   if wd != 0 and both norms > 0   else 1          (per tensor)
        p     = p - lr * r * u

    As in apex, the trust ratio r applies only to groups with non-zero weight decay (apex's
    ``use_nvlamb=False``), and ||p|| is taken before the update. ``max_grad_norm=None`` (or <= 0)
    turns the clipping off. Differences from apex: the state is per parameter (``step``,
    ``exp_avg``, ``exp_avg_sq``, as torch's optimizers keep it; apex kept ``step`` in the group),
    and the arithmetic runs in the parameters' dtype (apex: fp32). The per-tensor trust ratios
    reach the kernels as Python floats: one host sync per step.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-9,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
    ) -> None:
        _check_hyperparameters(lr, betas, eps, weight_decay)
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate_closure(closure)
        work = [
            (group, params)
            for group in self.param_groups
            for params in _buckets(_params_with_grad(group, "Lamb"))
        ]
        if not work:
            return loss
        global_norm = self._global_grad_norm([params for _, params in work])
        for group, params in work:
            self._update_bucket(group, params, global_norm)
        return loss

    @staticmethod
    def _global_grad_norm(buckets: list[list[torch.Tensor]]) -> torch.Tensor:
        # fp32 at least (apex sums in fp32), fp64 when the parameters are fp64.
        dtype = torch.float64 if any(ps[0].dtype == torch.float64 for ps in buckets) else None
        total = torch.zeros((), dtype=dtype or torch.float32, device=buckets[0][0].device)
        for params in buckets:
            norms = torch.stack(torch._foreach_norm([p.grad for p in params]))
            total = total + norms.to(total).square().sum()
        return total.sqrt()

    def _update_bucket(
        self, group: dict[str, Any], params: list[torch.Tensor], global_norm: torch.Tensor
    ) -> None:
        beta1, beta2 = group["betas"]
        wd = group["weight_decay"]
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            _init_adam_state(state, p)
        steps = [_step_counter(s) for s in states]
        torch._foreach_add_(steps, 1)
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]

        grads = [p.grad for p in params]
        max_norm = group["max_grad_norm"]
        if max_norm is not None and max_norm > 0:
            norm = global_norm.to(device=params[0].device, dtype=params[0].dtype)
            clip = torch.where(norm > max_norm, norm / max_norm, torch.ones_like(norm))
            grads = torch._foreach_div(grads, clip)

        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)

        bias1 = [1 - beta1 ** int(t) for t in steps]
        bias2 = [1 - beta2 ** int(t) for t in steps]
        updates = torch._foreach_div(exp_avgs, bias1)
        denoms = torch._foreach_div(exp_avg_sqs, bias2)
        torch._foreach_sqrt_(denoms)
        torch._foreach_add_(denoms, group["eps"])
        torch._foreach_div_(updates, denoms)
        if wd != 0:
            torch._foreach_add_(updates, params, alpha=wd)
            p_norms = torch.stack(torch._foreach_norm(params))
            u_norms = torch.stack(torch._foreach_norm(updates))
            usable = (p_norms > 0) & (u_norms > 0)
            ratios = torch.where(usable, p_norms / u_norms, torch.ones_like(p_norms))
            torch._foreach_mul_(updates, ratios.tolist())
        torch._foreach_add_(params, updates, alpha=-group["lr"])


# ---------------------------------------------------------------------------------------------


def parameter_groups(model: nn.Module, decay_norm_and_bias: bool = True) -> list[dict[str, Any]]:
    """The model's parameters as optimizer groups. ``decay_norm_and_bias=False`` puts the
    normalisation weights and every bias (the 1-D parameters) in a second group without weight
    decay, as most recipes since BERT do; upstream decays every tensor (the default)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params}]
    return [
        {"params": [p for p in params if p.ndim > 1]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def build_optimizer(
    name: str, params: Params, lr: float, weight_decay: float, **kw: Any
) -> torch.optim.Optimizer:
    """The optimizer called ``name`` with the recipe's settings; ``kw`` overrides them.

    ``novograd``: betas (0.95, 0), eps 1e-8 (Jasper's default); ``fused_novograd``: the same,
    fused (QuartzNet's default); ``adamw``: betas (0.9, 0.999), eps 1e-8; ``lamb`` or ``lamb98``:
    betas (0.9, 0.98), eps 1e-9, gradients clipped to a global norm of 1. One param group, weight
    decay on every tensor, as upstream.
    """
    classes: dict[str, type[Optimizer]] = {
        "novograd": Novograd,
        "fused_novograd": FusedNovograd,
        "adamw": AdamW,
        "lamb": Lamb,
        "lamb98": Lamb,
    }
    cls = classes.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZER_NAMES)}")
    return cls(params, lr=lr, weight_decay=weight_decay, **kw)


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule (upstream common/optimizers.py lr_policy)


@dataclass(frozen=True)
class LRSchedule:
    """Warmup, hold and decay of the learning rate (upstream's ``lr_policy`` keywords).

    ``steps_per_epoch`` optimizer steps make an epoch; ``warmup_epochs`` and ``hold_epochs`` may be
    fractional; ``policy`` is one of :data:`LR_POLICIES`, ``order`` one of :data:`LR_ORDERS` (see
    :func:`lr_for_step`); the LR never goes below ``min_lr``.
    """

    steps_per_epoch: int
    warmup_epochs: float
    hold_epochs: float
    num_epochs: int
    policy: str = "exponential"
    exp_gamma: float = 0.99
    min_lr: float = 1e-5
    order: str = "published"

    def __post_init__(self) -> None:
        if self.policy not in LR_POLICIES:
            raise ValueError(
                f"unknown lr policy {self.policy!r}; choose one of {', '.join(LR_POLICIES)}"
            )
        if self.order not in LR_ORDERS:
            raise ValueError(
                f"unknown lr order {self.order!r}; choose one of {', '.join(LR_ORDERS)}"
            )


def lr_policy(step: int, epoch: int, initial_lr: float, schedule: LRSchedule) -> float:
    """Upstream's ``lr_policy`` value for 1-based optimizer ``step`` in 1-based ``epoch``::

        W = warmup_epochs * steps_per_epoch,  H = hold_epochs * steps_per_epoch
        a = (step + 1) / (W + 1)                              if step < W      (warmup)
        a = 1                                                 elif step < W + H  (hold)
        exponential:  a = exp_gamma ** (epoch - warmup_epochs - hold_epochs)
        legacy:       a = ((E*spe - step) / (E*spe - W - H)) ** 2    (E = num_epochs)
        cosine:       a = (1 + cos(pi * (step - W - H) / (E*spe - W - H))) / 2
        lr = max(a * initial_lr, min_lr)

    ``cosine`` is not upstream's: it decays per step and keeps the LR higher for longer than
    ``legacy``, which suits short runs (the quick start trains for minutes).

    The exponential decay is piecewise constant per epoch. With the recipe (lr 0.01, gamma
    0.981, 2 + 140 epochs of 544 steps) epoch 143 gets 9.81e-3 and epoch 440 3.29e-5. Which step
    gets which value depends on when the LR is set: see ``lr_for_step``. Beyond ``num_epochs`` the
    legacy factor stays 0 (upstream's formula would grow again; it never got there).
    """
    s = schedule
    warmup_steps = s.warmup_epochs * s.steps_per_epoch
    hold_steps = s.hold_epochs * s.steps_per_epoch
    total_steps = s.num_epochs * s.steps_per_epoch
    if step < warmup_steps:
        a = (step + 1) / (warmup_steps + 1)
    elif step < warmup_steps + hold_steps:
        a = 1.0
    elif s.policy == "exponential":
        a = s.exp_gamma ** (epoch - s.warmup_epochs - s.hold_epochs)
    elif s.policy == "cosine":
        decay_steps = total_steps - warmup_steps - hold_steps
        done = min(max(step - warmup_steps - hold_steps, 0) / max(decay_steps, 1), 1.0)
        a = 0.5 * (1.0 + math.cos(math.pi * done))
    else:
        decay_steps = total_steps - warmup_steps - hold_steps
        a = (max(total_steps - step, 0) / decay_steps) ** 2 if decay_steps > 0 else 0.0
    return max(a * initial_lr, s.min_lr)


def lr_for_step(step: int, initial_lr: float, schedule: LRSchedule) -> float:
    """The LR that optimizer step ``step`` (1-based, global) runs at, in one of two orders.

    - ``"published"`` (default): the code that trained the published checkpoints (before
      Nov 2021) set the LR at the start of each step, so step s runs at ``lr_policy(s)`` and the
      warmup starts at ``initial_lr * 2 / (W + 1)`` (docs/upstream.md#step-order).
    - ``"upstream-current"``: upstream's current ``train.py`` sets the LR after
      ``optimizer.step()``, so step 1 runs at the optimizer's initial (peak) ``initial_lr`` and
      step k > 1 at ``lr_policy(k - 1)``, evaluated in the epoch of step k - 1
      (docs/upstream.md#u10).

    The epoch is derived from the step as ``(s - 1) // steps_per_epoch + 1``, i.e. epochs of
    exactly ``steps_per_epoch`` optimizer steps, as the training loop counts them.
    """
    policy_step = step if schedule.order == "published" else step - 1
    if policy_step < 1:
        return initial_lr
    epoch = (policy_step - 1) // schedule.steps_per_epoch + 1
    return lr_policy(policy_step, epoch, initial_lr, schedule)


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set ``lr`` in every param group (upstream's schedule drives all groups alike)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------------------------------------
# Weight EMA (upstream train.py apply_ema)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose ``state_dict`` keys match the EMA copy: DDP/DataParallel and
    ``torch.compile`` wrappers add a prefix to every key."""
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def make_ema_model(model: nn.Module) -> nn.Module:
    """A plain copy of ``model`` (unwrapped) to hold the EMA weights, as upstream's ``deepcopy``:
    its ``state_dict`` is what checkpoints store as ``ema_state_dict``. Gradients are off."""
    return copy.deepcopy(_unwrap(model)).requires_grad_(False)


@torch.no_grad()
def apply_ema(model: nn.Module, ema_model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for every floating-point ``state_dict`` entry
    of ``ema_model``, after every optimizer step, as upstream's ``train.py apply_ema``; ``decay == 0``
    does nothing.

    As upstream, this covers BatchNorm running means and variances too, so the EMA model's BN
    statistics are an EMA of the running statistics, not recomputed (docs/upstream.md#u12). Integer
    buffers (``num_batches_tracked``) are copied from the model: upstream blended them as floats and
    truncated the result on copy, which kept the EMA count at 0; the count only matters to
    BatchNorm with ``momentum=None``, which no config uses. The float entries are updated with
    two ``torch._foreach_*`` calls.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    if decay == 0:
        return
    model_state = _unwrap(model).state_dict()
    ema_floats, model_floats = [], []
    for key, ema_value in ema_model.state_dict().items():
        value = model_state[key]
        if ema_value.is_floating_point():
            ema_floats.append(ema_value)
            model_floats.append(value)
        else:
            ema_value.copy_(value)
    if ema_floats:
        torch._foreach_mul_(ema_floats, decay)
        torch._foreach_add_(ema_floats, model_floats, alpha=1 - decay)
