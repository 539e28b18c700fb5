"""Shared paths and fixtures. Tests read repository files only (tests/data, data/audio, configs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
REFERENCE = DATA / "reference"
AUDIO = REPO / "data" / "audio"
CONFIGS = REPO / "configs"
TINY_CONFIG = CONFIGS / "jasper_tiny.yaml"
FULL_CONFIG = CONFIGS / "jasper10x5dr_speedp-online_speca.yaml"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
