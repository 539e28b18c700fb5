"""YAML model/data configs: loading, validation against the constructors they configure, overrides.

A config file has upstream's schema (docs/upstream.md#config-schema): ``name``, ``labels``,
``input_val`` and ``input_train`` (each with ``audio_dataset`` and ``filterbank_features``), and
``jasper:`` or ``quartznet:`` with ``encoder`` and ``decoder``. The section name selects the
state_dict naming (``conv`` or ``mconv``).

Every section is checked against the signature of the class it builds, so a typo fails at load
with the dotted key and the file in the message. YAML anchors become independent copies, and no
function here modifies the dict it is given: building a model twice from one config gives the same
model (upstream silently lost its dense residuals the second time: docs/upstream.md#u11).
"""

from __future__ import annotations

import ast
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from common.audio import GainPerturbation, ShiftPerturbation, SpeedPerturbation
from common.features import CutoutAugment, FilterbankFeatures, SpecAugment
from jasper.model import Jasper, JasperBlock, JasperDecoderForCTC, JasperEncoder

MODEL_SECTIONS = ("jasper", "quartznet")
TOP_LEVEL_KEYS = ("name", "labels", "input_val", "input_train", *MODEL_SECTIONS)
PERTURBATIONS = {
    "speed_perturbation": SpeedPerturbation,
    "gain_perturbation": GainPerturbation,
    "shift_perturbation": ShiftPerturbation,
}
FEATURE_AUGMENTATIONS = {"spec_augment": SpecAugment, "cutout_augment": CutoutAugment}
# Keys the dataset and the features must agree on (as upstream's jasper/config.py input).
SHARED_INPUT_KEYS = ("sample_rate", "max_duration", "pad_to_max_duration")
# Block arguments the encoder sets itself; a YAML block may not set them.
ENCODER_SET_BLOCK_ARGS = ("infilters", "activation", "residual_panes", "use_conv_masks", "layout")


class ConfigError(ValueError):
    """A config key is unknown, missing or of the wrong type; the message names key and file."""


def _where(source: str | None) -> str:
    return str(source) if source else "config"


def _detach(node: Any) -> Any:
    """Copy dicts and lists without sharing: each YAML alias becomes its own object."""
    if isinstance(node, dict):
        return {k: _detach(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_detach(v) for v in node]
    return node


def load(path: str | Path) -> dict:
    """Read and validate a YAML config. Raises :class:`ConfigError` naming the key and the file."""
    path = Path(path)
    if path.suffix == ".toml":
        raise ConfigError(f"{path}: TOML configs are from the pre-2021 recipe; use a YAML config")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    cfg = _detach(cfg)
    validate(cfg, source=str(path))
    return cfg


def model_section(cfg: dict, source: str | None = None) -> str:
    """``"jasper"`` or ``"quartznet"``: the config's model section."""
    present = [s for s in MODEL_SECTIONS if s in cfg]
    if len(present) != 1:
        raise ConfigError(
            f"{_where(source)}: needs exactly one of {MODEL_SECTIONS}, found {present}"
        )
    return present[0]


def validate(cfg: dict, source: str | None = None) -> None:
    """Check every section; raise :class:`ConfigError` on the first problem."""
    where = _where(source)
    for key in cfg:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{where}: {key}: unknown top-level key (allowed: {TOP_LEVEL_KEYS})")
    labels = cfg.get("labels")
    if not isinstance(labels, list) or not labels:
        raise ConfigError(f"{where}: labels: missing value (a list of single characters)")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or len(label) != 1:
            raise ConfigError(f"{where}: labels[{i}]: {label!r} is not a single character")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: labels: duplicate symbols")
    for split in ("val", "train"):
        if f"input_{split}" in cfg:
            input(cfg, split, source=source)
    encoder(cfg, source=source)
    decoder(cfg, num_classes(labels), source=source)


def num_classes(labels: Sequence[str]) -> int:
    """Output classes of a CTC model over ``labels``: one per label, then the blank as the last
    class (upstream's ``JasperDecoderForCTC`` and NeMo's convention)."""
    return len(labels) + 1


def build_model(
    cfg: dict, labels: Sequence[str] | None = None, source: str | None = None
) -> Jasper:
    """The (CPU, float32) model that ``cfg`` describes, over ``labels`` (default: the config's)."""
    labels = cfg["labels"] if labels is None else labels
    return Jasper(encoder(cfg, source), decoder(cfg, num_classes(labels), source))


def _parameters(target: Callable) -> dict[str, inspect.Parameter]:
    params = inspect.signature(target).parameters
    return {
        n: p
        for n, p in params.items()
        if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _check_section(
    section: Any,
    target: Callable,
    key: str,
    source: str | None,
    fill: bool,
    optional: Iterable[str] = (),
    tolerated: Iterable[str] = (),
    forbidden: Iterable[str] = (),
) -> dict:
    """Validate ``section`` (a mapping) against ``target``'s keyword arguments.

    Unknown keys and required arguments without a value raise; with ``fill``, the result holds every
    argument, defaults included. ``optional`` arguments are supplied by the caller at build time.
    """
    where = _where(source)
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: {key}: expected a mapping, got {type(section).__name__}")
    params = _parameters(target)
    tolerated, forbidden, optional = set(tolerated), set(forbidden), set(optional)
    for name in section:
        if name in forbidden or (name not in params and name not in tolerated):
            allowed = sorted((set(params) - forbidden - optional) | tolerated)
            raise ConfigError(f"{where}: {key}.{name}: unknown key (allowed: {', '.join(allowed)})")
    out = dict(section)
    for name, p in params.items():
        if name in optional or name in forbidden:
            continue
        required = p.default is inspect.Parameter.empty
        if required and out.get(name) is None:
            raise ConfigError(f"{where}: {key}.{name}: missing value")
        if fill and name not in out:
            out[name] = p.default
    return out


def input(cfg: dict, split: str, source: str | None = None) -> tuple[dict, dict]:
    """``(dataset_kw, features_kw)`` for ``split`` ("train" or "val"), defaults filled in.

    ``dataset_kw`` holds the :class:`common.dataset.AudioDataset` arguments of the config (the caller
    adds ``data_dir``, ``manifest_fpaths`` and ``labels``); ``features_kw`` the
    :class:`common.features.FilterbankFeatures` arguments. Perturbation and augmentation sub-dicts
    are filled with their class defaults. The input config is not modified.
    """
    from common.dataset import AudioDataset  # lazily: the data layer is heavier than the model

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    where, key = _where(source), f"input_{split}"
    if key not in cfg:
        raise ConfigError(f"{where}: {key}: missing section")
    section = cfg[key]
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: {key}: expected a mapping")
    for name in section:
        if name not in ("audio_dataset", "filterbank_features"):
            raise ConfigError(
                f"{where}: {key}.{name}: unknown key (allowed: audio_dataset, filterbank_features)"
            )
    dataset_kw = _check_section(
        _detach(section.get("audio_dataset", {})),
        AudioDataset,
        f"{key}.audio_dataset",
        source,
        fill=True,
        optional=("data_dir", "manifest_fpaths", "labels", "seed"),
    )
    features_kw = _check_section(
        _detach(section.get("filterbank_features", {})),
        FilterbankFeatures,
        f"{key}.filterbank_features",
        source,
        fill=True,
    )
    for name, cls in PERTURBATIONS.items():
        if dataset_kw.get(name) is not None:
            dataset_kw[name] = _check_section(
                dataset_kw[name], cls, f"{key}.audio_dataset.{name}", source, fill=True
            )
    for name, cls in FEATURE_AUGMENTATIONS.items():
        if features_kw.get(name) is not None:
            features_kw[name] = _check_section(
                features_kw[name], cls, f"{key}.filterbank_features.{name}", source, fill=True
            )
    for name in SHARED_INPUT_KEYS:
        a, b = dataset_kw[name], features_kw[name]
        same = a == b or (
            isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        )
        if not same:
            raise ConfigError(
                f"{where}: {key}.audio_dataset.{name}={a!r} differs from "
                f"{key}.filterbank_features.{name}={b!r}: set both to the same value"
            )
    return dataset_kw, features_kw


def encoder(cfg: dict, source: str | None = None) -> dict:
    """:class:`jasper.model.JasperEncoder` arguments (a copy; blocks validated, ``layout`` set)."""
    section_name = model_section(cfg, source)
    key = f"{section_name}.encoder"
    section = cfg[section_name]
    if not isinstance(section, dict) or "encoder" not in section:
        raise ConfigError(f"{_where(source)}: {key}: missing section")
    for name in section:
        if name not in ("encoder", "decoder"):
            raise ConfigError(
                f"{_where(source)}: {section_name}.{name}: unknown key (allowed: encoder, decoder)"
            )
    enc = _check_section(
        _detach(section["encoder"]), JasperEncoder, key, source, fill=False, forbidden=("layout",)
    )
    blocks = enc.get("blocks") or []
    if not isinstance(blocks, list) or not blocks:
        raise ConfigError(f"{_where(source)}: {key}.blocks: missing value (a list of blocks)")
    enc["blocks"] = [
        _check_section(
            block,
            JasperBlock,
            f"{key}.blocks[{i}]",
            source,
            fill=False,
            optional=("infilters",),
            tolerated=("residual_dense",),
            forbidden=ENCODER_SET_BLOCK_ARGS,
        )
        for i, block in enumerate(blocks)
    ]
    enc["layout"] = section_name
    return enc


def decoder(cfg: dict, n_classes: int, source: str | None = None) -> dict:
    """:class:`jasper.model.JasperDecoderForCTC` arguments; ``n_classes`` counts the blank."""
    section_name = model_section(cfg, source)
    section = cfg[section_name]
    dec = _detach(section.get("decoder", {}) if isinstance(section, dict) else {})
    return _check_section(
        {"n_classes": n_classes, **dec},
        JasperDecoderForCTC,
        f"{section_name}.decoder",
        source,
        True,
    )


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _same_kind(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    numbers = (int, float)
    if isinstance(old, numbers) and isinstance(new, numbers):
        return True
    return type(old) is type(new)


def apply_config_overrides(cfg: dict, overrides: Iterable[str], source: str | None = None) -> dict:
    """Return a copy of ``cfg`` with each ``"a.b.c=value"`` applied (``value`` parsed as a Python
    literal, else taken as a string; list items by index, e.g. ``jasper.encoder.blocks.3.dropout``).

    A value whose type differs from the current one (numbers excepted) raises; so does a key no
    constructor accepts (the result is validated again).
    """
    out = _detach(cfg)
    where = _where(source)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        dotted, raw = item.split("=", 1)
        value = _parse_value(raw)
        keys = dotted.split(".")
        node: Any = out
        for depth, k in enumerate(keys[:-1]):
            here = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(f"{where}: {here}: no such list item (override {item!r})")
                node = node[int(k)]
            elif isinstance(node, dict):
                if node.get(k) is None:
                    node[k] = {}
                node = node[k]
            else:
                raise ConfigError(f"{where}: {here}: not a mapping (override {item!r})")
        last = keys[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"{where}: {dotted}: no such list item (override {item!r})")
            old, exists = node[int(last)], True
        else:
            old, exists = node.get(last), last in node
        if exists and old is not None and not _same_kind(old, value):
            raise ConfigError(
                f"{where}: {dotted}: override value {value!r} ({type(value).__name__}) does not "
                f"match the current {old!r} ({type(old).__name__})"
            )
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    validate(out, source=source)
    return out


def to_yaml(cfg: dict) -> str:
    """The config as YAML text (what checkpoints and ``.nemo`` files store)."""
    return yaml.safe_dump(
        cfg, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True
    )
