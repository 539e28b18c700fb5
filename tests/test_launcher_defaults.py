"""Each setting has one default: a launcher's `: "${VAR:=default}"` equals the Python entry point's
argparse default for the flag it sets, so `python train.py` and `bash scripts/train.sh` agree."""

from __future__ import annotations

import argparse
import re

import pytest

import inference
import train
from tests.conftest import REPO

# Launcher variable -> the flag's dest. Left out: paths (DATA_DIR, OUTPUT_DIR, manifests, CHECKPOINT),
# and variables that are not a flag of their own (NUM_GPUS, PAD_TO_MAX_DURATION, MAX_DURATION ...).
TRAIN = {
    "RESUME": "resume", "CUDNN_BENCHMARK": "cudnn_benchmark", "AMP": "amp",
    "PRECISION": "precision", "COMPILE": "compile", "BATCH_SIZE": "batch_size",
    "GRAD_ACCUMULATION_STEPS": "grad_accumulation_steps", "OPTIMIZER": "optimizer",
    "LEARNING_RATE": "lr", "MIN_LEARNING_RATE": "min_lr", "LR_POLICY": "lr_policy",
    "LR_EXP_GAMMA": "lr_exp_gamma", "LR_ORDER": "lr_order", "WEIGHT_DECAY": "weight_decay",
    "EMA": "ema", "SEED": "seed", "EPOCHS": "epochs", "WARMUP_EPOCHS": "warmup_epochs",
    "HOLD_EPOCHS": "hold_epochs", "SAVE_FREQUENCY": "save_frequency",
    "KEEP_MILESTONES": "keep_milestones", "SAVE_BEST_FROM": "save_best_from",
    "EPOCHS_THIS_JOB": "epochs_this_job", "DALI_DEVICE": "dali_device",
    "EVAL_FREQUENCY": "eval_frequency", "PREDICTION_FREQUENCY": "prediction_frequency",
    "LOG_FREQUENCY": "log_frequency", "NUM_WORKERS": "num_workers",
}  # fmt: skip
# DALI_DEVICE is left out: inference.py chooses per device (DALI on CUDA when installed, else
# the PyTorch loader), and the launcher's gpu falls back the same way without CUDA.
INFERENCE = {
    "BATCH_SIZE": "batch_size", "EMA": "ema", "SEED": "seed", "PAD_LEADING": "pad_leading",
    "CUDNN_BENCHMARK": "cudnn_benchmark", "AMP": "amp", "PRECISION": "precision",
    "FOLD_BATCHNORM": "fold_batchnorm", "SKIP_MASKS": "skip_masks", "FFT_CONVS": "fft_convs",
    "COMPILE": "compile", "CUDA_GRAPHS": "cuda_graphs", "NUM_WORKERS": "num_workers",
    "NUM_STEPS": "steps", "NUM_WARMUP_STEPS": "warmup_steps", "DECODER": "decoder",
    "BEAM_WIDTH": "beam_width", "LM_ALPHA": "lm_alpha", "LM_BETA": "lm_beta",
}  # fmt: skip


def launcher_defaults(script: str) -> dict[str, str]:
    text = (REPO / "scripts" / script).read_text()
    return dict(re.findall(r'^: "\$\{(\w+):?=([^}]*)\}"', text, flags=re.MULTILINE))


def parser_value(parser: argparse.ArgumentParser, dest: str, text: str):
    """``text`` as the parser would store it for ``dest``; an empty launcher default passes no
    flag (the parser's None: decided later, e.g. from the checkpoint)."""
    action = next(a for a in parser._actions if a.dest == dest)
    if text == "":
        return None
    if action.nargs in ("*", "+"):
        return [action.type(v) for v in text.split()]
    if action.type is None and isinstance(action.default, bool):
        return {"true": True, "false": False}[text]
    return action.type(text) if action.type else text


@pytest.mark.parametrize(
    ("script", "parser", "names"),
    [("train.sh", train.get_parser(), TRAIN), ("inference.sh", inference.get_parser(), INFERENCE)],
    ids=["train", "inference"],
)
def test_launcher_defaults_equal_the_parser_defaults(script, parser, names):
    defaults = launcher_defaults(script)
    differ = {}
    for var, dest in names.items():
        assert var in defaults, f"{script} has no default for {var}"
        want = parser.get_default(dest)
        got = parser_value(parser, dest, defaults[var])
        if got != want:
            differ[var] = (defaults[var], want)
    assert not differ, f"{script} default != argparse default: {differ}"
