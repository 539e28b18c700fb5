"""A kill -9 at any moment leaves an output folder that ``--resume`` continues from.

The end-to-end tests stop ``train.py`` (tests/crash_train.py) inside a checkpoint write or between
two steps, kill it with SIGKILL, resume with ``train.py --resume`` and compare the final weights with
an uninterrupted run. The unit tests pin what makes that work in common/checkpoint.py: the order
fsync / rename / fsync folder / retention, partial writes ignored then removed, the best checkpoint
as a resume point only when it is the newest, retention that never counts unreadable files, and the
unit of ``best_wer``.
"""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from common import checkpoint as ckpt_io
from common.checkpoint import Checkpointer, atomic_save, load_checkpoint
from tests.conftest import REPO, TINY_CONFIG

EPOCHS = 2
STEPS_PER_EPOCH = 3  # 24 utterances, batches of 8


def train_args(corpus: dict, out: Path) -> list[str]:
    return [
        "--model_config", str(TINY_CONFIG),
        "--dataset_dir", str(corpus["root"]),
        "--train_manifests", str(corpus["train"]),
        "--val_manifests", str(corpus["val"]),
        "--output_dir", str(out),
        "--dali_device", "none", "--device", "cpu", "--num_workers", "0",
        "--batch_size", "8", "--grad_accumulation_steps", "1", "--epochs", str(EPOCHS),
        "--lr", "0.01", "--warmup_epochs", "1", "--hold_epochs", "0", "--ema", "0.9",
        "--seed", "3", "--eval_frequency", "1000", "--save_frequency", "1",
        "--save_best_from", "0",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory) -> dict:
    """The final checkpoint of an uninterrupted run."""
    out = tmp_path_factory.mktemp("straight")
    assert train.main(train_args(corpus, out)) == 0
    return load_checkpoint(out / f"Jasper_epoch{EPOCHS}_checkpoint.pt")


def crash(corpus: dict, out: Path, **pause: str) -> None:
    """Run tests/crash_train.py until it pauses where ``pause`` says, then SIGKILL it."""
    marker = out.parent / f"{out.name}.paused"
    env = {**os.environ, "CRASH_MARKER": str(marker), **pause}
    proc = subprocess.Popen(
        [sys.executable, "tests/crash_train.py", *train_args(corpus, out)], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.kill()  # SIGKILL: no handler, no finally, no atexit
    output, _ = proc.communicate(timeout=60)
    assert marker.exists(), "the run never paused:\n" + output[-3000:]
    assert proc.returncode == -9


def resume(corpus: dict, out: Path) -> str:
    run = subprocess.run(
        [sys.executable, "train.py", *train_args(corpus, out), "--resume"], cwd=REPO,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def assert_finished_like(out: Path, straight: dict) -> None:
    final = load_checkpoint(out / f"Jasper_epoch{EPOCHS}_checkpoint.pt")
    assert final["step"] == straight["step"] == EPOCHS * STEPS_PER_EPOCH
    for key, value in straight["state_dict"].items():
        assert torch.allclose(final["state_dict"][key], value, atol=1e-6), key
    assert not list(out.glob(".*.tmp")), "partial writes were left behind"


def partial_writes(out: Path) -> list[Path]:
    return sorted(out.glob(".Jasper_*_checkpoint.pt.*.tmp"))


@pytest.mark.parametrize(
    "save, resumes_from",
    [
        (2, "Jasper_epoch1_checkpoint.pt"),  # killed writing epoch 2: epoch 1 is the resume point
        (1, None),  # killed writing the first checkpoint: nothing to resume, start over
    ],
)
def test_kill_during_a_checkpoint_write(corpus, straight, tmp_path, save, resumes_from):
    out = tmp_path / "run"
    crash(corpus, out, CRASH_PAUSE_AT_SAVE=str(save))
    [partial] = partial_writes(out)
    assert partial.stat().st_size > 0
    assert not (out / f"Jasper_epoch{save}_checkpoint.pt").exists()
    found = Checkpointer(out, "Jasper").last_checkpoint()
    assert (found and found[0].name) == resumes_from
    output = resume(corpus, out)
    if resumes_from:
        assert f"resumed from {out / resumes_from}: epoch 2, step 3" in output
    else:
        assert "resumed from" not in output
    assert_finished_like(out, straight)


def test_kill_between_steps(corpus, straight, tmp_path):
    out = tmp_path / "run"
    crash(corpus, out, CRASH_PAUSE_AFTER_STEP="5")  # inside epoch 2, epoch 1 saved
    assert not partial_writes(out)
    output = resume(corpus, out)
    assert f"resumed from {out / 'Jasper_epoch1_checkpoint.pt'}: epoch 2, step 3" in output
    assert_finished_like(out, straight)


# --------------------------------------------------------------------------------------------
# The pieces


def tiny(step: int, **extra) -> dict:
    return {"epoch": 1, "step": step, "state_dict": {"w": torch.full((2,), float(step))}, **extra}


def test_a_write_is_durable_before_retention_deletes(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path, "Jasper", keep_last=1)
    ckpt.save(tiny(3), ckpt.epoch_path(1))
    events = []
    fsync, replace, unlink = os.fsync, os.replace, Path.unlink

    def record_fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    def record_replace(src, dst):
        events.append(f"rename to {Path(dst).name}")
        replace(src, dst)

    def record_unlink(path, missing_ok=False):
        events.append(f"delete {path.name}")
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    monkeypatch.setattr(Path, "unlink", record_unlink)
    ckpt.save(tiny(6), ckpt.epoch_path(2))
    assert events == [
        "fsync file",
        "rename to Jasper_epoch2_checkpoint.pt",
        "fsync folder",
        "delete Jasper_epoch1_checkpoint.pt",
    ]


def test_partial_writes_are_ignored_then_removed_by_the_next_save(tmp_path):
    ckpt = Checkpointer(tmp_path, "Jasper")
    ckpt.save(tiny(3), ckpt.epoch_path(1))
    left = [
        ".Jasper_epoch2_checkpoint.pt.0a1b2c3d4e5f.tmp",  # atomic_write's name
        ".Jasper_best_checkpoint.pt.k_x8a9q2.tmp",  # tempfile.mkstemp's (older versions)
    ]
    others = [".QuartzNet_epoch2_checkpoint.pt.0a1b2c3d4e5f.tmp", ".notes.txt.0a1b2c.tmp"]
    for name in left + others:
        (tmp_path / name).write_bytes(b"PK\x03\x04 half a checkpoint")
    path, found = ckpt.last_checkpoint()
    assert path == ckpt.epoch_path(1) and found["step"] == 3
    ckpt.save(tiny(6), ckpt.epoch_path(2))
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == sorted(others)


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "Jasper_epoch1_checkpoint.pt"
    atomic_save(tiny(3), path)
    with pytest.raises(OSError), ckpt_io.atomic_write(path) as f:
        f.write(b"half")
        raise OSError("disk full")
    assert load_checkpoint(path)["step"] == 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_save(tiny(3), tmp_path / "Jasper_epoch1_checkpoint.pt")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "Jasper_epoch1_checkpoint.pt").stat().st_mode)
    assert mode == 0o644  # readable by the team, as any file the run writes


def set_mtime(path: Path, t: float) -> None:
    os.utime(path, (t, t))


@pytest.mark.parametrize(
    "periodic_step, best_step, best_is_later, expected",
    [
        (6, 8, True, "best"),  # killed after a new best, before the next periodic save
        (6, 6, True, "periodic"),  # the same step: the periodic file (an end-of-epoch one)
        (6, 8, False, "periodic"),  # written before the periodic file: not even read
        (None, 2, True, "best"),  # killed before the first periodic save
        (6, None, True, "periodic"),  # the best file is unreadable
    ],
)
def test_the_best_checkpoint_is_a_resume_point_only_when_newest(
    tmp_path, caplog, periodic_step, best_step, best_is_later, expected
):
    ckpt = Checkpointer(tmp_path, "Jasper")
    now = time.time()
    if periodic_step is not None:
        atomic_save(tiny(periodic_step), ckpt.epoch_path(2))
        set_mtime(ckpt.epoch_path(2), now - 10)
    if best_step is not None:
        atomic_save(tiny(best_step), ckpt.best_path)
    else:
        ckpt.best_path.write_bytes(b"not a checkpoint")
    set_mtime(ckpt.best_path, now if best_is_later else now - 20)
    path, found = ckpt.last_checkpoint()
    if expected == "best":
        assert path == ckpt.best_path and found["step"] == best_step
    else:
        assert path == ckpt.epoch_path(2) and found["step"] == periodic_step
    assert ("skipping unreadable checkpoint" in caplog.text) == (best_step is None)


def test_retention_never_counts_an_unreadable_file(tmp_path):
    # A resume skips the unreadable epoch2_step5 and goes on from epoch 1; the unreadable file
    # must never take the place of a good checkpoint, neither before the run passes it nor after.
    ckpt = Checkpointer(tmp_path, "Jasper")
    ckpt.save(tiny(3), ckpt.epoch_path(1))
    ckpt.step_path(2, 5).write_bytes(b"truncated")
    assert ckpt.last_checkpoint()[0] == ckpt.epoch_path(1)
    ckpt.save(tiny(4), ckpt.step_path(2, 4))
    assert ckpt.epoch_path(1).exists()
    ckpt.save(tiny(6), ckpt.epoch_path(2))
    assert [p.name for p in ckpt.tracked()] == [
        "Jasper_epoch2_step4_checkpoint.pt",
        "Jasper_epoch2_checkpoint.pt",
    ]


# --------------------------------------------------------------------------------------------
# best_wer: upstream stores a fraction, this recipe stored percent


@pytest.mark.parametrize(
    "wer_percent, stored", [(3.1, 0.031), (0.0, 0.0), (240.0, 2.4), (math.inf, 1e6)]
)
def test_best_wer_is_stored_as_a_fraction(wer_percent, stored):
    entries = ckpt_io.best_wer_entries(wer_percent)
    assert entries == {"best_wer": pytest.approx(stored), "best_wer_unit": "fraction"}
    assert ckpt_io.best_wer_to_store(wer_percent) == pytest.approx(stored)
    assert ckpt_io.best_wer_from_checkpoint(entries) == pytest.approx(wer_percent)


@pytest.mark.parametrize(
    "ckpt, percent",
    [
        ({"best_wer": 0.031, "best_wer_unit": "fraction"}, 3.1),
        ({"best_wer": 2.4, "best_wer_unit": "fraction"}, 240.0),  # early training, over 100 %
        ({"best_wer": 0.031}, 3.1),  # upstream
        ({"best_wer": 10**6}, math.inf),  # upstream, no best yet
        ({"best_wer": 3.1, "train_state": {}}, 3.1),  # this recipe before best_wer_unit
        ({"best_wer": 0.8, "train_state": {}}, 0.8),  # ... even below 1 %
        ({"best_wer": 1e6, "train_state": {}}, math.inf),  # ... with no best yet
        ({"best_wer": 3.1}, 3.1),  # unknown origin: above 1 is percent
        ({"best_wer": float("nan")}, math.inf),
        ({"best_wer": None}, math.inf),
        ({}, math.inf),
    ],
)
def test_best_wer_is_read_in_percent_from_any_checkpoint(ckpt, percent):
    assert ckpt_io.best_wer_from_checkpoint(ckpt) == pytest.approx(percent)


def test_an_unknown_best_wer_unit_is_an_error():
    with pytest.raises(ckpt_io.CheckpointError, match="best_wer_unit 'permille'"):
        ckpt_io.best_wer_from_checkpoint({"best_wer": 31.0, "best_wer_unit": "permille"})
