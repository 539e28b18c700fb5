"""The decoding settings a checkpoint carries: how its log-probs are best turned into text.

A model does not decode best with upstream's defaults whatever it is: the quick start's model has
never heard the 16 leading zero frames upstream puts in front of every utterance (WER 89 % with
them, 76 % without, on an early quick-start model), and its LM weights are tuned on its own dev
split. So a checkpoint may hold an entry ``"decoding"``, for example::

    {"decoder": "beam", "pad_leading": 0, "beam_width": 32,
     "lm": "lm/words.3gram.arpa", "lm_alpha": 0.8, "lm_beta": 1.0}

Every key is optional. A relative ``lm`` is relative to the checkpoint's folder, so a results
folder can move as a whole. ``utils/tune_lm.py --checkpoint`` writes the entry after a tuning run
(the LM, the best alpha, beta and beam width, and the ``pad_leading`` the log-probs were made with);
:func:`write` does it from Python.

``inference.py`` (and with it ``inference.sh`` and ``evaluation.sh``) and
:meth:`jasper.transcribe.Transcriber.from_checkpoint` resolve each setting the same way
(:func:`resolve`): what the user gives, else the checkpoint's, else upstream's default
(:data:`DEFAULTS`). ``lm="none"`` from the user means no LM even when the checkpoint names one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from common.checkpoint import CheckpointError, atomic_save, load_checkpoint
from jasper import config
from jasper.decoding import BeamDecoder, GreedyDecoder, build_decoder
from jasper.model import receptive_field

KEY = "decoding"
# Upstream's inference.py defaults (greedy decoding, 16 leading zero frames); the beam settings
# are this recipe's (docs/decoding.md).
DEFAULTS: dict[str, Any] = {
    "decoder": "greedy",
    "pad_leading": 16,
    "beam_width": 32,
    "lm": None,
    "lm_alpha": 0.5,
    "lm_beta": 1.0,
}
DECODERS = ("greedy", "beam")
NO_LM = "none"


def _check(settings: dict, source: str) -> dict:
    """``settings`` with known keys of the right types, or a CheckpointError naming the key."""
    if not isinstance(settings, dict):
        raise CheckpointError(f"{source}: '{KEY}' must be a dict, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise CheckpointError(f"{source}: unknown {KEY}.{unknown[0]} (known: {list(DEFAULTS)})")
    kinds = {"decoder": str, "pad_leading": int, "beam_width": int, "lm": (str, type(None)),
             "lm_alpha": (int, float), "lm_beta": (int, float)}  # fmt: skip
    for key, value in settings.items():
        if not isinstance(value, kinds[key]) or isinstance(value, bool):
            raise CheckpointError(f"{source}: {KEY}.{key} = {value!r} has the wrong type")
    if settings.get("decoder", "greedy") not in DECODERS:
        raise CheckpointError(f"{source}: {KEY}.decoder must be one of {DECODERS}")
    if settings.get("pad_leading", 0) < 0 or settings.get("beam_width", 1) < 1:
        raise CheckpointError(f"{source}: {KEY}.pad_leading >= 0 and beam_width >= 1 expected")
    return dict(settings)


def stored(ckpt: dict, ckpt_path: str | Path) -> dict:
    """The checkpoint's decoding settings (``{}`` when it has none), its LM path made usable from
    the current directory."""
    settings = _check(ckpt.get(KEY) or {}, str(ckpt_path))
    lm = settings.get("lm")
    if lm is not None and not Path(lm).is_absolute():
        settings["lm"] = os.path.normpath(Path(ckpt_path).parent / lm)
    return settings


def read(ckpt_path: str | Path) -> dict:
    """:func:`stored` of a checkpoint file; ``{}`` for NeMo files (they carry none)."""
    if Path(ckpt_path).suffix == ".nemo":
        return {}
    return stored(load_checkpoint(ckpt_path, mmap=True), ckpt_path)


def resolve(given: dict[str, Any], from_checkpoint: dict) -> tuple[dict, list[str]]:
    """Each setting from ``given`` when not None, else ``from_checkpoint``, else :data:`DEFAULTS`.

    Returns ``(settings, keys taken from the checkpoint)``. ``given["lm"] == "none"`` means no LM.
    """
    settings, taken = {}, []
    for key, default in DEFAULTS.items():
        if given.get(key) is not None:
            settings[key] = given[key]
        elif key in from_checkpoint:
            settings[key] = from_checkpoint[key]
            taken.append(key)
        else:
            settings[key] = default
    if settings["lm"] == NO_LM:
        settings["lm"] = None
    return settings, taken


def build(
    settings: dict, cfg: dict, model: nn.Module, **beam_options
) -> GreedyDecoder | BeamDecoder:
    """The decoder of resolved ``settings`` for a model and its config, word times counted from
    the audio's start (the ``pad_leading`` frames subtracted: encoder frames = feature frames /
    the model's stride). ``beam_options`` (lexicon, hotwords, num_workers ...) go to the beam
    decoder."""
    _, features_kw = config.input(cfg, "val")
    stride = receptive_field(model)[1]
    timing = {
        "frame_seconds": features_kw["window_stride"] * stride,
        "offset_frames": settings["pad_leading"] // stride,
    }
    if settings["decoder"] == "greedy":
        return GreedyDecoder(cfg["labels"], **timing)
    return build_decoder(
        "beam", cfg["labels"], beam_width=settings["beam_width"], lm=settings["lm"],
        alpha=settings["lm_alpha"], beta=settings["lm_beta"], **beam_options, **timing,
    )  # fmt: skip


def for_checkpoint(ckpt_path: str | Path, given: dict[str, Any] | None = None) -> tuple[dict, list]:
    """:func:`resolve` of ``given`` against the checkpoint's settings; a beam search's LM must
    exist (FileNotFoundError saying where its path came from and what to do)."""
    settings, taken = resolve(given or {}, read(ckpt_path))
    lm = settings["lm"]
    if settings["decoder"] == "beam" and lm is not None and not Path(lm).is_file():
        if "lm" in taken:
            raise FileNotFoundError(
                f"LM not found: {lm}, which {ckpt_path}'s decoding settings name (an LM is "
                "stored relative to the checkpoint's folder): move it along, or give LM=... "
                "(--lm), or LM=none for beam search without it"
            )
        raise FileNotFoundError(f"LM not found: {lm} (--lm / LM)")
    return settings, taken


def pad_leading(ckpt_path: str | Path, given: int | None = None) -> int:
    """``given``, else the checkpoint's ``pad_leading``, else upstream's 16."""
    return (
        given if given is not None else read(ckpt_path).get("pad_leading", DEFAULTS["pad_leading"])
    )


def write(ckpt_path: str | Path, settings: dict) -> dict:
    """Store ``settings`` (merged over what the checkpoint holds) in the checkpoint, atomically.

    An ``lm`` inside the checkpoint's folder is stored relative to it. Returns what was stored."""
    path = Path(ckpt_path)
    ckpt = load_checkpoint(path)
    merged = {**(ckpt.get(KEY) or {}), **settings}
    lm = merged.get("lm")
    if lm is not None:
        lm_path = Path(lm).resolve()
        folder = path.parent.resolve()
        merged["lm"] = str(
            lm_path.relative_to(folder) if lm_path.is_relative_to(folder) else lm_path
        )
    ckpt[KEY] = _check(merged, str(path))
    atomic_save(ckpt, path)
    return ckpt[KEY]


def describe(settings: dict, taken: list[str]) -> str:
    """One line for the log: the decoder with its settings, and which came from the checkpoint."""
    if settings["decoder"] == "beam":
        lm = settings["lm"]
        what = f"beam search (width {settings['beam_width']}" + (
            f", LM {lm}, alpha {settings['lm_alpha']:g}, beta {settings['lm_beta']:g})"
            if lm
            else ", no LM)"
        )
    else:
        what = "greedy"
    line = f"decoding: {what}, pad_leading {settings['pad_leading']}"
    if settings["decoder"] == "greedy":  # the beam settings play no part
        taken = [key for key in taken if key in ("decoder", "pad_leading")]
    if taken:
        line += f" ({', '.join(taken)} from the checkpoint)"
    return line
