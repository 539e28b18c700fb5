"""NVIDIA DALI data path: audio decoding and log-mel features in a DALI pipeline.

An optional accelerator for :class:`common.dataset.FeatureLoader`: :class:`DaliDataLoader` yields the
same ``(feats (B,F,T) f32, feat_lens int64, txt (B,S) int64, txt_lens int64)`` batches, computed by
DALI on the CPU (``device="cpu"``, no GPU needed) or the GPU (``"gpu"``). DALI is imported only when
a loader is built, so ``import common.dali`` works without it; :func:`require_dali` says how to
install it.

    manifests --read_manifests--> [Utterance] --TrainSampler/EvalSampler--> batches of indices
      --external source (file bytes, speed factor s)--> DALI: decode at s*16 kHz, trim (-60 dB),
      [to GPU], dither, pre-emphasis, |STFT|^2, mel, ln --> torch: per-feature normalisation over
      ceil(N/160) frames, zeros beyond, pad to 16, SpecAugment --> (feats, feat_lens, txt, txt_lens)

Against upstream's DALI path (docs/upstream.md#pytorch-vs-dali and defects U15-U19), deliberately:
- The features equal :class:`common.features.FilterbankFeatures` in eval mode (max abs difference
  3.4e-4 over the repository's recordings, identical lengths; tested): symmetric Hann window passed
  as ``window_fn``, pre-emphasis ``border="zero"`` (y[0] = x[0]), ``ln(x + 1e-20)`` exactly (the guard
  is added before ``to_decibels``, whose own floor, upstream's ``ln(max(x, 1e-20))``, then never
  acts; the two differ only for power below ~1e-19 anyway), and the normalisation (unbiased std +
  1e-5 over the ``ceil(N/160)`` valid frames), the zeros beyond the length and the padding to a
  multiple of 16 run in torch with FilterbankFeatures' own code. Upstream's DALI used DALI's
  periodic-like Hann, ``border="clamp"``, population std without epsilon and ``N//160 + 1`` frames.
- Batches come from the PyTorch path's samplers: shuffled from the first epoch (upstream:
  ``shuffle_after_epoch``, so epoch 1 ran in manifest order), the same batch count on every rank in
  training (upstream's shards could differ by a batch and hang DDP), every utterance exactly once
  over the ranks at evaluation. For one seed both paths read the same utterances in the same batches.
- Seeded: the batch order and each utterance's speed factor come from ``(seed, epoch, index)`` (the
  same factor AudioDataset draws), the pipeline (dither) from ``(seed, rank)``, SpecAugment from
  ``(seed, epoch, rank)``. Upstream had no DALI seed.
- Transcripts are the manifests' texts normalised once at load (ids looked up per batch, int64);
  upstream normalised every batch in Python and returned float32 ids.
- The speed-1.0 file of each entry is chosen by its ``speed`` field (upstream: ``files[-1]``).
- Outputs stay on the CPU for ``device="cpu"`` (upstream always moved them to the GPU: U5).
- SpecAugment is :class:`common.features.SpecAugment` in torch: masks start inside each
  utterance's valid frames (upstream's ``fn.erase`` anchors spanned the padded batch).
- Offsets (``offset`` entries) are honoured; gain and shift perturbation are refused (upstream's DALI
  path ignored all three).

Remaining differences from the PyTorch path (documented, not bugs):
- Silence trimming: ``fn.nonsilent_region(cutoff_db=-60)`` (upstream's DALI trim: a 2048-sample
  sliding window, reference = peak power) instead of the librosa-style ``trim_silence_db`` (2048/512
  centred frames). DALI keeps more: on example3/example4 about 1,450 samples (0.09 s) more at the
  start and 300-700 at the end, 10-14 frames in all. An all-silent recording is kept whole.
- Speed perturbation and files not at 16 kHz are resampled by DALI's windowed sinc (quality 50), not
  soxr: the same length in frames (tested within 2), slightly different waveforms.
- The last valid frame of an utterance sees that utterance's reflect padding; the PyTorch path,
  computing a zero-padded batch, sees the batch's zero padding there (which also shifts the
  normalisation statistics slightly) unless the utterance is the batch's longest. DALI's features do
  not depend on the batch; FilterbankFeatures on one utterance alone equals them.
- The dither noise is DALI's (seeded per rank, drawn in pipeline order, so a resumed run draws other
  noise; everything else of an epoch is keyed by the epoch and reproduces exactly).
- FFTs differ in float32 rounding: up to 1e-3 in the log-mel of near-silent bins before
  normalisation, 3.4e-4 after it.
"""

from __future__ import annotations

DALI_INSTALL = "pip install nvidia-dali-cuda130==2.4.0"


class DaliUnavailableError(ImportError):
    """NVIDIA DALI is not installed (or does not load); the message gives the install command."""


def dali_available() -> bool:
    """Whether ``nvidia.dali`` imports."""
    try:
        import nvidia.dali  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def require_dali() -> None:
    """Raise :class:`DaliUnavailableError` with the install command when DALI cannot be imported."""
    try:
        import nvidia.dali  # noqa: F401
    except (ImportError, OSError) as e:
        raise DaliUnavailableError(
            f"the DALI data path needs NVIDIA DALI, which cannot be imported ({e}). Install it with "
            f"`{DALI_INSTALL}` (in NVIDIA's PyTorch container: the DALI wheel matching its CUDA), "
            "or use the PyTorch data path (DALI device 'none')."
        ) from e


from common.dali.data_loader import DaliDataLoader  # noqa: E402  (needs require_dali above)

__all__ = [
    "DALI_INSTALL",
    "DaliDataLoader",
    "DaliUnavailableError",
    "dali_available",
    "require_dali",
]
