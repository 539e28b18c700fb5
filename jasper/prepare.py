"""Inference-time preparation of a trained model: the same outputs, computed faster.

Each option is independent, switchable and measurable on its own (``inference.py`` flags,
``bench/cpu_rtf.py``). None changes what the model computes on valid frames beyond floating-point
rounding (fp32: log-probs within 1e-4; fp16/bf16: within a few 1e-2, so only near-tied frames
may decode differently):

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
  kernel spectra (:class:`FFTConv1d`): 3 to 7 times fewer flops; the spectra take 2.6 to 4.5
  times the memory of the weights they replace. A CPU lever (GPUs run direct half-precision
  convolutions faster). The FFTs run in float32; the spectral products in complex64, or as bf16
  GEMMs in bf16 models.
- ``dtype``: the weights cast to fp16 or bf16 after folding (upstream: ``.half()``); the
  classifier's log-softmax still runs in fp32. On CPUs with native bf16 (AVX-512 BF16, AMX),
  bf16 with ``fft_convs`` is the fastest CPU path: its GEMMs run 3 to 4 times faster than
  complex64 ones and stream half the bytes.

:meth:`SpeedOptions.fastest_for` picks the fastest of these for a device; measurements:
``bench/results/cpu_rtf.md``, explained in ``docs/cpu_inference.md``.

The prepared module is for inference only: its state_dict no longer matches the checkpoint layout.
"""

from __future__ import annotations

import argparse
import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from common import machine
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

    @classmethod
    def fastest_for(cls, device: torch.device | str, *, half_ok: bool = False) -> SpeedOptions:
        """The fastest measured options for ``device`` that need no compilation or per-shape
        capture (bench/results/cpu_rtf.md; docs/cpu_inference.md).

        ``half_ok`` allows half precision: log-probs move by up to about 0.2 (bf16: 8 mantissa
        bits), so frames whose two best classes are that close may decode differently
        (bench/results/cpu_int8.md). Without it the outputs equal the checkpoint's up to float32
        rounding.

        - CPU: ``fft_convs``; with ``half_ok`` on CPUs with native bf16 (AVX-512 BF16 or AMX),
          also ``dtype=bfloat16`` (the FFT products then run as bf16 GEMMs): 4.9x upstream-style
          at 16.7 s, 3.2x at 7 s on a 2-core AVX-512 CPU (fp32: 1.8x, 1.35x). Elsewhere bf16 is
          not chosen (not measured there).
        - CUDA: direct convolutions (cuDNN beats FFT there), fp16 with ``half_ok``.
        """
        device = torch.device(device)
        if device.type == "cuda":
            return cls(dtype=torch.float16 if half_ok else torch.float32)
        bf16 = half_ok and machine.native_bf16()
        return cls(fft_convs=True, dtype=torch.bfloat16 if bf16 else torch.float32)


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


def fft_size(span: int) -> int:
    """The FFT length for a kernel spanning ``span`` frames: the power of two at or above twice it.

    Longer blocks need fewer flops per output (about ``(n/2 + 1) / (n - span + 1)`` complex MACs
    per weight) but more spectrum memory, and at batch 1 leave fewer blocks, i.e. thinner matrix
    products that mostly stream the spectra. Swept per Jasper layer (n in steps of 16, 7 s and
    16.7 s utterances, complex64 and bf16 products; docs/cpu_inference.md) on a 2-core AVX-512
    CPU: this rule was within the noise of the best size for every layer but the dilated one
    (span 57: 112 was 5-15% faster than 128); direct convolution won only for 11-tap kernels in
    float32, by about 10%.
    """
    return 2 ** math.ceil(math.log2(2 * span))


class FFTConv1d(MaskedConv1d):
    """A stride-1, "same"-padded :class:`MaskedConv1d` computed by overlap-save FFT convolution.

    Direct convolution costs ``C_in * k`` MACs per output value; with the kernel's spectrum
    precomputed, on blocks of ``n_fft`` frames it costs about ``4 * C_in * (n_fft/2 + 1) / L``
    real MACs, where ``L = n_fft - span + 1`` outputs per block (``span = d * (k - 1) + 1``): for
    Jasper's kernels (11..29 taps) 3 to 7 times fewer. The spectral product is one batched matrix
    product per frequency bin over the channels; the FFTs run in float32.

    ``dtype`` is the precision of that product. float32: complex64 matrices, results equal to
    direct convolution up to float32 rounding (about 1e-6 relative per layer). bfloat16 (CPUs with
    native bf16): the complex product written as one real GEMM,
    ``[Yr, Yi] = [Wr, Wi] @ [[Xr, Xi], [-Xi, Xr]]``, bf16 inputs accumulated in fp32 and rounded
    once to bf16, so the error is that of a direct bf16 convolution (about 3e-3 relative), and the
    spectra take as much memory as complex64 ones of half the size.

    Memory: ``2 * (n_fft/2 + 1) / k`` times the direct weights' (same dtype); the weights themselves
    are dropped. Masking and output lengths are :class:`MaskedConv1d`'s (only the convolution is
    replaced).
    """

    def __init__(
        self, conv: MaskedConv1d, n_fft: int | None = None, dtype: torch.dtype = torch.float32
    ) -> None:
        k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        if s != 1 or conv.groups != 1 or conv.padding[0] != (k // 2) * d or k % 2 == 0:
            raise ValueError("FFTConv1d needs a stride-1, ungrouped, odd-kernel 'same' convolution")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"FFTConv1d products run in float32 or bfloat16, not {dtype}")
        with torch.device("meta"):  # the direct weights are replaced: never allocate them
            super().__init__(
                conv.in_channels, conv.out_channels, k, 1, conv.padding[0], d, 1,
                bias=conv.bias is not None, masked=conv.masked,
            )  # fmt: skip
        self.span = d * (k - 1) + 1
        self.n_fft = n_fft or fft_size(self.span)
        if self.n_fft <= self.span:
            raise ValueError(f"n_fft={self.n_fft} must exceed the kernel span {self.span}")
        # Correlation (what nn.Conv1d computes) = convolution with the reversed, dilated kernel;
        # the spectra are computed in float64 so that only the final rounding remains.
        weight = conv.weight.detach().double()
        taps = weight.new_zeros(*weight.shape[:2], self.n_fft)
        taps[..., : self.span : d] = weight.flip(-1)
        spectrum = torch.fft.rfft(taps).permute(2, 0, 1)  # (bins, C_out, C_in)
        if dtype == torch.float32:
            spectrum = spectrum.to(torch.complex64)
        else:
            spectrum = torch.cat([spectrum.real, spectrum.imag], dim=2).to(dtype)
        del self.weight
        self.register_parameter("weight", None)
        self.register_buffer("spectrum", spectrum.contiguous())
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
        if self.spectrum.is_complex():
            y = self._complex_product(blocks)
        else:
            y = self._real_product(blocks)
        y = torch.fft.irfft(y, n=self.n_fft, dim=-1)[..., self.span - 1 :]
        y = y.reshape(batch, -1, n_blocks * hop)[..., :frames]
        if bias is not None:
            y = y + bias.float()[None, :, None]
        return y.to(dtype)

    def _complex_product(self, blocks: torch.Tensor) -> torch.Tensor:
        """(B, C_in, blocks, bins) complex -> (B, C_out, blocks, bins) complex, complex64 GEMMs."""
        batch, c_in, n_blocks, bins = blocks.shape
        blocks = blocks.permute(3, 1, 0, 2).reshape(bins, c_in, batch * n_blocks)
        y = torch.bmm(self.spectrum, blocks)  # (bins, C_out, B * blocks)
        return y.reshape(bins, -1, batch, n_blocks).permute(2, 1, 3, 0)

    def _real_product(self, blocks: torch.Tensor) -> torch.Tensor:
        """The same product as one real GEMM per bin in the spectrum's dtype (see the class)."""
        batch, c_in, n_blocks, bins = blocks.shape
        # Transposes run on complex elements and casts on contiguous memory: both several times
        # faster than one cast-while-transposing copy of the real and imaginary parts.
        x = blocks.permute(3, 1, 0, 2).contiguous()  # (bins, C_in, B, blocks)
        # [[Xr, Xi], [-Xi, Xr]] with the columns ordered (block, re|im): the row block [-Xi, Xr]
        # is i * X. (bins, 2 * C_in, B * blocks * 2).
        stacked = x.new_empty(bins, 2, c_in, batch * n_blocks * 2, dtype=self.spectrum.dtype)
        stacked[:, 0].copy_(torch.view_as_real(x).view(bins, c_in, -1))
        stacked[:, 1].copy_(torch.view_as_real(x * 1j).view(bins, c_in, -1))
        y = torch.bmm(self.spectrum, stacked.view(bins, 2 * c_in, -1)).float()  # [Yr, Yi] columns
        y = torch.view_as_complex(y.view(bins, -1, batch, n_blocks, 2))
        return y.permute(2, 1, 3, 0).contiguous()  # (B, C_out, blocks, bins)


def use_fft_convs(model: nn.Module, min_span: int = 9, dtype: torch.dtype = torch.float32) -> int:
    """Replace every stride-1 "same" :class:`MaskedConv1d` whose kernel spans at least
    ``min_span`` frames by an :class:`FFTConv1d` with products in ``dtype`` (in place); returns
    how many."""
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
                layers[i] = FFTConv1d(conv, dtype=dtype)
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
        # bf16 models multiply spectra in bf16; fp16 ones in complex64 (CPUs lack fast fp16 GEMMs).
        use_fft_convs(
            model, dtype=torch.bfloat16 if options.dtype == torch.bfloat16 else torch.float32
        )
    return InferenceModel(model, options)


# --------------------------------------------------------------------------------------------
# Command line: the speed flags of inference.py and utils/transcribe_stream.py


def add_speed_arguments(group: argparse._ArgumentGroup, fft_convs: str = "auto") -> None:
    """``--amp/--precision``, ``--cudnn_benchmark`` and the :class:`SpeedOptions` flags;
    ``fft_convs`` is the default of ``--fft_convs`` (``auto``: on CPUs only)."""
    flag = argparse.BooleanOptionalAction
    group.add_argument("--amp", "--fp16", action="store_true", help="half precision (--precision)")
    group.add_argument(
        "--precision", choices=("fp16", "bf16"), default="fp16", help="the type of --amp"
    )
    group.add_argument(
        "--cudnn_benchmark", action=flag, default=False, help="let cuDNN pick its algorithms"
    )
    group.add_argument(
        "--fold_batchnorm", action=flag, default=True,
        help="fold BatchNorm into the convolutions (same outputs, faster)",
    )  # fmt: skip
    group.add_argument(
        "--skip_masks", action=flag, default=True,
        help="skip the conv masks where every length of a batch is equal (same outputs)",
    )  # fmt: skip
    group.add_argument(
        "--fft_convs", nargs="?", const="true", default=fft_convs,
        choices=("auto", "true", "false"),
        help="long convolutions by FFT (same outputs; CPU: 1.4-1.8x faster, 3x the weights' "
        "memory; with --amp --precision bf16 on CPUs with native bf16: 3.2-4.9x, "
        "docs/cpu_inference.md); auto: on CPUs, not on GPUs (cuDNN is faster there)",
    )  # fmt: skip
    group.add_argument("--no-fft_convs", dest="fft_convs", action="store_const", const="false")
    group.add_argument(
        "--compile", action=flag, default=False,
        help="torch.compile the network (compiles once per input shape)",
    )  # fmt: skip
    group.add_argument(
        "--cuda_graphs", action=flag, default=False,
        help="replay the network as a CUDA graph per input shape (CUDA only)",
    )  # fmt: skip


def speed_options(args: argparse.Namespace, device: torch.device) -> SpeedOptions:
    """The :class:`SpeedOptions` of :func:`add_speed_arguments`' flags on ``device``."""
    fft = args.fft_convs == "true" or (args.fft_convs == "auto" and device.type == "cpu")
    return SpeedOptions(
        fold_batchnorm=args.fold_batchnorm,
        skip_masks=args.skip_masks,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        fft_convs=fft,
        dtype=DTYPES[args.precision] if args.amp else torch.float32,
    )
