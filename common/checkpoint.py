"""Checkpoints: upstream-compatible dicts, atomic writes, retention, and resume (spec 4.5).

A checkpoint is a ``torch.save``d dict with upstream's keys ``epoch, step, best_wer, state_dict,
ema_state_dict, optimizer, scaler`` plus this recipe's ``config`` (the resolved YAML dict), ``labels``
and ``train_state`` (RNG states and the position in the epoch, so a resumed run follows the same
trajectory). Everything is stored as tensors and plain Python values so that files load with
``torch.load(weights_only=True)``.

Files keep upstream's names, ``<Model>_epoch<E>_checkpoint.pt`` and ``<Model>_best_checkpoint.pt``,
plus ``<Model>_epoch<E>_step<S>_checkpoint.pt`` for a save inside epoch E at global step S (an
interrupt or ``EPOCHS_THIS_JOB``-style stop). Writes go
to a temporary file that is renamed over the target, so a crash never leaves a half-written file
under a checkpoint name; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(
    r"^(?P<model>[A-Za-z0-9]+)_epoch(?P<epoch>\d+)(?:_step(?P<step>\d+))?_checkpoint\.pt$"
)
# Pre-2021 checkpoints (NGC jasper_fp16.pt) name the modules differently (spec 4.4).
LEGACY_PREFIXES = {
    "jasper_encoder.encoder.": "encoder.layers.",
    "jasper_decoder.decoder_layers.": "decoder.layers.",
}
LEGACY_DROPPED_PREFIXES = ("acoustic_model.", "audio_preprocessor.")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message says which."""


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file with ``weights_only=True``. A bare state_dict (a file holding only
    tensors) is returned as ``{"state_dict": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    if "state_dict" not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        ckpt = {"state_dict": ckpt}
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: no 'state_dict' entry (keys: {sorted(ckpt)[:10]})")
    if "scaler" not in ckpt and "amp" in ckpt:  # pre-Nov-2021 upstream name (spec 14.7)
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


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Write ``path`` through a binary file that replaces it only once complete: a temporary file
    in the same folder, flushed and fsynced, then renamed over ``path``. On an error (or a kill) the
    old file, if any, is untouched and the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file under ``path``."""
    with atomic_write(path) as f:
        torch.save(obj, f)


class Checkpointer:
    """Saves and finds checkpoints in ``output_dir`` for model name ``model_name`` (Jasper, QuartzNet).

    Retention after each save: the two newest epoch/step checkpoints, the epochs in
    ``keep_milestones``, and the best checkpoint (a separate file) are kept; older ones are removed.
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

    def save(self, ckpt: dict[str, Any], path: Path) -> None:
        atomic_save(ckpt, path)
        log.info("saved checkpoint %s", path)
        if path != self.best_path:
            self._apply_retention(keep=path)

    def _apply_retention(self, keep: Path) -> None:
        files = self.tracked()
        newest = set(files[-self.keep_last :]) | {keep}
        for path in files:
            m = CHECKPOINT_RE.match(path.name)
            is_milestone = (
                m and not m.group("step") and int(m.group("epoch")) in self.keep_milestones
            )
            if path not in newest and not is_milestone:
                path.unlink(missing_ok=True)
                log.info("removed old checkpoint %s", path)

    def last_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest readable checkpoint; an unreadable newer file is skipped with a warning."""
        for path in reversed(self.tracked()):
            try:
                return path, load_checkpoint(path)
            except CheckpointError as e:
                log.warning("skipping unreadable checkpoint: %s", e)
        return None
