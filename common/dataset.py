"""Manifests, the PyTorch audio dataset, its samplers and the on-device feature loader.

Data flow of the PyTorch path (the DALI path in ``common/dali`` shares :func:`read_manifests`)::

    manifests (JSON, docs/upstream.md#manifests) --read_manifests--> [Utterance]
      --AudioDataset--> (audio (N,), ids (S,))
      --TrainSampler | EvalSampler, collate_fn--> (audio (B,N), audio_lens, txt (B,S), txt_lens)
      --FeatureLoader (features on the device, fp32)--> (feats (B,F,T), feat_lens, txt, txt_lens)

B = batch, N = samples at 16 kHz, S = transcript labels, F = mel bins, T = 10 ms frames.

Where this differs from upstream, and why (Un: defect n in docs/upstream.md#known-upstream-defects):
- With ``ignore_offline_speed_perturbation`` the speed-1.0 file is chosen by its ``speed`` field;
  upstream's DALI path took ``files[-1]``, right only by accident of set ordering (U18).
- Online speed perturbation is the DALI kind (resample by s, read at 16 kHz: the length is
  multiplied by s) and applies to every utterance unless the config sets ``p`` (U19;
  docs/upstream.md#speed-perturbation).
- Every random choice of ``AudioDataset[i]`` comes from ``default_rng((seed, epoch, i))``, so
  batches do not depend on the number of workers, and runs are reproducible (U16).
- Training shards are shuffled from the first epoch and every rank gets the same number of batches,
  so DDP never waits on a rank that ran out (U15, U16). Evaluation shards hold every utterance
  exactly once: no padding by repeated samples, which biased multi-GPU WER (U24).
- Missing audio files are reported at start-up, all at once, instead of crashing a worker mid-epoch.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.audio import (
    SAMPLE_RATE,
    GainPerturbation,
    ShiftPerturbation,
    SpeedPerturbation,
    load_audio,
)
from common.text import normalize, text_to_ids

log = logging.getLogger(__name__)

MISSING_FILES_SHOWN = 10  # paths listed by MissingAudioError; the rest are counted


class ManifestError(ValueError):
    """A manifest is not valid JSON or an entry lacks a required field; names the file and entry."""


class MissingAudioError(FileNotFoundError):
    """Audio files listed in the manifests do not exist. ``missing`` holds every missing path."""

    def __init__(self, missing: Sequence[Path]) -> None:
        self.missing = list(missing)
        shown = "\n".join(f"  {p}" for p in self.missing[:MISSING_FILES_SHOWN])
        more = len(self.missing) - MISSING_FILES_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{len(self.missing)} audio file(s) listed in the manifests do not exist "
            f"(check --dataset_dir / DATA_DIR and the manifests' fname fields):\n{shown}{tail}"
        )


@dataclass
class AudioFile:
    """One recording of an utterance. ``speed`` is the offline (sox) speed it was made with."""

    path: Path
    speed: float
    duration: float  # seconds


@dataclass
class Utterance:
    """A manifest entry after filtering: its file variants and its normalised transcript.

    ``duration`` is the original (speed-1.0) duration in seconds; ``index`` the entry's position in
    the concatenated manifests, before any filtering (a stable id for the entry).
    """

    files: list[AudioFile]
    transcript: (
        str | None
    )  # None: the manifest gives none (read_manifests(require_transcripts=False))
    ids: list[int]
    duration: float
    offset: float = 0.0
    index: int = 0

    def speed_one_file(self) -> AudioFile:
        """The recording made at speed 1.0, chosen by the manifest's ``speed`` field, else the
        last file (upstream took ``files[-1]`` always: right only by accident of ordering)."""
        for f in self.files:
            if _is_speed_one(f.speed):
                return f
        return self.files[-1]


def _is_speed_one(speed: float) -> bool:
    return abs(speed - 1.0) < 1e-6


def _resolve(path: str | Path, data_dir: Path) -> Path:
    """``path`` if absolute, else ``data_dir / path`` (upstream's ``os.path.join``)."""
    path = Path(path)
    return path if path.is_absolute() else data_dir / path


def _parse_entry(
    entry: object, where: str, data_dir: Path, require_transcript: bool = True
) -> tuple[list[tuple[str, float, float]], str | None, float, float]:
    """``([(fname, speed, duration)], raw transcript, original duration, offset)`` of one manifest
    entry (docs/upstream.md#manifests). Path objects, the costly part of loading, are built later
    for kept files only."""
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    raw_files = entry.get("files")
    if not isinstance(raw_files, list) or not raw_files:
        raise ManifestError(f"{where}: missing 'files' (a non-empty list of audio files)")
    files = []
    for j, f in enumerate(raw_files):
        if not isinstance(f, dict) or not isinstance(f.get("fname"), str):
            raise ManifestError(f"{where}: files[{j}]: missing 'fname'")
        try:
            speed = float(f.get("speed", 1.0))
            if f.get("duration") is not None:
                duration = float(f["duration"])
            elif f.get("num_samples") is not None and f.get("sample_rate"):
                duration = float(f["num_samples"]) / float(f["sample_rate"])
            elif entry.get("original_duration") is not None:
                duration = float(entry["original_duration"]) / speed  # sox speed s: length / s
            else:
                duration = None
        except (TypeError, ValueError) as e:
            raise ManifestError(f"{where}: files[{j}]: bad speed or duration: {e}") from None
        if duration is None:
            raise ManifestError(f"{where}: files[{j}]: no 'duration' (nor num_samples)")
        files.append((f["fname"], speed, duration))

    if "transcript" in entry:
        transcript = entry["transcript"]
    elif "text_filepath" in entry:
        text_path = _resolve(entry["text_filepath"], data_dir)
        try:
            transcript = text_path.read_text(encoding="utf-8")
        except OSError as e:
            raise ManifestError(f"{where}: cannot read text_filepath {text_path}: {e}") from None
    elif not require_transcript:
        transcript = None
    else:
        raise ManifestError(f"{where}: missing 'transcript' (or 'text_filepath')")
    if transcript is not None and not isinstance(transcript, str):
        raise ManifestError(f"{where}: 'transcript' is a {type(transcript).__name__}, not a string")

    if entry.get("original_duration") is not None:
        original = float(entry["original_duration"])
    else:
        ones = [duration for _, speed, duration in files if _is_speed_one(speed)]
        original = ones[0] if ones else files[-1][2]
    return files, transcript, original, float(entry.get("offset", 0.0) or 0.0)


def read_manifests(
    manifest_fpaths: Sequence[str | Path],
    data_dir: str | Path,
    labels: Sequence[str],
    *,
    min_duration: float = 0.1,
    max_duration: float = float("inf"),
    pad_to_max_duration: bool = False,
    max_utts: int = 0,
    normalize_transcripts: bool = True,
    ignore_offline_speed_perturbation: bool = False,
    sort_by_duration: bool = False,
    require_transcripts: bool = True,
) -> list[Utterance]:
    """Read and filter the manifests' entries (docs/upstream.md#manifests), normalising transcripts.

    Relative manifest paths are resolved against ``data_dir`` (as upstream), or, failing that,
    the working directory; ``fname`` and ``text_filepath`` fields against ``data_dir``.

    An entry is kept if ``min_duration <= d <= max_duration`` (seconds), where ``d`` is the
    original duration, or the longest variant's with ``pad_to_max_duration`` and offline variants
    in use (as upstream). Entries whose transcript has no label left are dropped (counted in the
    log line). ``max_utts > 0`` keeps the first ``max_utts`` survivors. With
    ``ignore_offline_speed_perturbation`` each utterance keeps only its file whose ``speed`` field
    is 1.0, wherever it stands in ``files``. With ``require_transcripts=False`` an entry without
    ``transcript`` (or ``text_filepath``) is kept with ``transcript=None`` and no ids (files to
    transcribe, not to score).

    Raises:
        FileNotFoundError: a manifest does not exist.
        ManifestError: a manifest is not a JSON list of entries, or an entry lacks ``files``,
            ``fname``, a duration, ``transcript`` (or ``text_filepath``), or a speed-1.0 file
            when one is required. The message names the manifest and the entry index.
    """
    data_dir = Path(data_dir)
    root = str(data_dir)
    use_longest = pad_to_max_duration and not ignore_offline_speed_perturbation
    utts: list[Utterance] = []
    n_before = 0  # entries in the manifests already read: Utterance.index counts across them
    n_long, n_short, n_empty, hours_filtered = 0, 0, 0, 0.0
    for manifest in manifest_fpaths:
        path = _resolve(manifest, data_dir)
        if not path.is_file() and Path(manifest).is_file():
            # A relative DATA_DIR makes "$DATA_DIR/x.json" relative too: take it as given.
            path = Path(manifest)
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {manifest} (looked in {data_dir} and .)")
        try:
            with open(path, encoding="utf-8") as f:
                entries = json.load(f)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(entries, list):
            raise ManifestError(
                f"{path}: expected a JSON list of entries, got {type(entries).__name__}"
            )
        for i, entry in enumerate(entries):
            where = f"{path}: entry {i}"
            files, transcript, original, offset = _parse_entry(
                entry, where, data_dir, require_transcripts
            )
            if max_utts > 0 and len(utts) >= max_utts:
                continue  # still parsed: a malformed entry is an error wherever it is
            d = max(duration for _, _, duration in files) if use_longest else original
            if not min_duration <= d <= max_duration:
                n_short += d < min_duration
                n_long += d > max_duration
                hours_filtered += original / 3600
                continue
            if ignore_offline_speed_perturbation:
                files = [f for f in files if _is_speed_one(f[1])]
                if not files:
                    raise ManifestError(
                        f"{where}: no file has speed 1.0 (ignore_offline_speed_perturbation is set)"
                    )
            if transcript is not None:
                if normalize_transcripts:
                    transcript = normalize(transcript, labels)
                ids = text_to_ids(transcript, labels)
                if not ids:
                    n_empty += 1
                    continue
            else:
                ids = []
            audio = [AudioFile(Path(os.path.join(root, name)), sp, dur) for name, sp, dur in files]
            utts.append(Utterance(audio, transcript, ids, original, offset, n_before + i))
        n_before += len(entries)
    if sort_by_duration:
        utts.sort(key=lambda u: u.duration)
    hours = sum(u.duration for u in utts) / 3600
    log.info(
        "%d utterances (%.2f h) from %s; filtered out by duration [%g, %g] s: %d short, %d long "
        "(%.2f h); %d with an empty transcript%s",
        len(utts), hours, ", ".join(str(m) for m in manifest_fpaths), min_duration, max_duration,
        n_short, n_long, hours_filtered, n_empty,
        f"; stopped at max_utts={max_utts}" if max_utts > 0 and len(utts) >= max_utts else "",
    )  # fmt: skip
    return utts


def manifest_filters(dataset_kw: dict) -> dict:
    """The keywords of :func:`read_manifests` among an ``audio_dataset`` config section's keys;
    those the section leaves out keep read_manifests' defaults (the DALI loader reads manifests
    without :class:`AudioDataset`)."""
    names = inspect.signature(read_manifests).parameters
    return {k: v for k, v in dataset_kw.items() if k in names and k != "labels"}


def find_missing_files(utts: Sequence[Utterance]) -> list[Path]:
    """Every audio path of ``utts`` (all kept variants) that is not an existing file, in order."""
    seen: set[Path] = set()
    missing = []
    for u in utts:
        for f in u.files:
            if f.path not in seen:
                seen.add(f.path)
                if not os.path.isfile(f.path):
                    missing.append(f.path)
    return missing


def check_audio_files(utts: Sequence[Utterance]) -> None:
    """Raise :class:`MissingAudioError` (first paths + count) if any audio file is missing."""
    missing = find_missing_files(utts)
    if missing:
        raise MissingAudioError(missing)


def _perturbation(kw: dict | object | None, cls: type) -> object | None:
    if kw is None or isinstance(kw, cls):
        return kw
    return cls(**kw)


class AudioDataset(Dataset):
    """Utterances from manifests: ``dataset[i] -> (audio float32 (N,), transcript ids int64 (S,))``.

    The keyword names are the YAML ``audio_dataset`` keys (``jasper.config`` validates against this
    signature); ``data_dir``, ``manifest_fpaths`` and ``labels`` come from the caller. Raises
    :class:`MissingAudioError` at construction if any listed audio file is missing.

    Random choices of item ``i`` come from ``np.random.default_rng((seed, epoch, i))``, drawn in
    this order: the offline variant (only when the utterance has several files), the speed factor,
    the gain, the shift. Call :meth:`set_epoch` before iterating a new epoch; DataLoader workers
    copy the dataset when an iteration starts, so do not use persistent workers.
    """

    def __init__(
        self,
        data_dir: str | Path,
        manifest_fpaths: Sequence[str | Path],
        labels: Sequence[str],
        sample_rate: int = SAMPLE_RATE,
        min_duration: float = 0.1,
        max_duration: float = float("inf"),
        pad_to_max_duration: bool = False,
        max_utts: int = 0,
        normalize_transcripts: bool = True,
        sort_by_duration: bool = False,
        trim_silence: bool = False,
        speed_perturbation: dict | None = None,
        gain_perturbation: dict | None = None,
        shift_perturbation: dict | None = None,
        ignore_offline_speed_perturbation: bool = False,
        seed: int = 0,
    ) -> None:
        self.labels = list(labels)
        self.sample_rate = sample_rate
        self.trim_silence = trim_silence
        self.speed_perturbation = _perturbation(speed_perturbation, SpeedPerturbation)
        self.gain_perturbation = _perturbation(gain_perturbation, GainPerturbation)
        self.shift_perturbation = _perturbation(shift_perturbation, ShiftPerturbation)
        self.seed = seed
        self.epoch = 0
        self.utts = read_manifests(
            manifest_fpaths,
            data_dir,
            labels,
            min_duration=min_duration,
            max_duration=max_duration,
            pad_to_max_duration=pad_to_max_duration,
            max_utts=max_utts,
            normalize_transcripts=normalize_transcripts,
            ignore_offline_speed_perturbation=ignore_offline_speed_perturbation,
            sort_by_duration=sort_by_duration,
        )
        check_audio_files(self.utts)

    def __len__(self) -> int:
        return len(self.utts)

    @property
    def durations(self) -> list[float]:
        """Original durations in seconds, by index (what the bucketing sampler groups by)."""
        return [u.duration for u in self.utts]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self, i: int) -> np.random.Generator:
        """The generator of item ``i`` in the current epoch (seed taken mod 2**63: must be >= 0)."""
        return np.random.default_rng((self.seed % 2**63, self.epoch, i))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        utt = self.utts[i]
        rng = self.rng(i)
        f = utt.files[rng.integers(len(utt.files))] if len(utt.files) > 1 else utt.files[0]
        # Read the entry's span (upstream reads `duration` seconds from `offset`).
        samples = load_audio(
            f.path,
            target_sr=self.sample_rate,
            offset=utt.offset,
            duration=f.duration if utt.offset > 0 else None,
            trim_silence=self.trim_silence,
        )
        if self.speed_perturbation is not None:
            factor = self.speed_perturbation.draw(rng)
            samples = SpeedPerturbation.apply(samples, factor, self.sample_rate)
        if self.gain_perturbation is not None:
            samples = self.gain_perturbation(samples, rng)
        if self.shift_perturbation is not None:
            samples = self.shift_perturbation(samples, rng)
        audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        return audio, torch.tensor(utt.ids, dtype=torch.int64)


def collate_fn(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(audio (B,N) f32, audio_lens int32, txt (B,S) int64, txt_lens int32)``, zero-padded."""
    audio_lens = torch.tensor([a.numel() for a, _ in batch], dtype=torch.int32)
    txt_lens = torch.tensor([t.numel() for _, t in batch], dtype=torch.int32)
    audio = torch.zeros(len(batch), int(audio_lens.max()), dtype=torch.float32)
    txt = torch.zeros(len(batch), int(txt_lens.max()), dtype=torch.int64)
    for k, (a, t) in enumerate(batch):
        audio[k, : a.numel()] = a
        txt[k, : t.numel()] = t
    return audio, audio_lens, txt, txt_lens


def _check_rank(world_size: int, rank: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")


class TrainSampler:
    """Batches of indices for one rank in training; every rank gets the same number of batches.

    Each epoch draws a permutation from ``default_rng((seed, epoch))``, identical on all ranks,
    and cuts it into global steps of ``batch_size * world_size * grad_accumulation`` utterances.
    Micro-batch m of a step goes to rank r as slice ``m * world_size + r``, so one process
    accumulating 2 micro-batches sees exactly what 2 ranks see in one step (CONVENTIONS: same
    result). The first epoch is shuffled too. ``drop_last`` drops the incomplete global batch;
    otherwise it is completed with the epoch's first indices (repeats are harmless in training).

    With ``durations`` (seconds per index), indices are grouped by length first: sorted into
    ``num_buckets`` equal-count buckets, shuffled within each bucket, then cut into global batches,
    so a batch holds similar lengths and wastes little padding. The batch order is shuffled.
    """

    def __init__(
        self,
        num_utts: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = True,
        durations: Sequence[float] | None = None,
        num_buckets: int = 10,
        grad_accumulation: int = 1,
    ) -> None:
        _check_rank(world_size, rank)
        if durations is not None and len(durations) != num_utts:
            raise ValueError(f"{len(durations)} durations for {num_utts} utterances")
        self.num_utts, self.batch_size = num_utts, batch_size
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.drop_last = drop_last
        self.grad_accumulation = grad_accumulation
        self.global_batch = batch_size * world_size * grad_accumulation
        self._skip = 0
        if drop_last:
            self.num_batches = num_utts // self.global_batch
        else:
            self.num_batches = math.ceil(num_utts / self.global_batch)
        if self.num_batches == 0:
            raise ValueError(
                f"{num_utts} utterances do not fill one global batch of {batch_size} x "
                f"{world_size} ranks; lower the batch size or add data"
            )
        if durations is None:
            self.buckets = [np.arange(num_utts)]
        else:
            order = np.argsort(np.asarray(durations, dtype=np.float64), kind="stable")
            self.buckets = np.array_split(order, min(max(num_buckets, 1), num_utts))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Micro-batches per epoch for this rank."""
        return self.num_batches * self.grad_accumulation

    def skip_next(self, count: int) -> None:
        """Make the next iteration start after its first ``count`` micro-batches (a resumed epoch),
        without loading their audio."""
        self._skip = count

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        rng = np.random.default_rng((self.seed % 2**63, self.epoch))
        # Buckets in length order, each shuffled: a global batch spans at most two adjacent buckets.
        order = np.concatenate([rng.permutation(b) for b in self.buckets])
        needed = self.num_batches * self.global_batch
        if needed > order.size:
            order = np.concatenate([order, order[: needed - order.size]])
        batches = order[:needed].reshape(self.num_batches, self.global_batch)
        batches = batches[rng.permutation(self.num_batches)]
        micro = 0
        for b in batches:
            for m in range(self.grad_accumulation):
                lo = (m * self.world_size + self.rank) * self.batch_size
                if micro >= skip:
                    yield b[lo : lo + self.batch_size].tolist()
                micro += 1


class EvalSampler:
    """Batches of indices for one rank in evaluation: every index exactly once over all ranks.

    Rank r's shard is the r-th contiguous block (sizes differ by at most one) or, with ``strided``,
    indices r, r + world_size, ... (balanced when the data are sorted by duration). No index is
    repeated to even out the shards, so the WER sums over ranks are exact; ranks may therefore run a
    different number of batches (the last batch may be short).
    """

    def __init__(
        self,
        num_utts: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        strided: bool = False,
    ) -> None:
        _check_rank(world_size, rank)
        self.batch_size = batch_size
        if strided:
            self.indices = list(range(rank, num_utts, world_size))
        else:
            self.indices = list(
                range(rank * num_utts // world_size, (rank + 1) * num_utts // world_size)
            )

    def set_epoch(self, epoch: int) -> None:
        """Evaluation order does not depend on the epoch (kept for a uniform interface)."""

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start : start + self.batch_size]


def _worker_init(worker_id: int) -> None:
    # Features are computed on the device in the main process; a worker only reads and resamples,
    # and more than one intra-op thread per worker oversubscribes the cores.
    torch.set_num_threads(1)


def get_data_loader(
    dataset: AudioDataset,
    batch_size: int,
    *,
    train: bool,
    world_size: int = 1,
    rank: int = 0,
    seed: int = 0,
    num_workers: int = 4,
    bucketing: bool = False,
    num_buckets: int = 10,
    grad_accumulation: int = 1,
) -> DataLoader:
    """A DataLoader of collated batches for this rank: :class:`TrainSampler` (drop last, optionally
    bucketed by duration) when ``train``, else :class:`EvalSampler`."""
    if train:
        sampler: TrainSampler | EvalSampler = TrainSampler(
            len(dataset),
            batch_size,
            world_size,
            rank,
            seed,
            drop_last=True,
            durations=dataset.durations if bucketing else None,
            num_buckets=num_buckets,
            grad_accumulation=grad_accumulation,
        )
    else:
        sampler = EvalSampler(len(dataset), batch_size, world_size, rank)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_init if num_workers > 0 else None,
        persistent_workers=False,  # workers must see the dataset's epoch set before each iteration
        # Its own generator: creating an iterator must not draw from the global torch RNG, or a
        # run resumed mid-epoch would get different dropout/dither draws than an uninterrupted one.
        generator=torch.Generator().manual_seed(seed % 2**63),
    )


class FeatureLoader:
    """Batches of features computed on ``device``: iterating yields
    ``(feats (B,F,T) f32, feat_lens int64, txt (B,S) int64, txt_lens int64)``, all on ``device`` —
    the same tuple as the DALI iterator. ``len()`` is the number of batches per epoch.

    ``features`` (a :class:`common.features.FilterbankFeatures`) is moved to ``device`` and run
    there in fp32 (autocast off) under ``no_grad``; whether dither and SpecAugment run is decided by
    its mode: call ``features.train()`` or ``features.eval()``. ``dtype=torch.float64`` computes
    and yields float64 features instead (exact comparisons of training runs, ``train.py --dtype``).
    """

    def __init__(
        self,
        loader: DataLoader,
        features: torch.nn.Module,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.loader = loader
        self.dtype = dtype
        self.device = torch.device(device)
        self.features = features.to(self.device)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Forward ``epoch`` to the sampler (shuffling) and the dataset (augmentation draws)."""
        for part in (self.loader.batch_sampler, self.loader.sampler, self.loader.dataset):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def utterances(self) -> list[Utterance]:
        """This rank's utterances in the order an evaluation pass yields them, batch after batch
        (what names the predictions). Training loaders reshuffle every epoch: no fixed order."""
        sampler = self.loader.batch_sampler
        if not isinstance(sampler, EvalSampler):
            raise ValueError("only an evaluation loader has a fixed utterance order")
        utts = self.loader.dataset.utts
        return [utts[i] for batch in sampler for i in batch]

    def skip_batches(self, count: int) -> FeatureLoader:
        """Start the next iteration after ``count`` batches (resuming inside an epoch); the
        training sampler skips them without reading audio."""
        sampler = self.loader.batch_sampler
        if count and not hasattr(sampler, "skip_next"):
            raise ValueError("this loader cannot skip batches (only the training sampler can)")
        if count:
            sampler.skip_next(count)
        return self

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        dev = self.device
        for audio, audio_lens, txt, txt_lens in self.loader:
            audio = audio.to(dev, non_blocking=True)
            audio_lens = audio_lens.to(dev, non_blocking=True)
            with torch.no_grad(), torch.autocast(dev.type, enabled=False):
                feats, feat_lens = self.features(audio.to(self.dtype), audio_lens)
            yield (
                feats.to(self.dtype),
                feat_lens.long(),
                txt.to(dev, non_blocking=True).long(),
                txt_lens.to(dev, non_blocking=True).long(),
            )
