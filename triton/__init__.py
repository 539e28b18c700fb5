"""Import guard: this folder is the Triton Inference Server deployment, not OpenAI's Triton.

Upstream names the deployment folder ``triton/``, and so does this repository. Wherever the
repository root is on ``sys.path``, ``import triton`` finds this folder: ``python
train.py`` and ``python inference.py`` put the root there (a script's own folder is
``sys.path[0]``), and so do pytest (``pythonpath = ["."]``) and ``python -c`` or ``-m`` run from
the root. PyTorch does ``import triton`` to find the OpenAI Triton compiler. Without this file,
on a machine without that compiler (a CPU-only torch), the folder would import as an empty
namespace package, torch would take it for the compiler, and ``torch._dynamo`` and even optimizer
construction would fail; with an ordinary ``__init__.py`` it would hide the real compiler where
that is installed.

So importing ``triton`` from here loads the real OpenAI Triton from the rest of ``sys.path`` when
it is installed, and otherwise raises ImportError as if this folder were not there. The editable
install (``pip install -e .``) maps only ``common``, ``jasper`` and ``utils``; the code in this
folder is run as scripts (``python triton/export.py`` puts ``triton/`` itself on ``sys.path[0]``,
so its modules import each other by plain name, e.g. ``deploy_modules``), never as ``triton.*``.
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
