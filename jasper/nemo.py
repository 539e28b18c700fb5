"""NVIDIA NeMo ``.nemo`` checkpoints of QuartzNet and Jasper, in both directions.

A ``.nemo`` file is a tar archive (uncompressed since NeMo 1.7, tar.gz before; member names with or
without a leading ``./``) holding ``model_config.yaml`` (NeMo's Hydra config of an
``EncDecCTCModel``) and ``model_weights.ckpt`` (a ``torch.save``d flat state_dict). Upstream's
counterpart is QuartzNet's ``nemo_dle_model_converter.py``.

- :func:`load` turns one into this recipe's config (``quartznet:`` section for time-channel
  separable models, ``jasper:`` for dense or plain non-separable ones) and state_dict.
- :func:`save` writes one that NeMo's ``EncDecCTCModel.restore_from`` accepts: NeMo's config schema
  as NeMo 3.0.0 writes it, the ``.conv.`` infix of NeMo's masked convolutions, and the
  preprocessor buffers (``window``, ``fb``) NeMo refuses to load without.

Key names (ours <-> NeMo's): ``encoder.layers.{b}.{mconv|conv}.{i}[.conv].*`` <->
``encoder.encoder.{b}.mconv.{i}[.conv].*`` (NeMo calls the sub-block list ``mconv`` in both model
families and wraps every masked conv's ``nn.Conv1d`` in ``.conv``), ``decoder.layers.0.*`` <->
``decoder.decoder_layers.0.*``. The map is derived from the model the config builds, so a key the
model does not have can never be written or read silently.

The front end: NeMo's preprocessor differs from DeepLearningExamples' in three settings (frames =
samples // hop, ``log(x + 2**-24)``, zero-padded STFT: ``tests/data/reference/nemo/README.md``).
A config read from a ``.nemo`` sets ``length_rounding: floor``, ``log_zero_guard`` and
``stft_pad_mode: constant``, so :class:`common.features.FilterbankFeatures` reproduces NeMo's
features (upstream's converter ignored these differences). NeMo cannot express the other choices;
:func:`save` warns when a model trained on them is written.

Not carried over: training-only settings other than SpecAugment (speed perturbation, optimiser),
and NeMo's ``optim`` and ``decoding`` sections (NeMo fills in its defaults for a missing
``decoding``).
"""

from __future__ import annotations

import io
import logging
import math
import re
import tarfile
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from common.checkpoint import atomic_write, convert_legacy_state_dict, model_weights
from common.features import FilterbankFeatures
from jasper import config
from jasper.model import Jasper, JasperBlock, MaskedConv1d

log = logging.getLogger(__name__)

CONFIG_MEMBER = "model_config.yaml"
WEIGHTS_MEMBER = "model_weights.ckpt"
MODEL_TARGET = "nemo.collections.asr.models.ctc_models.EncDecCTCModel"
PREPROCESSOR_TARGET = "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor"
SPEC_AUGMENT_TARGET = "nemo.collections.asr.modules.SpectrogramAugmentation"
ENCODER_TARGET = "nemo.collections.asr.modules.ConvASREncoder"
DECODER_TARGET = "nemo.collections.asr.modules.ConvASRDecoder"
# NeMo's preprocessor buffers, written from our FilterbankFeatures, dropped when reading.
PREPROCESSOR_PREFIX = "preprocessor."
PREPROCESSOR_BUFFERS = {
    "preprocessor.featurizer.window": "window",
    "preprocessor.featurizer.fb": "fb",
}

# NeMo's AudioToMelSpectrogramPreprocessor defaults (identical in NeMo 1.0 to 3.0).
NEMO_LOG_ZERO_GUARD = 2.0**-24
NEMO_PREPROCESSOR_DEFAULTS: dict[str, Any] = {
    "sample_rate": 16000,
    "window_size": 0.02,
    "window_stride": 0.01,
    "n_window_size": None,
    "n_window_stride": None,
    "window": "hann",
    "normalize": "per_feature",
    "n_fft": None,
    "preemph": 0.97,
    "features": 64,
    "lowfreq": 0,
    "highfreq": None,
    "log": True,
    "log_zero_guard_type": "add",
    "log_zero_guard_value": NEMO_LOG_ZERO_GUARD,
    "dither": 1e-5,
    "pad_to": 16,
    "frame_splicing": 1,
    "exact_pad": False,
    "pad_value": 0,
    "mag_power": 2.0,
    "mel_norm": "slaney",
}
# Preprocessor keys that do not change evaluation features: training noise, and switches NeMo 3.0
# accepts but ignores (stft_conv and stft_exact_pad are forced off, with a warning).
NEMO_PREPROCESSOR_IGNORED = (
    "_target_", "cls", "target", "stft_conv", "stft_exact_pad", "use_torchaudio", "rng",
    "nb_augmentation_prob", "nb_max_freq", "use_grads", "max_duration", "pad_min_duration",
    "pad_direction",
)  # fmt: skip
# NeMo ConvASREncoder block options this model does not implement, with the value that means "off".
NEMO_BLOCK_OFF = {
    "heads": -1,
    "residual_mode": "add",
    "se": False,
    "future_context": -1,
}
NEMO_BLOCK_IGNORED_WHEN_SE_OFF = ("se_reduction_ratio", "se_context_size", "se_interpolation_mode")
# Dataset settings as NeMo 3.0.0 writes them for a model without data (the reference file's).
NEMO_DATASET_DEFAULTS = {"batch_size": 32, "num_workers": 0, "pin_memory": False}


class NemoFormatError(ValueError):
    """A ``.nemo`` file is unreadable, incomplete or describes a model this recipe cannot build;
    the message names the file and what is wrong."""


# --------------------------------------------------------------------------------------------------
# The archive


def _member_key(name: str) -> str:
    """``./model_config.yaml``, ``model_config.yaml`` and ``/model_config.yaml`` name one member."""
    return re.sub(r"^(\./|/)+", "", name)


def read_archive(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """NeMo's raw config dict and state_dict from a ``.nemo`` (tar or tar.gz)."""
    path = Path(path)
    if not path.is_file():
        raise NemoFormatError(f"{path}: no such .nemo file")
    try:
        tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed below); detects gzip or plain tar
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise NemoFormatError(
            f"{path}: not a .nemo archive (expected a tar or tar.gz file): {e}"
        ) from e
    data: dict[str, bytes] = {}
    with tar:
        reading = "the first header"
        try:
            members = {}
            for info in tar:  # reads every header; a cut-off file fails here or below
                reading = f"the data of {info.name} or the next header"
                if info.isfile():
                    members[_member_key(info.name)] = info
            missing = [n for n in (CONFIG_MEMBER, WEIGHTS_MEMBER) if n not in members]
            if missing:
                raise NemoFormatError(
                    f"{path}: incomplete .nemo archive: missing {', '.join(missing)} "
                    f"(members: {', '.join(sorted(members)) or 'none'})"
                )
            for name in (CONFIG_MEMBER, WEIGHTS_MEMBER):
                reading = f"the data of {members[name].name}"
                f = tar.extractfile(members[name])
                assert f is not None  # a regular file member always has data
                data[name] = f.read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise NemoFormatError(
                f"{path}: truncated or corrupt archive (failed reading {reading}): {e}"
            ) from e

    try:
        nemo_cfg = yaml.safe_load(data[CONFIG_MEMBER].decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise NemoFormatError(f"{path}: {CONFIG_MEMBER} is not valid YAML: {e}") from e
    if not isinstance(nemo_cfg, dict):
        raise NemoFormatError(f"{path}: {CONFIG_MEMBER} does not hold a mapping")
    try:
        weights = torch.load(
            io.BytesIO(data[WEIGHTS_MEMBER]), map_location="cpu", weights_only=True
        )
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise NemoFormatError(
            f"{path}: {WEIGHTS_MEMBER} is not a readable state_dict: {type(e).__name__}: {e}"
        ) from e
    if isinstance(weights, dict) and isinstance(weights.get("state_dict"), dict):
        weights = weights["state_dict"]
    if not isinstance(weights, dict) or not all(
        isinstance(v, torch.Tensor) for v in weights.values()
    ):
        raise NemoFormatError(f"{path}: {WEIGHTS_MEMBER} does not hold a state_dict of tensors")
    return _resolve_interpolations(nemo_cfg, nemo_cfg), dict(weights)


_INTERPOLATION = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


def _lookup(root: dict, keys: list[str]) -> Any:
    node: Any = root
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _resolve_interpolations(node: Any, root: dict, depth: int = 0) -> Any:
    """Replace OmegaConf values of the form ``${a.b}`` (absolute, whole-value) by what they point
    to; NeMo resolves them when saving, but files written by hand or by old versions may not.
    ``${model.x}`` (a training config's spelling) is looked up as ``x`` when there is no ``model``."""
    if isinstance(node, dict):
        return {k: _resolve_interpolations(v, root, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_interpolations(v, root, depth) for v in node]
    if isinstance(node, str) and depth < 8 and (m := _INTERPOLATION.match(node)):
        keys = m.group(1).split(".")
        target = _lookup(root, keys)
        if target is None and keys[0] == "model":
            target = _lookup(root, keys[1:])
        if target is not None:
            return _resolve_interpolations(target, root, depth + 1)
    return node


def _write_archive(
    path: Path, nemo_cfg: dict, weights: dict[str, torch.Tensor], compress: bool
) -> None:
    """The layout NeMo 3.0.0 writes: a ``./`` folder entry, then the config and the weights."""
    config_bytes = yaml.safe_dump(nemo_cfg, sort_keys=False, allow_unicode=True).encode("utf-8")
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    now = time.time()

    def entry(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = size, now
        info.type, info.mode = (tarfile.DIRTYPE, 0o700) if directory else (tarfile.REGTYPE, 0o644)
        return info

    with atomic_write(path) as f, tarfile.open(fileobj=f, mode="w:gz" if compress else "w:") as tar:
        tar.addfile(entry("./", directory=True))
        tar.addfile(entry(f"./{CONFIG_MEMBER}", len(config_bytes)), io.BytesIO(config_bytes))
        tar.addfile(entry(f"./{WEIGHTS_MEMBER}", buffer.tell()), io.BytesIO(buffer.getvalue()))


# --------------------------------------------------------------------------------------------------
# Configs


def _section(nemo_cfg: dict, name: str, source: str, required: bool = True) -> tuple[dict, str]:
    """``(arguments, target class)`` of a NeMo module section, in the ``_target_`` form or in the
    older ``cls:``/``params:`` form."""
    sec = nemo_cfg.get(name)
    if sec is None and not required:
        return {}, ""
    if not isinstance(sec, dict):
        raise NemoFormatError(f"{source}: {CONFIG_MEMBER}: {name}: missing section")
    args = {k: v for k, v in sec.items() if k not in ("_target_", "cls", "params")}
    if isinstance(sec.get("params"), dict):
        args = {**sec["params"], **args}
    return args, str(sec.get("_target_") or sec.get("cls") or "")


def _class_name(target: str) -> str:
    return target.rsplit(".", 1)[-1]


def _expect_target(target: str, expected: str, key: str, source: str) -> None:
    if target and _class_name(target) != _class_name(expected):
        raise NemoFormatError(
            f"{source}: {CONFIG_MEMBER}: {key} is {target}; only {_class_name(expected)} is supported"
        )


def _features_from_nemo(pre: dict, source: str) -> dict:
    """``filterbank_features`` arguments reproducing NeMo's preprocessor ``pre``."""
    where = f"{source}: {CONFIG_MEMBER}: preprocessor"
    unknown = set(pre) - set(NEMO_PREPROCESSOR_DEFAULTS) - set(NEMO_PREPROCESSOR_IGNORED)
    if unknown:
        log.warning("%s: ignoring settings unknown to this converter: %s", where, sorted(unknown))
    p = {
        **NEMO_PREPROCESSOR_DEFAULTS,
        **{k: v for k, v in pre.items() if k in NEMO_PREPROCESSOR_DEFAULTS},
    }
    fixed = {
        "log_zero_guard_type": "add",
        "exact_pad": False,
        "pad_value": 0,
        "mag_power": 2.0,
        "mel_norm": "slaney",
        "frame_splicing": 1,
    }
    for key, value in fixed.items():
        if p[key] != value:
            raise NemoFormatError(
                f"{where}.{key}={p[key]!r}: not supported (common.features.FilterbankFeatures "
                f"implements {key}={value!r} only)"
            )
    sample_rate = int(p["sample_rate"])
    window_size = (
        p["window_size"] if p["n_window_size"] is None else p["n_window_size"] / sample_rate
    )
    window_stride = (
        p["window_stride"] if p["n_window_stride"] is None else p["n_window_stride"] / sample_rate
    )
    guard = p["log_zero_guard_value"]
    if isinstance(guard, str):  # NeMo accepts "tiny" and "eps" for torch.finfo(float32)'s values
        if guard not in ("tiny", "eps"):
            raise NemoFormatError(
                f"{where}.log_zero_guard_value={guard!r}: use a number, tiny or eps"
            )
        guard = float(getattr(torch.finfo(torch.float32), guard))
    pad_to = p["pad_to"]
    if not isinstance(pad_to, int):
        raise NemoFormatError(f"{where}.pad_to={pad_to!r}: only a frame count is supported")
    normalize = p["normalize"] if p["normalize"] else "none"
    if not isinstance(normalize, str):
        raise NemoFormatError(f"{where}.normalize: fixed mean/std statistics are not supported")
    return {
        "normalize": normalize,
        "sample_rate": sample_rate,
        "window_size": float(window_size),
        "window_stride": float(window_stride),
        "window": p["window"],
        "n_filt": int(p["features"]),
        "n_fft": p["n_fft"],
        "frame_splicing": 1,
        "dither": float(p["dither"]),
        "pad_align": pad_to,
        "preemph": float(p["preemph"] or 0.0),
        "lowfreq": float(p["lowfreq"] or 0),
        "highfreq": None if p["highfreq"] is None else float(p["highfreq"]),
        "log": bool(p["log"]),
        # NeMo's preprocessor, not DeepLearningExamples': tests/data/reference/nemo/README.md.
        "length_rounding": "floor",
        "log_zero_guard": float(guard),
        "stft_pad_mode": "constant",
    }


def _augmentation_from_nemo(aug: dict) -> dict:
    """``spec_augment`` / ``cutout_augment`` arguments from NeMo's SpectrogramAugmentation."""
    out: dict[str, dict] = {}
    freq_masks, time_masks = int(aug.get("freq_masks", 0)), int(aug.get("time_masks", 0))
    if freq_masks or time_masks:
        time_width = aug.get("time_width", 10)
        if not isinstance(time_width, int):  # NeMo: a float is a fraction of the utterance
            log.warning("spec_augment.time_width=%r (a fraction) is read as 10 frames", time_width)
            time_width = 10
        out["spec_augment"] = {
            "freq_masks": freq_masks,
            "max_freq": int(aug.get("freq_width", 10)),
            "time_masks": time_masks,
            "max_time": int(time_width),
        }
    if int(aug.get("rect_masks", 0)):
        out["cutout_augment"] = {
            "masks": int(aug["rect_masks"]),
            "min_freq": 0,
            "max_freq": int(aug.get("rect_freq", 20)),
            "min_time": 0,
            "max_time": int(aug.get("rect_time", 5)),
        }
    return out


def _block_from_nemo(block: Any, i: int, enc: dict, source: str) -> dict:
    where = f"{source}: {CONFIG_MEMBER}: encoder.jasper[{i}]"
    if not isinstance(block, dict):
        raise NemoFormatError(f"{where}: expected a mapping")
    for key in ("filters", "repeat", "kernel", "stride", "dilation", "dropout", "residual"):
        if key not in block:
            raise NemoFormatError(f"{where}.{key}: missing value")
    for key, off in NEMO_BLOCK_OFF.items():
        # A block's residual_mode defaults to the encoder's.
        value = block.get(key, enc.get(key, off) if key == "residual_mode" else off)
        if value != off:
            raise NemoFormatError(f"{where}.{key}={value!r}: not supported by jasper.model")
    kernel, stride = [int(k) for k in block["kernel"]], [int(s) for s in block["stride"]]
    dilation = [int(d) for d in block["dilation"]]
    if block.get("stride_last", False) and stride[0] > 1 and int(block["repeat"]) > 1:
        raise NemoFormatError(
            f"{where}.stride_last: a stride in the last sub-block only is not supported"
        )
    if block["residual"] and stride[0] > 1:
        raise NemoFormatError(f"{where}: a residual block with stride {stride[0]} is not supported")
    known = {
        "filters", "repeat", "kernel", "stride", "dilation", "dropout", "residual", "separable",
        "groups", "residual_dense", "kernel_size_factor", "stride_last", *NEMO_BLOCK_OFF,
        *NEMO_BLOCK_IGNORED_WHEN_SE_OFF,
    }  # fmt: skip
    unknown = sorted(set(block) - known)
    if unknown:
        raise NemoFormatError(
            f"{where}: unknown option(s) {unknown}: cannot tell whether they matter"
        )
    out: dict[str, Any] = {
        "filters": int(block["filters"]),
        "repeat": int(block["repeat"]),
        "kernel_size": kernel,
        "stride": stride,
        "dilation": dilation,
        "dropout": float(block["dropout"]),
        "residual": bool(block["residual"]),
    }
    if block.get("separable", False):
        out["separable"] = True
    if int(block.get("groups", 1)) != 1:
        out["groups"] = int(block["groups"])
    if float(block.get("kernel_size_factor", 1.0)) != 1.0:
        out["kernel_size_factor"] = float(block["kernel_size_factor"])
    normalization = enc.get("normalization_mode", "batch")
    if normalization != "batch":
        out["normalization"] = normalization
    if int(enc.get("norm_groups", -1)) != -1:
        out["norm_groups"] = int(enc["norm_groups"])
    if block.get("residual_dense", False):
        out["residual_dense"] = True
    return out


def config_from_nemo(nemo_cfg: dict, source: str | Path = "model.nemo") -> dict:
    """This recipe's config (validated) for NeMo's ``model_config.yaml`` contents ``nemo_cfg``."""
    source = str(source)
    target = str(nemo_cfg.get("target") or "")
    if target and _class_name(target) != "EncDecCTCModel":
        raise NemoFormatError(
            f"{source}: {CONFIG_MEMBER}: target is {target}; only character-based CTC models "
            f"(EncDecCTCModel) with a ConvASREncoder are supported"
        )
    pre, pre_target = _section(nemo_cfg, "preprocessor", source)
    _expect_target(pre_target, PREPROCESSOR_TARGET, "preprocessor._target_", source)
    enc, enc_target = _section(nemo_cfg, "encoder", source)
    _expect_target(enc_target, ENCODER_TARGET, "encoder._target_", source)
    dec, dec_target = _section(nemo_cfg, "decoder", source)
    _expect_target(dec_target, DECODER_TARGET, "decoder._target_", source)
    aug, _ = _section(nemo_cfg, "spec_augment", source, required=False)

    labels = dec.get("vocabulary")
    if not isinstance(labels, list) or not labels:
        raise NemoFormatError(f"{source}: {CONFIG_MEMBER}: decoder.vocabulary: missing value")
    labels = [str(c) for c in labels]
    top_labels = nemo_cfg.get("labels")
    if top_labels is not None and [str(c) for c in top_labels] != labels:
        raise NemoFormatError(
            f"{source}: {CONFIG_MEMBER}: labels ({len(top_labels)}) differ from decoder.vocabulary "
            f"({len(labels)}): the decoder's vocabulary defines the outputs"
        )
    if dec.get("add_blank", True) is not True:
        raise NemoFormatError(
            f"{source}: {CONFIG_MEMBER}: decoder.add_blank: a CTC blank is required"
        )
    num_classes = dec.get("num_classes")
    if num_classes not in (None, -1, 0) and int(num_classes) != len(labels):
        raise NemoFormatError(
            f"{source}: {CONFIG_MEMBER}: decoder.num_classes={num_classes} but the vocabulary has "
            f"{len(labels)} symbols (NeMo counts without the blank)"
        )

    blocks_in = enc.get("jasper")
    if not isinstance(blocks_in, list) or not blocks_in:
        raise NemoFormatError(f"{source}: {CONFIG_MEMBER}: encoder.jasper: missing list of blocks")
    if int(enc.get("frame_splicing", 1)) != 1 or enc.get("quantize", False):
        raise NemoFormatError(
            f"{source}: {CONFIG_MEMBER}: encoder: frame splicing and quantisation are not supported"
        )
    blocks = [_block_from_nemo(b, i, enc, source) for i, b in enumerate(blocks_in)]
    features = _features_from_nemo(pre, source)
    if "feat_in" not in enc or int(enc["feat_in"]) != features["n_filt"]:
        raise NemoFormatError(
            f"{source}: {CONFIG_MEMBER}: encoder.feat_in={enc.get('feat_in')!r} differs from "
            f"preprocessor.features={features['n_filt']}"
        )
    dec_in = dec.get("feat_in") or blocks[-1]["filters"]
    if int(dec_in) != blocks[-1]["filters"]:
        raise NemoFormatError(
            f"{source}: {CONFIG_MEMBER}: decoder.feat_in={dec_in} differs from the last block's "
            f"filters ({blocks[-1]['filters']})"
        )

    def dataset(name: str) -> dict:
        ds = nemo_cfg.get(name) if isinstance(nemo_cfg.get(name), dict) else {}
        out = {
            "sample_rate": features["sample_rate"],
            "trim_silence": bool(ds.get("trim_silence", False)),
            "normalize_transcripts": True,
        }
        if ds.get("max_duration") is not None:
            out["max_duration"] = float(ds["max_duration"])
        if ds.get("min_duration") is not None:
            out["min_duration"] = float(ds["min_duration"])
        return out

    train_dataset = dataset("train_ds")
    train_features = {**features, **_augmentation_from_nemo(aug)}
    if "max_duration" in train_dataset:
        train_features["max_duration"] = train_dataset["max_duration"]
    val_dataset = {k: v for k, v in dataset("validation_ds").items() if k != "max_duration"}

    separable = any(b.get("separable", False) for b in blocks)
    section = "quartznet" if separable else "jasper"
    name = nemo_cfg.get("name")
    cfg = {
        "name": name
        if isinstance(name, str) and name
        else ("QuartzNet" if separable else "Jasper"),
        "labels": labels,
        "input_val": {"audio_dataset": val_dataset, "filterbank_features": features},
        "input_train": {"audio_dataset": train_dataset, "filterbank_features": train_features},
        section: {
            "encoder": {
                "init": enc.get("init_mode") or "xavier_uniform",
                "in_feats": int(enc["feat_in"]),
                "frame_splicing": 1,
                "activation": str(enc.get("activation", "relu")),
                "use_conv_masks": bool(enc.get("conv_mask", True)),
                "blocks": blocks,
            },
            "decoder": {"in_feats": int(dec_in), "init": dec.get("init_mode") or "xavier_uniform"},
        },
    }
    try:
        config.validate(cfg, source=f"{source} (converted config)")
    except config.ConfigError as e:
        raise NemoFormatError(str(e)) from e
    return cfg


def _nemo_block(block: dict) -> dict:
    """NeMo's ``encoder.jasper`` entry for one of our block dicts (keys in NeMo's order)."""
    out: dict[str, Any] = {
        "dilation": [_first(block.get("dilation", 1))],
        "dropout": float(block.get("dropout", 0.2)),
        "filters": int(block["filters"]),
        "kernel": [_first(block.get("kernel_size", 11))],
        "repeat": int(block.get("repeat", 3)),
        "residual": bool(block.get("residual", True)),
        "stride": [_first(block.get("stride", 1))],
    }
    if block.get("separable", False):
        out["separable"] = True
    if block.get("residual_dense", False):
        out["residual_dense"] = True
    if int(block.get("groups", 1)) != 1:
        out["groups"] = int(block["groups"])
    if float(block.get("kernel_size_factor", 1.0)) != 1.0:
        out["kernel_size_factor"] = float(block["kernel_size_factor"])
    return out


def _first(value: Any) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def config_to_nemo(cfg: dict) -> dict:
    """NeMo's ``model_config.yaml`` contents for our (validated) config ``cfg``."""
    config.validate(cfg)
    if "input_val" not in cfg:
        raise NemoFormatError(
            "the config has no input_val section: the .nemo needs its feature settings"
        )
    section = config.model_section(cfg)
    enc = cfg[section]["encoder"]
    blocks = [dict(b) for b in enc["blocks"]]
    if any(b.get("padding", "same") != "same" for b in blocks):
        raise NemoFormatError("NeMo's ConvASREncoder has 'same' padding only")
    norms = {(b.get("normalization", "batch"), int(b.get("norm_groups", -1))) for b in blocks}
    if len(norms) > 1:
        raise NemoFormatError(
            f"NeMo sets one normalization for all blocks; this config has {sorted(norms)}"
        )
    normalization, norm_groups = norms.pop()

    val_ds, feats = config.input(cfg, "val")
    if feats["length_rounding"] != "floor" or feats["stft_pad_mode"] != "constant":
        log.warning(
            "NeMo's preprocessor computes samples // hop frames from a zero-padded STFT; this model's "
            "front end uses length_rounding=%s and stft_pad_mode=%s (DeepLearningExamples'), so "
            "NeMo's features differ slightly at the utterance edges",
            feats["length_rounding"],
            feats["stft_pad_mode"],
        )
    sample_rate = int(feats["sample_rate"])
    preprocessor: dict[str, Any] = {
        "_target_": PREPROCESSOR_TARGET,
        "normalize": None if feats["normalize"] == "none" else feats["normalize"],
        "window_size": feats["window_size"],
        "sample_rate": sample_rate,
        "window_stride": feats["window_stride"],
        "window": feats["window"],
        "features": int(feats["n_filt"]),
        "n_fft": feats["n_fft"],
        "frame_splicing": 1,
        "dither": float(feats["dither"]),
        "pad_to": int(feats["pad_align"]),
    }
    optional = {
        "preemph": float(feats["preemph"] or 0.0),
        "lowfreq": feats["lowfreq"],
        "highfreq": feats["highfreq"],
        "log": feats["log"],
        "log_zero_guard_value": float(feats["log_zero_guard"]),
    }
    for key, value in optional.items():  # written only where they differ from NeMo's defaults
        if value != NEMO_PREPROCESSOR_DEFAULTS[key]:
            preprocessor[key] = value

    labels = list(cfg["labels"])
    train_ds_extra: dict[str, Any] = {}
    augmentation: dict[str, Any] = {}
    train_trim = bool(val_ds["trim_silence"])
    if "input_train" in cfg:
        train_ds, train_feats = config.input(cfg, "train")
        train_trim = bool(train_ds["trim_silence"])
        if math.isfinite(train_ds["max_duration"]):
            train_ds_extra["max_duration"] = float(train_ds["max_duration"])
        spec = train_feats.get("spec_augment")
        if spec and (spec["freq_masks"] or spec["time_masks"]):
            augmentation.update(
                freq_masks=spec["freq_masks"],
                freq_width=spec["max_freq"],
                time_masks=spec["time_masks"],
                time_width=spec["max_time"],
            )
        cutout = train_feats.get("cutout_augment")
        if cutout and cutout["masks"]:
            augmentation.update(
                rect_masks=cutout["masks"],
                rect_freq=cutout["max_freq"],
                rect_time=cutout["max_time"],
            )

    def dataset(shuffle: bool, trim: bool, extra: dict) -> dict:
        return {
            "manifest_filepath": None,
            "sample_rate": sample_rate,
            "labels": labels,
            **NEMO_DATASET_DEFAULTS,
            "shuffle": shuffle,
            "trim_silence": trim,
            **extra,
        }

    if int(enc.get("frame_splicing", 1)) != 1:
        raise NemoFormatError("encoder.frame_splicing must be 1 (as the features' frame_splicing)")
    encoder: dict[str, Any] = {
        "_target_": ENCODER_TARGET,
        "feat_in": int(enc["in_feats"]),
        "activation": enc["activation"],
        "conv_mask": bool(enc.get("use_conv_masks", False)),
    }
    if enc.get("init", "xavier_uniform") != "xavier_uniform":
        encoder["init_mode"] = enc["init"]
    if normalization != "batch":
        encoder["normalization_mode"] = normalization
    if norm_groups != -1:
        encoder["norm_groups"] = norm_groups
    encoder["jasper"] = [_nemo_block(b) for b in blocks]
    dec = cfg[section].get("decoder", {})
    decoder: dict[str, Any] = {
        "_target_": DECODER_TARGET,
        "feat_in": int(dec.get("in_feats", blocks[-1]["filters"])),
        "num_classes": len(labels),  # NeMo counts without the blank and appends it last, as we do
        "vocabulary": labels,
    }
    if dec.get("init", "xavier_uniform") != "xavier_uniform":
        decoder["init_mode"] = dec["init"]

    out: dict[str, Any] = {
        "name": str(cfg.get("name") or ("QuartzNet" if section == "quartznet" else "Jasper")),
        "sample_rate": sample_rate,
        "labels": labels,
        "train_ds": dataset(True, train_trim, train_ds_extra),
        "validation_ds": dataset(False, bool(val_ds["trim_silence"]), {}),
        "test_ds": dataset(False, bool(val_ds["trim_silence"]), {}),
        "preprocessor": preprocessor,
    }
    if augmentation:
        out["spec_augment"] = {"_target_": SPEC_AUGMENT_TARGET, **augmentation}
    out.update(encoder=encoder, decoder=decoder, target=MODEL_TARGET)
    return out


# --------------------------------------------------------------------------------------------------
# Weights


def _meta_model(cfg: dict) -> Jasper:
    with torch.device("meta"):
        return config.build_model(cfg)


def key_map(cfg: dict) -> dict[str, str]:
    """Our state_dict key -> NeMo's, in our model's order, for the model ``cfg`` builds."""
    model = _meta_model(cfg)
    out = {}
    for key in model.state_dict():
        module_path, tensor_name = key.rsplit(".", 1)
        module = model.get_submodule(module_path)
        parts = module_path.split(".")
        if parts[:2] == ["encoder", "layers"]:
            parts[1] = "encoder"
            block = model.encoder.layers[int(parts[2])]
            if isinstance(block, JasperBlock) and parts[3] == block.conv_name:
                parts[3] = "mconv"  # NeMo's name in both model families
        elif parts[:2] == ["decoder", "layers"]:
            parts[1] = "decoder_layers"
        if isinstance(module, MaskedConv1d):
            parts.append("conv")  # NeMo's MaskedConv1d wraps an nn.Conv1d
        out[key] = ".".join([*parts, tensor_name])
    return out


def _check_state_dict(
    state_dict: Mapping[str, torch.Tensor], cfg: dict, names: Mapping[str, str], what: str
) -> None:
    """Raise NemoFormatError naming the first missing, unexpected or mis-shaped key; ``names``
    maps our keys to the names ``state_dict`` uses."""
    model_shapes = {k: tuple(v.shape) for k, v in _meta_model(cfg).state_dict().items()}
    expected = {names[k]: shape for k, shape in model_shapes.items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} keys missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise NemoFormatError(f"{what} does not match the model of its config: " + "; ".join(parts))
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise NemoFormatError(
                f"{what} does not match the model of its config: {key} has shape "
                f"{tuple(state_dict[key].shape)}, the model expects {shape}"
            )


def state_dict_from_nemo(
    nemo_state: Mapping[str, torch.Tensor], cfg: dict, source: str | Path = "model.nemo"
) -> dict[str, torch.Tensor]:
    """NeMo's weights renamed to our keys (preprocessor buffers dropped), checked against ``cfg``."""
    names = key_map(cfg)
    weights = {k: v for k, v in nemo_state.items() if not k.startswith(PREPROCESSOR_PREFIX)}
    _check_state_dict(weights, cfg, names, f"{source}: {WEIGHTS_MEMBER}")
    return {ours: weights[theirs] for ours, theirs in names.items()}


def state_dict_to_nemo(
    state_dict: Mapping[str, torch.Tensor], cfg: dict
) -> dict[str, torch.Tensor]:
    """Our weights under NeMo's keys, preceded by the preprocessor buffers NeMo requires."""
    names = key_map(cfg)
    state = convert_legacy_state_dict(dict(state_dict))
    _check_state_dict(state, cfg, {k: k for k in names}, "the state_dict")
    _, feats = config.input(cfg, "val")
    featurizer = FilterbankFeatures(**{**feats, "spec_augment": None, "cutout_augment": None})
    out = {
        key: getattr(featurizer, buffer).detach().clone()
        for key, buffer in PREPROCESSOR_BUFFERS.items()
    }
    for ours, theirs in names.items():
        out[theirs] = state[ours].detach().cpu().contiguous()
    return out


# --------------------------------------------------------------------------------------------------
# Public API


def load(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(cfg, state_dict)`` of a ``.nemo`` file: ``cfg`` in this recipe's YAML schema (validated,
    with the front end set to reproduce NeMo's preprocessor), ``state_dict`` under our keys."""
    nemo_cfg, nemo_state = read_archive(path)
    cfg = config_from_nemo(nemo_cfg, source=path)
    return cfg, state_dict_from_nemo(nemo_state, cfg, source=path)


def save(
    path: str | Path,
    cfg: dict,
    weights: Mapping[str, Any],
    *,
    ema: bool = True,
    compress: bool = False,
) -> Path:
    """Write ``cfg`` and ``weights`` as a ``.nemo`` file that NeMo's ``restore_from`` accepts.

    ``weights`` is a state_dict, or a checkpoint dict (with ``state_dict`` and possibly
    ``ema_state_dict``): then its EMA weights are written, as upstream's converter does, falling
    back to the raw weights with a warning when it has none (``ema=False`` takes the raw ones).
    ``compress`` writes tar.gz, which NeMo before 1.7 needs; newer NeMo reads both and writes plain
    tar. The file is written atomically.
    """
    path = Path(path)
    if isinstance(weights.get("state_dict"), Mapping):
        state = model_weights(dict(weights), ema=ema, path=path)
    else:
        state = dict(weights)
    nemo_cfg = config_to_nemo(cfg)
    nemo_state = state_dict_to_nemo(state, cfg)
    _write_archive(path, nemo_cfg, nemo_state, compress)
    return path
