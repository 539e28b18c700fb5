"""Inference-time preparation of a trained model: the same outputs, computed faster.

Each option is independent, switchable and measurable on its own (``inference.py`` flags,
``bench/cpu_rtf.py``). None changes what the model computes on valid frames beyond floating-point
rounding (fp32: log-probs within 1e-4; fp16/bf16: the same greedy transcripts on real speech):

- ``fold_batchnorm``: in eval mode BatchNorm is the per-channel affine map
  ``y = (x - mean) / sqrt(var + eps) * gamma + beta``; folded into the convolution before it
  (weights scaled per output channel, a bias added), one pass over the activations disappears.
  Frames past the lengths change too, which is harmless: every convolution zeroes them again.
- ``skip_masks``: when every utterance of a batch has the same length (batch 1, or a fixed-duration
  benchmark batch), the frames past it are padding only (the features are padded to a multiple of
  16); they are cut off, after which every length equals the padded length, zeroing "frames past
  the length" zeroes nothing, and the masks are not computed. Valid outputs are unchanged because
  masked convolutions see zeros past the lengths either way; the log-probs then end at the last
  valid encoder frame. Upstream ran every mask always. (Models built without masks keep their
  padding: their outputs depend on it.)
- ``compile``: ``torch.compile`` of the forward pass for fixed shapes (one graph per input shape;
  on the CPU with weight freezing, so oneDNN gets pre-packed weights).
- ``cuda_graphs``: the forward pass recorded once per input shape as a CUDA graph and replayed, so
  kernel-launch overhead disappears (it dominates small batches on fast GPUs).
- ``fft_convs``: the long stride-1 convolutions computed by overlap-save FFT with precomputed
  kernel spectra (:class:`FFTConv1d`): 3 to 6 times fewer flops, about 3 times the weights'
  memory. A CPU lever (GPUs run direct half-precision convolutions faster); float32 inside.
- ``dtype``: the weights cast to fp16 or bf16 after folding (upstream: ``.half()``); the
  classifier's log-softmax still runs in fp32.

The prepared module is for inference only: its state_dict no longer matches the checkpoint layout.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from jasper.model import Jasper, JasperBlock, MaskedConv1d

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class SpeedOptions:
    """What :func:`prepare` does. The defaults are the options that cost nothing up front."""

    fold_batchnorm: bool = True
    skip_masks: bool = True
    compile: bool = False
    cuda_graphs: bool = False
    fft_convs: bool = False
    dtype: torch.dtype = torch.float32

    @classmethod
    def upstream(cls, dtype: torch.dtype = torch.float32) -> SpeedOptions:
        """Upstream's forward: eager, masks always on, no fusion (``.half()`` for fp16)."""
        return cls(fold_batchnorm=False, skip_masks=False, dtype=dtype)


def _fold(conv: nn.Conv1d, bn: nn.BatchNorm1d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` (in place), in float64 so that folding adds no error."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() * scale[:, None, None]
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm1d that directly follows a convolution into it; returns how many.

    Works on :class:`JasperBlock` layer lists (sub-blocks and residual branches, Jasper and
    QuartzNet layouts). The BatchNorm becomes ``nn.Identity``. Only valid in eval mode: the folded
    model uses the running statistics, as eval-mode BatchNorm does.
    """
    if model.training:
        raise ValueError(
            "fold_batchnorm needs a model in eval mode (it bakes in running statistics)"
        )
    folded = 0
    for block in model.modules():
        if not isinstance(block, JasperBlock):
            continue
        layer_lists = [block._modules[block.conv_name]] + (
            list(block.res) if block.res is not None else []
        )
        for layers in layer_lists:
            for i in range(1, len(layers)):
                bn, conv = layers[i], layers[i - 1]
                if (
                    isinstance(bn, nn.BatchNorm1d)
                    and isinstance(conv, nn.Conv1d)
                    and bn.track_running_stats
                ):
                    _fold(conv, bn)
                    layers[i] = nn.Identity()
                    folded += 1
    return folded


class FFTConv1d(MaskedConv1d):
    """A stride-1, "same"-padded :class:`MaskedConv1d` computed by overlap-save FFT convolution.

    Direct convolution costs ``2 * C_in * k`` flops per output value; with the kernel's spectrum
    precomputed on blocks of ``n_fft`` frames it costs about ``8 * C_in * (n_fft/2 + 1) / L``,
    where ``L = n_fft - span + 1`` outputs per block (``span = d * (k - 1) + 1``): for Jasper's
    kernels (11..29 taps) 3 to 6 times fewer. The product of spectra is one batched complex
    matrix product per frequency bin. The results equal direct convolution up to float32 rounding
    (about 1e-6 relative per layer). The spectra take ``2 * (n_fft/2 + 1) / k`` times the memory of
    the weights (about 3 times for Jasper); the weights themselves are dropped.

    Masking and output lengths are :class:`MaskedConv1d`'s (only the convolution is replaced).
    """

    def __init__(self, conv: MaskedConv1d, n_fft: int | None = None) -> None:
        k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        if s != 1 or conv.groups != 1 or conv.padding[0] != (k // 2) * d or k % 2 == 0:
            raise ValueError("FFTConv1d needs a stride-1, ungrouped, odd-kernel 'same' convolution")
        with torch.device("meta"):  # the direct weights are replaced: never allocate them
            super().__init__(
                conv.in_channels, conv.out_channels, k, 1, conv.padding[0], d, 1,
                bias=conv.bias is not None, masked=conv.masked,
            )  # fmt: skip
        self.span = d * (k - 1) + 1
        # Blocks of about twice the span: fewer flops with longer blocks, but more spectrum memory
        # (and memory traffic) per weight; twice the span was the best balance measured on CPUs.
        self.n_fft = n_fft or 2 ** math.ceil(math.log2(2 * self.span))
        if self.n_fft <= self.span:
            raise ValueError(f"n_fft={self.n_fft} must exceed the kernel span {self.span}")
        # Correlation (what nn.Conv1d computes) = convolution with the reversed, dilated kernel.
        weight = conv.weight.detach().float()
        taps = weight.new_zeros(*weight.shape[:2], self.n_fft)
        taps[..., : self.span : d] = weight.flip(-1)
        spectrum = torch.fft.rfft(taps).permute(2, 0, 1).contiguous()  # (bins, C_out, C_in)
        del self.weight
        self.register_parameter("weight", None)
        self.register_buffer("spectrum", spectrum)
        self.bias = None
        if conv.bias is not None:
            self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def _conv_forward(self, x: torch.Tensor, weight, bias) -> torch.Tensor:
        batch, _, frames = x.shape
        dtype = x.dtype  # half-precision models: the FFTs run in float32
        hop = self.n_fft - self.span + 1  # valid outputs per block
        n_blocks = math.ceil(frames / hop)
        pad = self.padding[0]
        # Block b reads padded frames [b * hop, b * hop + n_fft); its last `hop` circular-conv
        # outputs are the linear ones (overlap-save).
        x = nn.functional.pad(x.float(), (pad, (n_blocks - 1) * hop + self.n_fft - frames - pad))
        blocks = torch.fft.rfft(x.unfold(-1, self.n_fft, hop), dim=-1)  # (B, C_in, blocks, bins)
        bins = blocks.size(-1)
        blocks = blocks.permute(3, 1, 0, 2).reshape(bins, -1, batch * n_blocks)
        y = torch.bmm(self.spectrum, blocks)  # (bins, C_out, B * blocks)
        y = y.reshape(bins, -1, batch, n_blocks).permute(2, 1, 3, 0)
        y = torch.fft.irfft(y, n=self.n_fft, dim=-1)[..., self.span - 1 :]
        y = y.reshape(batch, -1, n_blocks * hop)[..., :frames]
        if bias is not None:
            y = y + bias.float()[None, :, None]
        return y.to(dtype)


def use_fft_convs(model: nn.Module, min_span: int = 9) -> int:
    """Replace every stride-1 "same" :class:`MaskedConv1d` whose kernel spans at least
    ``min_span`` frames by an :class:`FFTConv1d` (in place); returns how many."""
    replaced = 0
    for block in model.modules():
        if not isinstance(block, JasperBlock):
            continue
        layers = block._modules[block.conv_name]
        for i, conv in enumerate(layers):
            if (
                type(conv) is MaskedConv1d
                and conv.stride[0] == 1
                and conv.groups == 1
                and conv.dilation[0] * (conv.kernel_size[0] - 1) + 1 >= min_span
            ):
                layers[i] = FFTConv1d(conv)
                replaced += 1
    return replaced


def masked_convs(model: nn.Module) -> list[MaskedConv1d]:
    """The convolutions that zero frames past the lengths (all of them with ``use_conv_masks``)."""
    return [m for m in model.modules() if isinstance(m, MaskedConv1d) and m.masked]


class _CudaGraphs:
    """Replays one CUDA graph per (input shape, dtype, masks on/off). Inputs are copied into the
    graph's static buffers; outputs are cloned, so a later replay does not overwrite them."""

    def __init__(self, forward) -> None:
        self.forward = forward
        self.graphs: dict[tuple, tuple] = {}

    def __call__(self, x: torch.Tensor, lens: torch.Tensor, masked: bool):
        key = (tuple(x.shape), x.dtype, lens.dtype, masked)
        if key not in self.graphs:
            static_x, static_lens = x.clone(), lens.clone()
            # Warm up on a side stream (cuDNN autotuning, lazy init) before capturing.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.forward(static_x, static_lens)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # a private memory pool per graph
                out = self.forward(static_x, static_lens)
            self.graphs[key] = (graph, static_x, static_lens, out)
        graph, static_x, static_lens, out = self.graphs[key]
        static_x.copy_(x)
        static_lens.copy_(lens)
        graph.replay()
        return tuple(t.clone() for t in out)


class InferenceModel(nn.Module):
    """A prepared model: ``forward(feats (B, C, T), feat_lens (B,))`` returns
    ``(log_probs (B, T_enc, K) float32, enc_lens (B,) int64)``, as :class:`jasper.model.Jasper`.

    Features may come in any float dtype; they are cast to the model's dtype here.
    """

    def __init__(self, model: Jasper, options: SpeedOptions) -> None:
        super().__init__()
        self.model = model
        self.options = options
        self.dtype = options.dtype
        self._masked = masked_convs(model)
        self._forward = model.forward
        if options.compile:
            self._forward = _compile(model)
        self._graphs = _CudaGraphs(self._forward) if options.cuda_graphs else None

    def _set_masks(self, enabled: bool) -> None:
        for conv in self._masked:
            conv.masked = enabled

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lens = x.to(self.dtype), lens.to(torch.int64)
        unpadded = False
        if self.options.skip_masks and self._masked:
            # One host sync. When every utterance has the same length, the frames past it are
            # padding that the masks would zero before every conv: cutting them off gives the same
            # valid outputs, and with nothing left to zero the masks are skipped.
            shortest, longest = torch.stack(torch.aminmax(lens)).tolist()
            if shortest == longest:
                x, unpadded = x[:, :, :longest], True
        if unpadded:
            self._set_masks(False)
        try:
            if self._graphs is not None and x.is_cuda:
                return self._graphs(x, lens, masked=not unpadded)
            return self._forward(x, lens)
        finally:
            if unpadded:
                self._set_masks(True)


def _compile(model: nn.Module):
    """``torch.compile`` for fixed shapes; on the CPU with frozen (pre-packed) weights."""
    if next(model.parameters()).device.type == "cpu":
        import torch._inductor.config as inductor_config

        # Freezing treats the weights as constants, so oneDNN convolutions get their weights
        # reordered once at compile time instead of on every call.
        inductor_config.freezing = True
    return torch.compile(model, dynamic=False)


def prepare(
    model: Jasper, options: SpeedOptions | None = None, *, inplace: bool = False
) -> InferenceModel:
    """An eval-mode :class:`InferenceModel` of ``model`` with ``options`` (default:
    :class:`SpeedOptions`) applied.

    ``model`` is left untouched unless ``inplace`` (which saves a copy of the weights; the
    model must not be used for training afterwards).
    """
    options = options or SpeedOptions()
    if options.cuda_graphs and not torch.cuda.is_available():
        raise ValueError("cuda_graphs needs a CUDA device")
    if options.dtype not in DTYPES.values():
        raise ValueError(f"dtype {options.dtype}: use one of {sorted(DTYPES)}")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if options.fold_batchnorm:
        fold_batchnorm(model)
    model.to(options.dtype)
    if (
        options.fft_convs
    ):  # after the cast: Module.to(dtype) would drop the spectra's imaginary part
        use_fft_convs(model)
    return InferenceModel(model, options)
