"""``train.py`` that stops still at a chosen moment, for tests/test_crash_safety.py to kill -9 it there.

    python tests/crash_train.py TRAIN_ARGS...

Environment:
    CRASH_MARKER: a file written once the process has paused (the test waits for it, then kills).
    CRASH_PAUSE_AT_SAVE=N: pause inside the Nth checkpoint write of this process, when half of the
        checkpoint is in atomic_write's temporary file and nothing has been renamed yet.
    CRASH_PAUSE_AFTER_STEP=S: pause right after global optimizer step S, between two steps.

The pauses are patched in here so that the recipe's own code carries no test hooks; a paused
process sleeps until it is killed.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import train  # noqa: E402
from common import checkpoint as ckpt_io  # noqa: E402


def pause(what: str) -> None:
    Path(os.environ["CRASH_MARKER"]).write_text(what)
    while True:
        time.sleep(60)


def pause_in_save(n: int) -> None:
    """Checkpointer.save calls ckpt_io.atomic_save; its Nth call writes half and pauses."""
    original = ckpt_io.atomic_save
    calls = 0

    def atomic_save(obj, path) -> None:
        nonlocal calls
        calls += 1
        if calls != n:
            original(obj, path)
            return
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = buffer.getvalue()
        with ckpt_io.atomic_write(path) as f:
            f.write(data[: len(data) // 2])
            f.flush()
            pause(f"writing {Path(path).name}")

    ckpt_io.atomic_save = atomic_save


def pause_after_step(step: int) -> None:
    original = train.optimizer_step

    def optimizer_step(run) -> None:
        original(run)
        if run.state.step == step:
            pause(f"after step {step}")

    train.optimizer_step = optimizer_step


if __name__ == "__main__":
    if "CRASH_PAUSE_AT_SAVE" in os.environ:
        pause_in_save(int(os.environ["CRASH_PAUSE_AT_SAVE"]))
    if "CRASH_PAUSE_AFTER_STEP" in os.environ:
        pause_after_step(int(os.environ["CRASH_PAUSE_AFTER_STEP"]))
    sys.exit(train.main(sys.argv[1:]))
