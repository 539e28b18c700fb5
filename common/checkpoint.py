"""Checkpoints: upstream-compatible dicts, atomic writes, retention, and resume.

A checkpoint is a ``torch.save``d dict with the keys of upstream's ``common/helpers.py``
``Checkpointer`` (``epoch, step, best_wer, state_dict, ema_state_dict, optimizer, scaler``) plus
this recipe's ``config`` (the resolved YAML dict), ``labels`` and ``train_state`` (RNG states and
the position in the epoch, so a resumed run follows the same trajectory). Everything is stored as
tensors and plain Python values so that files load with ``torch.load(weights_only=True)``.

Files keep upstream's names, ``<Model>_epoch<E>_checkpoint.pt`` and ``<Model>_best_checkpoint.pt``,
plus ``<Model>_epoch<E>_step<S>_checkpoint.pt`` for a save inside epoch E at global step S (an
interrupt or ``EPOCHS_THIS_JOB``-style stop). Only rank 0 writes.

Crash safety (a ``kill -9`` or a power cut at any moment leaves a folder that ``--resume`` continues
from): a checkpoint is written to a hidden temporary file in the same folder, fsynced, renamed over
its name, and the folder is fsynced, so a checkpoint name only ever holds a complete, durable file.
Retention deletes older checkpoints only after that. A temporary file left by a killed write never
matches a checkpoint name, so :meth:`Checkpointer.last_checkpoint` ignores it, and the next save
removes it.

``best_wer`` is stored as a fraction, upstream's unit (0.03 is 3 %), with ``best_wer_unit:
"fraction"``; the training loop works in percent. See :func:`best_wer_to_store` and
:func:`best_wer_from_checkpoint`, which also read upstream's files and this recipe's older ones.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(
    r"^(?P<model>[A-Za-z0-9]+)_epoch(?P<epoch>\d+)(?:_step(?P<step>\d+))?_checkpoint\.pt$"
)
# Pre-2021 checkpoints (NGC jasper_fp16.pt) name the modules differently; the renaming is
# upstream's (common/helpers.py convert_v1_state_dict).
LEGACY_PREFIXES = {
    "jasper_encoder.encoder.": "encoder.layers.",
    "jasper_decoder.decoder_layers.": "decoder.layers.",
}
LEGACY_DROPPED_PREFIXES = ("acoustic_model.", "audio_preprocessor.")
# ".<name>.<random>.tmp" in the checkpoint's folder: what atomic_write writes before the rename
# (older versions of this file used tempfile.mkstemp, whose random part also has "_").
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")

# best_wer: upstream's train.py starts from meta = {"best_wer": 10**6} ("none yet") and stores the
# fraction of words wrong; this recipe's files without best_wer_unit hold percent (1e6: none yet).
NO_BEST_WER = 1e6
BEST_WER_UNIT = "fraction"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message says which."""


def best_wer_to_store(wer_percent: float) -> float:
    """The ``best_wer`` value for a WER in percent: upstream's fraction (3.1 % -> 0.031), or
    :data:`NO_BEST_WER` when there is none yet (``inf`` or NaN)."""
    return wer_percent / 100.0 if math.isfinite(wer_percent) else NO_BEST_WER


def best_wer_entries(wer_percent: float) -> dict[str, float | str]:
    """The checkpoint entries for the best WER so far (percent): ``best_wer`` as a fraction and
    ``best_wer_unit``, which tells :func:`best_wer_from_checkpoint` the unit whatever the value
    (dev WERs above 100 % happen early in training)."""
    return {"best_wer": best_wer_to_store(wer_percent), "best_wer_unit": BEST_WER_UNIT}


def best_wer_from_checkpoint(ckpt: dict[str, Any]) -> float:
    """The best WER a checkpoint records, in percent; ``inf`` when it records none (no entry, or
    upstream's 10**6).

    The unit is ``best_wer_unit`` when present. Files without it are this recipe's older ones,
    which stored percent and always carry ``train_state``, or upstream's, which store a fraction;
    for any other file a value above 1 is taken for percent and one up to 1 for a fraction.
    """
    value = ckpt.get("best_wer")
    if value is None:
        return math.inf
    value = float(value)
    if not math.isfinite(value) or value >= NO_BEST_WER:
        return math.inf
    unit = ckpt.get("best_wer_unit")
    if unit is None:
        unit = "percent" if "train_state" in ckpt or value > 1 else "fraction"
    if unit not in ("fraction", "percent"):
        raise CheckpointError(f"unknown best_wer_unit {unit!r}: expected 'fraction' or 'percent'")
    return 100.0 * value if unit == "fraction" else value


def convert_legacy_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename pre-2021 keys (``jasper_encoder.encoder.*``) and drop preprocessor entries; keys that
    are already current pass unchanged. DDP's ``module.`` prefix is removed too."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith(LEGACY_DROPPED_PREFIXES):
            continue
        for old, new in LEGACY_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint file with ``weights_only=True``. A bare state_dict (a file holding only
    tensors) is returned as ``{"state_dict": ...}``.

    With ``mmap``, tensors are mapped from the file and read from disk only when used (several
    checkpoints fit in memory at once); files in torch's pre-1.6 format, which cannot be mapped,
    are read whole."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    if "state_dict" not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        ckpt = {"state_dict": ckpt}
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: no 'state_dict' entry (keys: {sorted(ckpt)[:10]})")
    if "scaler" not in ckpt and "amp" in ckpt:  # pre-Nov-2021 upstream name (docs/upstream.md#u7)
        ckpt["scaler"] = None
    return ckpt


def model_weights(ckpt: dict[str, Any], ema: bool, path: str | Path = "checkpoint") -> dict:
    """The raw or EMA weights of a loaded checkpoint, legacy keys converted. Falls back to the raw
    weights with a warning when EMA weights were asked for but the checkpoint has none."""
    state = ckpt.get("ema_state_dict") if ema else None
    if ema and state is None:
        log.warning("%s has no EMA weights; using the raw weights", path)
    if state is None:
        state = ckpt["state_dict"]
    return convert_legacy_state_dict(state)


def load_model_state(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path = "checkpoint"
) -> None:
    """Strict load with a message that names the first missing/unexpected/mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model built from the config: "
            + (f"{len(missing)} keys missing (first: {missing[0]})" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"{len(unexpected)} unexpected (first: {unexpected[0]})" if unexpected else "")
            + ". Is MODEL_CONFIG the config this checkpoint was trained with?"
        )
    for key, tensor in own.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path} does not fit the model built from the config: {key} has shape "
                f"{tuple(state_dict[key].shape)} in the checkpoint and {tuple(tensor.shape)} in the model"
            )
    model.load_state_dict(state_dict, strict=True)


def fsync_dir(folder: str | Path) -> None:
    """Make the renames and deletions done in ``folder`` durable. File systems that cannot fsync a
    folder (some network and FUSE mounts answer EINVAL) are left to their own guarantees."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Write ``path`` through a binary file that replaces it only once complete and durable.

    The data goes to ``.<name>.<random>.tmp`` in the same folder (see :data:`TEMP_RE`), which is
    flushed and fsynced, renamed over ``path``, and the folder is fsynced: after a power cut the
    name holds either the old file or the whole new one, and the caller may delete what the new
    file supersedes once this returns. On an error the temporary file is removed; after a kill it
    stays behind (:meth:`Checkpointer.save` removes those of checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # os.open, not tempfile.mkstemp: mkstemp's mode 0600 would survive the rename and make the
    # checkpoint unreadable to others sharing the output folder; 0666 goes through the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename is on disk before anything it supersedes is deleted


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file under ``path``."""
    with atomic_write(path) as f:
        torch.save(obj, f)


class Checkpointer:
    """Saves and finds checkpoints in ``output_dir`` for model name ``model_name`` (Jasper, QuartzNet).

    Retention after each save: the checkpoint just written and the one before it (``keep_last``
    in all), the epochs in ``keep_milestones``, and the best checkpoint (a separate file) are kept;
    older epoch/step checkpoints are removed.
    """

    def __init__(
        self,
        output_dir: str | Path,
        model_name: str = "Jasper",
        keep_milestones: Iterable[int] = (),
        keep_last: int = 2,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.model_name = model_name
        self.keep_milestones = set(keep_milestones)
        self.keep_last = keep_last
        self.unreadable: set[Path] = set()  # skipped by last_checkpoint

    def epoch_path(self, epoch: int) -> Path:
        return self.output_dir / f"{self.model_name}_epoch{epoch}_checkpoint.pt"

    def step_path(self, epoch: int, step: int) -> Path:
        """A save inside ``epoch`` (not yet finished) at global optimizer step ``step``."""
        return self.output_dir / f"{self.model_name}_epoch{epoch}_step{step}_checkpoint.pt"

    @property
    def best_path(self) -> Path:
        return self.output_dir / f"{self.model_name}_best_checkpoint.pt"

    def tracked(self) -> list[Path]:
        """This model's epoch and mid-epoch checkpoints, oldest first by the position in the names:
        a save inside epoch E sorts after the end of epoch E-1 and before the end of epoch E."""
        found = []
        if not self.output_dir.is_dir():
            return found
        for path in self.output_dir.iterdir():
            m = CHECKPOINT_RE.match(path.name)
            if m and m.group("model") == self.model_name:
                epoch, step = int(m.group("epoch")), m.group("step")
                found.append(((epoch, 0, int(step)) if step else (epoch, 1, 0), path))
        found.sort()
        return [path for _, path in found]

    def partial_writes(self) -> list[Path]:
        """Temporary files of this model's checkpoint writes that a killed process left behind."""
        if not self.output_dir.is_dir():
            return []
        found = []
        for path in self.output_dir.iterdir():
            m = TEMP_RE.match(path.name)
            if not m:
                continue
            target = CHECKPOINT_RE.match(m.group("name"))
            if m.group("name") == self.best_path.name or (
                target and target.group("model") == self.model_name
            ):
                found.append(path)
        return sorted(found)

    def save(self, ckpt: dict[str, Any], path: Path) -> None:
        """Write ``ckpt`` to ``path`` (atomically and durably), then apply retention unless it is
        the best checkpoint. Partial writes of earlier, killed saves go first, freeing their space
        (a few GB each for Jasper)."""
        for stale in self.partial_writes():
            stale.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted checkpoint write", stale)
        atomic_save(ckpt, path)
        log.info("saved checkpoint %s", path)
        if path != self.best_path:
            self._apply_retention(keep=path)

    def _apply_retention(self, keep: Path) -> None:
        """Remove checkpoints older than ``keep`` (just written: atomic_save has made it durable)
        beyond the ``keep_last - 1`` readable ones before it, milestones excepted. Files that
        :meth:`last_checkpoint` skipped as unreadable never count among those kept, and files
        that sort after ``keep`` (one such, not yet passed) are left alone."""
        files = self.tracked()
        older = files[: files.index(keep)] if keep in files else files
        readable = [p for p in older if p not in self.unreadable]
        recent = set(readable[max(0, len(readable) - (self.keep_last - 1)) :])
        for path in older:
            m = CHECKPOINT_RE.match(path.name)
            is_milestone = (
                m and not m.group("step") and int(m.group("epoch")) in self.keep_milestones
            )
            if path not in recent and not is_milestone:
                path.unlink(missing_ok=True)
                log.info("removed old checkpoint %s", path)

    def last_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """The checkpoint to resume from, or None: the newest readable epoch/step checkpoint (an
        unreadable newer file is skipped with a warning), unless the best checkpoint was saved at
        a later step (the run was killed between a new best and the next periodic save).
        Temporary files of interrupted writes never count."""
        found = None
        for path in reversed(self.tracked()):
            try:
                found = path, load_checkpoint(path)
                break
            except CheckpointError as e:
                log.warning("skipping unreadable checkpoint: %s", e)
                self.unreadable.add(path)
        return self._newer_best(found) or found

    def _newer_best(
        self, found: tuple[Path, dict[str, Any]] | None
    ) -> tuple[Path, dict[str, Any]] | None:
        """The best checkpoint when it is readable and further on (by global step) than
        ``found``."""
        best = self.best_path
        if not best.is_file():
            return None
        # Modification times only spare loading a best checkpoint written before ``found``; the
        # steps decide (copies with fresh times are loaded and compared).
        if found is not None and best.stat().st_mtime <= found[0].stat().st_mtime:
            return None
        try:
            ckpt = load_checkpoint(best)
        except CheckpointError as e:
            log.warning("skipping unreadable checkpoint: %s", e)
            return None
        if found is not None and int(ckpt.get("step", 0)) <= int(found[1].get("step", 0)):
            return None
        log.info("resuming from %s: saved at a later step than the last periodic checkpoint", best)
        return best, ckpt
