"""Repository-level promises: scripts parse, the triton/ folder does not shadow OpenAI Triton."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


def _ours(path) -> bool:
    """Not inside a virtualenv (.venv, .venv-triton, ...: their packages ship scripts too)."""
    return not any(part.startswith(".venv") for part in path.relative_to(REPO).parts)


SCRIPTS = sorted(p for p in REPO.rglob("*.sh") if _ours(p)) + [REPO / ".ci" / "run"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_triton_folder_does_not_pose_as_openai_triton():
    """With the repository root first on sys.path (as for `python train.py`), torch must still see
    the real OpenAI Triton or none at all, and build an optimizer."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "import torch\n"
        "from torch.utils._triton import has_triton_package\n"
        "try:\n"
        "    import triton\n"
        "    real = hasattr(triton, 'language')\n"
        "except ImportError:\n"
        "    real = False\n"
        "assert has_triton_package() == real, (has_triton_package(), real)\n"
        "torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)\n"
        "import torch._dynamo\n"
        "print('ok', real)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("ok")
