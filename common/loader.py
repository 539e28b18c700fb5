"""The batch loader of a split: DALI or the PyTorch path, chosen here and only here.

Both yield ``(feats (B, F, T) on device, feat_lens, txt (B, S), txt_lens)`` (int64 lengths), have
``len()`` (batches per epoch, equal on every rank in training), ``set_epoch(epoch)``,
``skip_batches(count)`` (training) and ``utterances()`` (evaluation order).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

BACKENDS = ("gpu", "cpu", "none")  # DALI on the GPU, DALI on the CPU, the PyTorch loader


def build_loader(
    manifests: Sequence[str | Path],
    labels: Sequence[str],
    dataset_kw: dict,
    features_kw: dict,
    *,
    dataset_dir: str | Path,
    batch_size: int,
    train: bool,
    device: torch.device,
    backend: str = "none",
    world_size: int = 1,
    rank: int = 0,
    seed: int = 0,
    num_workers: int = 4,
    bucketing: bool = False,
    grad_accumulation: int = 1,
    dtype: torch.dtype = torch.float32,
):
    """The loader of ``manifests`` with one config split's ``audio_dataset`` (``dataset_kw``) and
    ``filterbank_features`` (``features_kw``) sections (``jasper.config.input``).

    ``backend``: ``gpu``/``cpu`` run the DALI pipeline there, ``none`` the PyTorch loader with
    ``num_workers`` processes and the features computed on ``device``. ``bucketing`` and
    ``grad_accumulation`` apply to training only; ``dtype=torch.float64`` (PyTorch loader only)
    yields float64 features. Missing audio files are reported here, before any step.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown loader backend {backend!r}; choose one of {BACKENDS}")
    if not train:
        bucketing, grad_accumulation = False, 1
    if backend != "none":
        if dtype != torch.float32:
            raise ValueError("the DALI loader computes float32 features; use the PyTorch loader")
        from common.dali import DaliDataLoader

        return DaliDataLoader(
            manifests,
            dataset_dir,
            labels,
            dataset_kw,
            features_kw,
            batch_size,
            train=train,
            device=backend,
            device_id=device.index if backend == "gpu" else None,
            world_size=world_size,
            rank=rank,
            seed=seed,
            bucketing=bucketing,
            grad_accumulation=grad_accumulation,
        )
    from common.dataset import AudioDataset, FeatureLoader, get_data_loader
    from common.features import FilterbankFeatures

    dataset = AudioDataset(dataset_dir, manifests, labels, seed=seed, **dataset_kw)
    loader = get_data_loader(
        dataset,
        batch_size,
        train=train,
        world_size=world_size,
        rank=rank,
        seed=seed,
        num_workers=num_workers,
        bucketing=bucketing,
        grad_accumulation=grad_accumulation,
    )
    features = FilterbankFeatures(**features_kw).to(device)
    features.train(train)
    return FeatureLoader(loader, features, device, dtype=dtype)
