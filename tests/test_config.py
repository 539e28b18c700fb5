"""YAML configs: every file validates; errors name the dotted key and the file; no mutation."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from common.features import FilterbankFeatures
from jasper import config
from tests.conftest import CONFIGS, REFERENCE, TINY_CONFIG

ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
UPSTREAM_NAMES = [
    "jasper10x5dr_speedp-online_speca.yaml",
    "jasper10x5dr_speedp-online-discrete_speca.yaml",
    "jasper10x5dr_speedp-online-discrete.yaml",
    "jasper10x5dr_speca.yaml",
    "jasper10x5dr_speedp-offline_speca.yaml",
    "jasper10x5dr_speedp-offline.yaml",
    "jasper10x5dr_speedp-offline_speca_nomask.yaml",
    "jasper10x5dr_speedp-online_train-benchmark.yaml",
]


def test_upstream_config_names_are_present():
    names = {p.name for p in ALL_CONFIGS}
    assert set(UPSTREAM_NAMES) <= names


@pytest.mark.parametrize("path", ALL_CONFIGS + [REFERENCE / "small_model" / "config.yaml"], ids=str)
def test_every_config_loads_and_builds_its_inputs(path):
    cfg = config.load(path)
    for split in ("train", "val"):
        dataset_kw, features_kw = config.input(cfg, split)
        FilterbankFeatures(**features_kw)
        assert dataset_kw["sample_rate"] == features_kw["sample_rate"] == 16000


def test_default_config_effective_values_match_upstream():
    """The default-filled values that upstream's config.input (jasper/config.py) gives."""
    cfg = config.load(CONFIGS / "jasper10x5dr_speedp-online_speca.yaml")
    val_ds, val_feat = config.input(cfg, "val")
    train_ds, train_feat = config.input(cfg, "train")
    assert val_ds["min_duration"] == 0.1 and val_ds["max_duration"] == float("inf")
    assert val_ds["trim_silence"] is True and val_ds["speed_perturbation"] is None
    assert val_feat["preemph"] == 0.97 and val_feat["dither"] == 1e-5 and val_feat["n_fft"] == 512
    assert train_ds["max_duration"] == train_feat["max_duration"] == 16.7
    assert train_ds["ignore_offline_speed_perturbation"] is True
    speed = train_ds["speed_perturbation"]
    assert (speed["min_rate"], speed["max_rate"], speed["discrete"]) == (0.85, 1.15, False)
    spec = train_feat["spec_augment"]
    assert (spec["freq_masks"], spec["max_freq"], spec["time_masks"], spec["max_time"]) == (
        2,
        20,
        2,
        75,
    )
    assert spec["min_freq"] == 0 and spec["min_time"] == 0


def test_yaml_anchors_become_independent_copies():
    cfg = config.load(CONFIGS / "jasper10x5dr_speedp-online_speca.yaml")
    blocks = cfg["jasper"]["encoder"]["blocks"]
    assert blocks[1] == blocks[2] and blocks[1] is not blocks[2]
    assert cfg["input_val"]["filterbank_features"] is not cfg["input_train"]["filterbank_features"]


def test_config_functions_do_not_modify_their_input():
    cfg = config.load(TINY_CONFIG)
    before = copy.deepcopy(cfg)
    config.input(cfg, "train")
    config.encoder(cfg)
    config.decoder(cfg, 29)
    config.apply_config_overrides(cfg, ["jasper.encoder.blocks.1.dropout=0.5"])
    assert cfg == before


def write_config(tmp_path, mutate) -> str:
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    mutate(cfg)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize(
    ("mutate", "key", "what"),
    [
        (
            lambda c: c["jasper"]["encoder"]["blocks"][2].update(filterz=3),
            "jasper.encoder.blocks[2].filterz",
            "unknown key",
        ),
        (
            lambda c: c["jasper"]["encoder"]["blocks"][0].pop("filters"),
            "jasper.encoder.blocks[0].filters",
            "missing value",
        ),
        (
            lambda c: c["input_train"]["filterbank_features"].update(n_mels=80),
            "input_train.filterbank_features.n_mels",
            "unknown key",
        ),
        (
            lambda c: c["input_val"]["audio_dataset"].update(speed_perturbation={"rate": 1.1}),
            "input_val.audio_dataset.speed_perturbation.rate",
            "unknown key",
        ),
        (
            lambda c: c["jasper"]["decoder"].pop("in_feats"),
            "jasper.decoder.in_feats",
            "missing value",
        ),
        (lambda c: c.update(jaspr={}), "jaspr", "unknown top-level key"),
        (
            lambda c: c["jasper"]["encoder"].update(activation=None),
            "jasper.encoder.activation",
            "missing value",
        ),
    ],
)
def test_config_errors_name_the_dotted_key_and_the_file(tmp_path, mutate, key, what):
    path = write_config(tmp_path, mutate)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    message = str(err.value)
    assert path in message and key in message and what in message


def test_overrides_apply_with_type_check():
    cfg = config.load(TINY_CONFIG)
    out = config.apply_config_overrides(
        cfg,
        [
            "input_train.audio_dataset.max_duration=10",  # int where a float was: numbers mix
            "input_train.filterbank_features.max_duration=10.0",
            "jasper.encoder.blocks.1.dropout=0.3",
            "input_val.filterbank_features.window=hamming",
        ],
        source="tiny.yaml",
    )
    assert out["input_train"]["audio_dataset"]["max_duration"] == 10
    assert out["jasper"]["encoder"]["blocks"][1]["dropout"] == 0.3
    assert out["input_val"]["filterbank_features"]["window"] == "hamming"
    with pytest.raises(config.ConfigError) as err:
        config.apply_config_overrides(cfg, ["jasper.encoder.use_conv_masks=7"], source="tiny.yaml")
    assert "jasper.encoder.use_conv_masks" in str(err.value) and "tiny.yaml" in str(err.value)
    with pytest.raises(config.ConfigError, match=re.escape("jasper.encoder.blocks[1].kernal_size")):
        config.apply_config_overrides(cfg, ["jasper.encoder.blocks.1.kernal_size=[3]"])


def test_dataset_and_features_must_agree_on_shared_keys(tmp_path):
    path = write_config(
        tmp_path, lambda c: c["input_train"]["audio_dataset"].update(max_duration=10.0)
    )
    with pytest.raises(config.ConfigError, match="input_train.audio_dataset.max_duration"):
        config.load(path)


def test_toml_configs_are_rejected_with_a_hint(tmp_path):
    path = tmp_path / "jasper10x5dr.toml"
    path.write_text("[model]\n")
    with pytest.raises(config.ConfigError, match="YAML"):
        config.load(path)
