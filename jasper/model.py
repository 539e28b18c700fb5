"""Jasper and QuartzNet: convolutional CTC acoustic models, in one file.

Jasper: Li et al. 2019, "Jasper: An End-to-End Convolutional Neural Acoustic Model",
https://arxiv.org/abs/1904.03288 (10x5 blocks with dense residuals; upstream jasper/model.py).
QuartzNet: Kriman et al. 2019, "QuartzNet: Deep Automatic Speech Recognition with 1D Time-Channel
Separable Convolutions", https://arxiv.org/abs/1910.10261 (upstream QuartzNet's quartznet/model.py).

Shape legend: B = batch, C = channels, T = frames, K = output classes (labels + blank).
Features come in as (B, C=n_mels, T) with their valid lengths; every convolution zeroes the frames
past the lengths of its input first ("masked" convolution), so a padded batch gives each utterance
the same outputs it gets alone. Upstream builds that mask in every convolution (about 110 times per
step for Jasper 10x5dr, counting the dense-residual branches) and recomputes the lengths there;
here a block builds it once for the lengths all its convolutions share (they change only in a
strided convolution) and length-preserving convolutions pass their lengths through: the same
zeros, far fewer small kernels on a GPU (:func:`padding_mask`). The model returns per-frame log-probabilities (B, T_enc, K) and the
encoder lengths; the CTC blank is the last class.

state_dict keys are upstream's exactly (docs/upstream.md#model-and-checkpoints):
``encoder.layers.{b}.conv.{i}`` (Jasper) or ``encoder.layers.{b}.mconv.{i}`` (QuartzNet),
``encoder.layers.{b}.res.{pane}.{0|1}``, ``decoder.layers.0``; so NGC checkpoints load unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "hardtanh": lambda: nn.Hardtanh(0.0, 20.0, inplace=True),
    "selu": lambda: nn.SELU(inplace=True),
}
BN_EPS, BN_MOMENTUM = 1e-3, 0.1  # upstream's BatchNorm1d settings


def init_weights(module: nn.Module, mode: str = "xavier_uniform") -> None:
    """Upstream's init: conv weights by ``mode``, BatchNorm to identity; conv biases keep PyTorch's."""
    if isinstance(module, nn.Conv1d):
        if mode == "xavier_uniform":
            nn.init.xavier_uniform_(module.weight, gain=1.0)
        elif mode == "xavier_normal":
            nn.init.xavier_normal_(module.weight, gain=1.0)
        elif mode == "kaiming_uniform":
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
        elif mode == "kaiming_normal":
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        else:
            raise ValueError(f"unknown init mode {mode!r}")
    elif isinstance(module, nn.BatchNorm1d) and module.track_running_stats:
        module.reset_running_stats()
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def same_padding(kernel_size: int, stride: int, dilation: int) -> int:
    if stride > 1 and dilation > 1:
        raise ValueError("'same' padding with both stride > 1 and dilation > 1 is not supported")
    return (kernel_size // 2) * dilation


def padding_mask(lens: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, 1, frames) bool, True at the padding: frame t >= lens[b]."""
    return (torch.arange(frames, device=lens.device)[None, :] >= lens[:, None]).unsqueeze(1)


class MaskedConv1d(nn.Conv1d):
    """Conv1d whose ``forward(x, x_lens, pad=None) -> (y, y_lens)`` zeroes input frames at
    t >= x_lens first (when ``masked``; ``pad``: that :func:`padding_mask`, when the caller has it)
    and returns the output lengths ``floor((L + 2p - d(k-1) - 1) / s) + 1`` -- ``x_lens`` itself
    when the convolution preserves lengths (stride 1, "same" padding)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        masked: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        self.masked = masked

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        k, s, p, d = self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]
        if s == 1 and 2 * p == d * (k - 1):
            return lens
        return torch.div(lens + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1

    def forward(
        self, x: torch.Tensor, x_lens: torch.Tensor, pad: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.masked:
            x = x.masked_fill(padding_mask(x_lens, x.size(2)) if pad is None else pad, 0.0)
        return super().forward(x), self.output_lengths(x_lens)


def upstream_masked_conv(
    conv: MaskedConv1d, x: torch.Tensor, x_lens: torch.Tensor, pad: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's MaskedConv1d.forward (jasper/model.py in DeepLearningExamples): a mask of its
    own in every convolution (``pad`` is ignored) and the lengths recomputed, for the side-by-side
    measurement (bench/train_speed.py) and the test that :class:`MaskedConv1d` computes the same."""
    if conv.masked:
        frames = torch.arange(x.size(2), device=x.device)
        x = x.masked_fill((frames[None, :] >= x_lens[:, None]).unsqueeze(1), 0.0)
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    lens = torch.div(x_lens + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1
    return nn.Conv1d.forward(conv, x), lens


class GroupShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups (ShuffleNet), so grouped convs mix groups."""

    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        self.groups, self.channels_per_group = groups, channels // groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t = x.shape
        x = x.view(b, self.groups, self.channels_per_group, t).transpose(1, 2)
        return x.reshape(b, -1, t)


def make_norm(kind: str, channels: int, norm_groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    if kind == "group":
        return nn.GroupNorm(norm_groups if norm_groups > 0 else channels, channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"unknown normalization {kind!r}: use batch, group, instance or layer")


class JasperBlock(nn.Module):
    """``repeat`` sub-blocks of conv -> norm -> activation -> dropout, with residual branches.

    A sub-block's conv is one masked conv, or (``separable``) a depthwise conv (k, groups=C) then a
    pointwise 1x1 conv. In the last sub-block the activation and dropout come after the residual sum.
    Residual branches are 1x1 conv + norm, one per entry of ``residual_panes`` (dense residual: the
    channel counts of the prologue output and of every earlier dense block's output), or a single
    branch from this block's input when ``residual_panes`` is empty.

    ``forward(xs, lens)``: ``xs`` is the list of earlier outputs the residual panes read (the main
    path starts from ``xs[-1]``); returns ``(xs + [out] if dense else [out], out_lens)``.
    """

    def __init__(
        self,
        infilters: int,
        filters: int,
        repeat: int = 3,
        kernel_size: Sequence[int] | int = 11,
        stride: Sequence[int] | int = 1,
        dilation: Sequence[int] | int = 1,
        padding: str = "same",
        dropout: float = 0.2,
        activation: str = "hardtanh",
        residual: bool = True,
        residual_panes: Sequence[int] = (),
        use_conv_masks: bool = False,
        separable: bool = False,
        groups: int = 1,
        kernel_size_factor: float = 1.0,
        normalization: str = "batch",
        norm_groups: int = -1,
        layout: str = "jasper",
    ) -> None:
        super().__init__()
        if padding != "same":
            raise ValueError(f"padding={padding!r}: only 'same' is supported")
        k = _first(kernel_size)
        if kernel_size_factor != 1.0:  # QuartzNet: scale k and keep it odd
            k = max(int(k * kernel_size_factor), 1)
            k += 1 - k % 2
        s, d = _first(stride), _first(dilation)
        pad = same_padding(k, s, d)
        self.dense = len(residual_panes) > 0
        # QuartzNet (and NeMo) name the sub-block list ``mconv`` and the tail ``mout``.
        self.conv_name, self.out_name = (
            ("mconv", "mout") if layout == "quartznet" else ("conv", "out")
        )

        def conv_norm(cin: int, cout: int, kk: int, ss: int, dd: int, pp: int, sep: bool) -> list:
            if sep:
                convs = [
                    MaskedConv1d(cin, cin, kk, ss, pp, dd, groups=cin, masked=use_conv_masks),
                    MaskedConv1d(cin, cout, 1, groups=groups, masked=use_conv_masks),
                ]
            else:
                convs = [
                    MaskedConv1d(cin, cout, kk, ss, pp, dd, groups=groups, masked=use_conv_masks)
                ]
            shuffle = [GroupShuffle(groups, cout)] if groups > 1 else []
            return convs + [make_norm(normalization, cout, norm_groups)] + shuffle

        layers: list[nn.Module] = []
        cin = infilters
        for i in range(repeat):
            layers += conv_norm(cin, filters, k, s, d, pad, separable)
            if i < repeat - 1:
                layers += [ACTIVATIONS[activation](), nn.Dropout(dropout)]
            cin = filters
        self.add_module(self.conv_name, nn.ModuleList(layers))

        self.res: nn.ModuleList | None = None
        if residual:
            panes = list(residual_panes) or [infilters]
            self.res = nn.ModuleList(
                nn.ModuleList(conv_norm(ip, filters, 1, 1, 1, 0, False)) for ip in panes
            )
        self.add_module(
            self.out_name, nn.Sequential(ACTIVATIONS[activation](), nn.Dropout(dropout))
        )

    @staticmethod
    def _run(
        layers: nn.ModuleList, x: torch.Tensor, lens: torch.Tensor, pad: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``layers`` in order; ``pad``: the padding mask of ``lens`` (None: each conv makes its
        own), valid until a conv changes the lengths."""
        for layer in layers:
            if isinstance(layer, MaskedConv1d):
                x, out_lens = layer(x, lens, pad)
                if out_lens is not lens:
                    pad = None
                lens = out_lens
            else:
                x = layer(x)
        return x, lens

    def forward(
        self, xs: list[torch.Tensor], lens: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = xs[-1]
        convs = self._modules[self.conv_name]
        # One padding mask for every conv that reads frames of these lengths (xs all share them);
        # a block's convs are masked or not together (use_conv_masks, jasper.prepare).
        pad = padding_mask(lens, x.size(2)) if convs[0].masked else None
        out, out_lens = self._run(convs, x, lens, pad)
        if self.res is not None:
            for i, branch in enumerate(self.res):
                out = out + self._run(branch, xs[i], lens, pad)[0]
        out = self._modules[self.out_name](out)
        return (xs + [out] if self.dense else [out]), out_lens


def _first(value: Sequence[int] | int) -> int:
    """YAML gives kernel_size/stride/dilation as one-element lists; only the first entry is used."""
    return int(value[0]) if isinstance(value, Sequence) else int(value)


class JasperEncoder(nn.Module):
    """The block stack. ``blocks`` are dicts of :class:`JasperBlock` arguments (YAML entries), plus
    ``residual_dense``; they are copied, never modified, so one config builds identical models."""

    def __init__(
        self,
        in_feats: int,
        activation: str,
        frame_splicing: int = 1,
        init: str = "xavier_uniform",
        use_conv_masks: bool = False,
        blocks: Sequence[dict] = (),
        layout: str = "jasper",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: use one of {sorted(ACTIVATIONS)}")
        self.layers = nn.ModuleList()
        in_channels = in_feats * frame_splicing
        dense_panes: list[int] = []
        for block in blocks:
            kw = copy.deepcopy(dict(block))
            dense = kw.pop("residual_dense", False)
            if dense:
                dense_panes.append(in_channels)
            self.layers.append(
                JasperBlock(
                    in_channels,
                    activation=activation,
                    residual_panes=list(dense_panes) if dense else [],
                    use_conv_masks=use_conv_masks,
                    layout=layout,
                    **kw,
                )
            )
            in_channels = kw["filters"]
        self.out_channels = in_channels
        self.apply(lambda m: init_weights(m, init))

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs = [x]
        for layer in self.layers:
            xs, lens = layer(xs, lens)
        return xs[-1], lens

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        """Encoder frames for ``lens`` feature frames (the length rule of every conv in order)."""
        for block in self.layers:
            for layer in block._modules[block.conv_name]:
                if isinstance(layer, MaskedConv1d):
                    lens = layer.output_lengths(lens)
        return lens


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16/fp32 -> fp32; fp64 stays fp64 (training in float64 for exact comparisons)."""
    return x if x.dtype == torch.float64 else x.float()


class JasperDecoderForCTC(nn.Module):
    """1x1 conv classifier: (B, C, T) -> log-probabilities (B, T, K), computed in fp32."""

    def __init__(self, in_feats: int, n_classes: int, init: str = "xavier_uniform") -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv1d(in_feats, n_classes, kernel_size=1, bias=True))
        self.apply(lambda m: init_weights(m, init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.layers(x).transpose(1, 2)
        return nn.functional.log_softmax(at_least_fp32(logits), dim=-1)


class Jasper(nn.Module):
    """Encoder + CTC classifier. ``forward(feats (B, C, T), feat_lens (B,))`` returns
    ``(log_probs (B, T_enc, K) float32, enc_lens (B,) int64)`` with or without conv masks."""

    def __init__(self, encoder_kw: dict, decoder_kw: dict) -> None:
        super().__init__()
        self.encoder = JasperEncoder(**encoder_kw)
        self.decoder = JasperDecoderForCTC(**decoder_kw)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc, enc_lens = self.encoder(x, x_lens.to(torch.int64))
        return self.decoder(enc), enc_lens


class CTCLoss(nn.Module):
    """CTC loss in fp32 with the blank as the last class, averaged over the batch without dividing
    by target length (upstream's ``CTCLossNM``). ``zero_infinity`` is off as upstream; the training
    loop skips non-finite losses instead."""

    def __init__(self, n_classes: int, zero_infinity: bool = False) -> None:
        super().__init__()
        self.blank = n_classes - 1
        self.loss = nn.CTCLoss(blank=self.blank, reduction="none", zero_infinity=zero_infinity)

    def per_utterance(
        self,
        log_probs: torch.Tensor,
        targets: torch.Tensor,
        input_lens: torch.Tensor,
        target_lens: torch.Tensor,
    ) -> torch.Tensor:
        """Loss of each utterance (B,) from ``log_probs (B, T, K)``."""
        # nn.CTCLoss wants (T, B, K) log-probs.
        return self.loss(
            at_least_fp32(log_probs).transpose(0, 1),
            targets.long(),
            input_lens.long(),
            target_lens.long(),
        )

    def forward(
        self,
        log_probs: torch.Tensor,
        targets: torch.Tensor,
        input_lens: torch.Tensor,
        target_lens: torch.Tensor,
    ) -> torch.Tensor:
        return self.per_utterance(log_probs, targets, input_lens, target_lens).mean()


def greedy_decode(log_probs: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
    """Per-frame argmax ids (B, T) int32; frames at or past ``lens`` are set to the blank (last class)
    so that padding never decodes to a symbol. Collapse with :func:`common.metrics.ctc_collapse`."""
    ids = log_probs.argmax(dim=-1).to(torch.int32)
    if lens is not None:
        frames = torch.arange(ids.size(1), device=ids.device)
        ids = ids.masked_fill(frames[None, :] >= lens[:, None], log_probs.size(-1) - 1)
    return ids


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def receptive_field(model: nn.Module) -> tuple[int, int]:
    """``(half_width, stride)`` in feature frames: how far an encoder output frame looks to each
    side along the main path (residual branches are 1x1 and never look further), and the product
    of the strides."""
    span, jump = 0, 1
    for module in model.modules():
        if isinstance(module, MaskedConv1d):
            k, s, d = module.kernel_size[0], module.stride[0], module.dilation[0]
            span += (k - 1) * d * jump
            jump *= s
    return (span + 1) // 2, jump
