"""The DALI loader (upstream's DaliDataLoader): manifests -> ``(feats, feat_lens, txt, txt_lens)``.

The utterance list comes from :func:`common.dataset.read_manifests` and the batches of indices from
the PyTorch path's own samplers (:class:`common.dataset.TrainSampler`, :class:`EvalSampler`), so both
paths read the same utterances in the same batches for the same seed, and DALI's reader sharding
(``shuffle_after_epoch``, no ``pad_last_batch``: docs/upstream.md#u15, #u16) is not used at all.
The pipeline (:mod:`common.dali.pipeline`) reads the files through an external source.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from common.audio import SpeedPerturbation
from common.dali.pipeline import OUTPUT_NAMES, BatchPlan, BatchSource, build_pipeline
from common.dataset import (
    AudioFile,
    EvalSampler,
    ManifestError,
    TrainSampler,
    Utterance,
    check_audio_files,
    manifest_filters,
    read_manifests,
)
from common.features import FilterbankFeatures

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _seed_int(*key: int) -> int:
    """A 31-bit seed derived from ``key`` (DALI and torch.Generator take plain ints)."""
    return int(np.random.SeedSequence([k % 2**63 for k in key]).generate_state(1)[0] >> 1)


def _speed_one_file(utt: Utterance) -> AudioFile:
    """The recording made at speed 1.0, the only one the DALI path reads."""
    f = utt.speed_one_file()
    if abs(f.speed - 1.0) >= 1e-6:
        raise ManifestError(
            f"manifest entry {utt.index} ({utt.files[0].path}): no file with speed 1.0, which the "
            "DALI path reads"
        )
    return f


def default_num_threads(world_size: int = 1) -> int:
    """CPU threads per pipeline: this process's cores shared by the ranks on this node (upstream
    gave every rank all cores, oversubscribing 8-GPU nodes: docs/upstream.md#u35)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return max(1, (cores or 1) // max(1, local))


class DaliDataLoader:
    """Features computed by an NVIDIA DALI pipeline on ``device`` ("cpu" or "gpu").

    Iterating yields ``(feats (B,F,T) f32, feat_lens int64, txt (B,S) int64, txt_lens int64)`` — the
    tuple of :class:`common.dataset.FeatureLoader` — on ``cuda:device_id`` for ``"gpu"`` and on the
    CPU for ``"cpu"``. ``len()`` is the number of batches per epoch: with ``train`` the same on every
    rank (the incomplete global batch is dropped); otherwise every utterance is read exactly once
    over the ranks (the last batch may be short). Call :meth:`set_epoch` before each epoch.

    ``dataset_kw`` and ``features_kw`` are the ``audio_dataset`` and ``filterbank_features``
    sections of ``jasper.config.input(cfg, split)``. ``seed`` drives everything random: the batch
    order (per epoch), the speed factors (per utterance and epoch, drawn like
    :class:`common.dataset.AudioDataset`), the pipeline's dither and the SpecAugment masks; it
    overrides ``dataset_kw["seed"]``. The same seed gives the same batches. ``bucketing``,
    ``num_buckets`` and ``grad_accumulation`` are :class:`common.dataset.TrainSampler`'s (training
    only); :meth:`skip_batches` resumes inside an epoch.

    Raises:
        common.dali.DaliUnavailableError: DALI is not installed.
        common.dataset.MissingAudioError: audio files listed in the manifests are missing.
        ValueError: a setting the DALI path does not support (gain or shift perturbation).
    """

    def __init__(
        self,
        manifest_fpaths: Sequence[str | Path],
        data_dir: str | Path,
        labels: Sequence[str],
        dataset_kw: dict,
        features_kw: dict,
        batch_size: int,
        *,
        train: bool,
        device: str,
        device_id: int | None = None,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        num_threads: int | None = None,
        bucketing: bool = False,
        num_buckets: int = 10,
        grad_accumulation: int = 1,
        prefetch_queue_depth: int = 2,
    ) -> None:
        from common.dali import require_dali

        require_dali()
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device={device!r}: the DALI path runs on 'cpu' or 'gpu'")
        if device == "gpu":
            if not torch.cuda.is_available():
                raise ValueError(
                    "DALI device 'gpu' needs a CUDA device; use 'cpu' or the PyTorch path"
                )
            device_id = torch.cuda.current_device() if device_id is None else device_id
        for name in ("gain_perturbation", "shift_perturbation"):
            if dataset_kw.get(name) is not None:
                raise ValueError(
                    f"audio_dataset.{name} is not supported by the DALI path (nor was it upstream); "
                    "remove it or use the PyTorch data path (DALI device 'none')"
                )

        self.train = train
        self.device = torch.device("cuda", device_id) if device == "gpu" else torch.device("cpu")
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.utts = read_manifests(
            manifest_fpaths, data_dir, labels, **manifest_filters(dataset_kw)
        )
        self.files = [_speed_one_file(u) for u in self.utts]
        if any(len(u.files) > 1 for u in self.utts):
            log.warning(
                "DALI reads each entry's speed-1.0 file only: offline speed variants are used by "
                "the PyTorch data path (upstream required ignore_offline_speed_perturbation)"
            )
        check_audio_files(self.utts)
        speed = dataset_kw.get("speed_perturbation")
        self.speed_perturbation = (
            (SpeedPerturbation(**speed) if isinstance(speed, dict) else speed) if train else None
        )

        # The torch half of the front end: normalisation, padding and SpecAugment run the very code
        # of FilterbankFeatures, so both paths agree on everything after the log.
        self.features = FilterbankFeatures(**features_kw).train(train)
        dither = self.features.dither if train or self.features.dither_at_eval else 0.0
        if train:
            self.sampler: TrainSampler | EvalSampler = TrainSampler(
                len(self.utts),
                batch_size,
                world_size,
                rank,
                seed,
                drop_last=True,
                durations=[u.duration for u in self.utts] if bucketing else None,
                num_buckets=num_buckets,
                grad_accumulation=grad_accumulation,
            )
        else:
            self.sampler = EvalSampler(len(self.utts), batch_size, world_size, rank)

        self._source = BatchSource(
            speed=self.speed_perturbation is not None,
            offset=any(u.offset > 0 for u in self.utts),
        )
        self._pipeline_kw = dict(
            batch_size=batch_size,
            device=device,
            device_id=device_id,
            num_threads=num_threads or default_num_threads(world_size),
            seed=_seed_int(seed, rank),
            trim_silence=dataset_kw.get("trim_silence", False),
            dither=dither,
            lowfreq=features_kw.get("lowfreq", 0.0),
            highfreq=features_kw.get("highfreq"),
            prefetch_queue_depth=prefetch_queue_depth,
        )
        self._iterator = None  # built at the first epoch: building it starts prefetching
        self._exhausted = True
        self._skip = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's batch order, speed factors and SpecAugment masks."""
        self.epoch = epoch

    def utterances(self) -> list[Utterance]:
        """This rank's utterances in the order an evaluation pass yields them (as
        :meth:`common.dataset.FeatureLoader.utterances`)."""
        if not isinstance(self.sampler, EvalSampler):
            raise ValueError("only an evaluation loader has a fixed utterance order")
        return [self.utts[i] for batch in self.sampler for i in batch]

    def skip_batches(self, count: int) -> DaliDataLoader:
        """Start the next iteration after its first ``count`` batches (resuming inside an epoch)
        without reading them; the rest of the epoch is what an uninterrupted run reads."""
        if count and not isinstance(self.sampler, TrainSampler):
            raise ValueError("only a training loader can skip batches")
        if count:
            self.sampler.skip_next(count)
        self._skip = count
        return self

    def rng(self, i: int) -> np.random.Generator:
        """Utterance ``i``'s generator in this epoch, keyed as :meth:`common.dataset.AudioDataset.rng`:
        both paths draw the same speed factor for an entry with one file (the usual online case)."""
        return np.random.default_rng((self.seed % 2**63, self.epoch, i))

    def plan_epoch(self) -> list[BatchPlan]:
        """This epoch's batches for this rank: files, indices, speed factors and offsets."""
        self.sampler.set_epoch(self.epoch)
        plan = []
        for indices in self.sampler:
            utts = [self.utts[i] for i in indices]
            files = [self.files[i] for i in indices]
            batch = BatchPlan(paths=[str(f.path) for f in files], indices=list(indices))
            if self.speed_perturbation is not None:
                batch.speeds = [self.speed_perturbation.draw(self.rng(i)) for i in indices]
            if self._source.offset:
                # Read `duration` seconds from `offset`, as AudioDataset does.
                batch.offsets = [u.offset for u in utts]
                batch.spans = [f.duration if u.offset > 0 else 1e9 for u, f in zip(utts, files)]
            plan.append(batch)
        return plan

    def _start_epoch(self, plan: list[BatchPlan]) -> None:
        if self._iterator is not None and not self._exhausted:
            # The previous epoch was left early: stop the source and drain the prefetched batches,
            # since DALI ignores reset() in the middle of an epoch.
            self._source.plan = []
            for _ in self._iterator:
                pass
            self._exhausted = True
        self._source.plan = plan
        if self._iterator is None:
            from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

            pipe = build_pipeline(self._source, self.features, **self._pipeline_kw)
            self._iterator = DALIGenericIterator(
                [pipe],
                list(OUTPUT_NAMES),
                auto_reset=False,
                last_batch_policy=LastBatchPolicy.PARTIAL,  # the source sizes each batch itself
            )
        else:
            self._iterator.reset()
        self._exhausted = False

    def _transcripts(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [self.utts[i].ids for i in index.tolist()]
        txt_lens = torch.tensor([len(t) for t in ids], dtype=torch.int64)
        txt = torch.zeros(len(ids), int(txt_lens.max()), dtype=torch.int64)
        for k, t in enumerate(ids):
            txt[k, : len(t)] = torch.tensor(t, dtype=torch.int64)
        return txt, txt_lens

    @torch.no_grad()
    def _finish(self, out: dict[str, torch.Tensor], generator: torch.Generator) -> Batch:
        """Pipeline outputs -> the FeatureLoader tuple: the torch half of FilterbankFeatures."""
        fp = self.features
        x = out["feats"].float()
        lens = fp.feature_lengths(out["samples"].reshape(-1)).to(x.device)
        x = fp._normalize(x, lens)
        invalid = torch.arange(x.size(-1), device=x.device)[None, :] >= lens[:, None]
        x = fp.pad(x.masked_fill(invalid[:, None, :], 0.0))
        if self.train:
            if fp.cutout_augment is not None:
                x = fp.cutout_augment(x, lens, generator)
            if fp.spec_augment is not None:
                x = fp.spec_augment(x, lens, generator)
        txt, txt_lens = self._transcripts(out["index"].reshape(-1).cpu())
        dev = self.device
        return (
            x,
            lens,
            txt.to(dev, non_blocking=True),
            txt_lens.to(dev, non_blocking=True),
        )

    def __iter__(self) -> Iterator[Batch]:
        first, self._skip = self._skip, 0
        plan = self.plan_epoch()
        if not plan:  # an evaluation rank with no utterance: DALI cannot run an empty epoch
            return
        self._start_epoch(plan)
        generator = torch.Generator()
        for k, (out,) in enumerate(self._iterator, start=first):
            # SpecAugment masks keyed by (seed, epoch, rank, batch): the same on resume.
            generator.manual_seed(_seed_int(self.seed, self.epoch, self.rank, k))
            yield self._finish(out, generator)
        self._exhausted = True

    def __repr__(self) -> str:
        return (
            f"DaliDataLoader({len(self.utts)} utterances, {len(self)} batches/epoch, "
            f"device={self.device}, train={self.train}, epoch={self.epoch})"
        )
