"""Forwarding stub: this folder holds the Triton Inference Server deployment, not OpenAI's Triton.

Upstream names the deployment folder ``triton/``, and every entry point runs with the repository
root on ``sys.path``. A plain folder of that name would then be imported as a namespace package by
anything that does ``import triton`` -- PyTorch does, to find the OpenAI Triton compiler, and on a
machine without it (a CPU-only torch) ``torch._dynamo`` and even optimizer construction fail.

So importing ``triton`` from here loads the real OpenAI Triton when it is installed, and otherwise
raises ImportError exactly as if this folder did not exist. The deployment code in this folder is
run as scripts (``python triton/export.py``), never imported as ``triton.*``.
"""

import importlib.machinery
import importlib.util
import os
import sys

_repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_search = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _repo_root]
_spec = importlib.machinery.PathFinder.find_spec(__name__, _search)
if _spec is None or _spec.loader is None:
    raise ImportError(
        "OpenAI Triton is not installed (the repository's triton/ is the Triton "
        "Inference Server deployment folder, not a Python package)",
        name=__name__,
    )
_module = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _module
_spec.loader.exec_module(_module)
