"""The repository's shape: entry points stay small and independent, the packages install.

These hold the refactor of "one clear path from config to transcript" in place: an entry point
that grows a 250-line function, imports another entry point, or puts itself on sys.path fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

ENTRY_POINTS = ("train.py", "inference.py")
MAX_FUNCTION_LINES = 80


def functions(path):
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_functions_are_short(name):
    long = {
        f.name: f.end_lineno - f.lineno + 1
        for f in functions(REPO / name)
        if f.name != "get_parser" and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def imported_modules(path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def repository_sources() -> list:
    """The repository's Python files outside tests (tracked or new, not ignored: no virtualenv)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [REPO / name for name in listed if not name.startswith("tests/")]


def test_no_entry_point_imports_another_and_imports_point_down():
    sources = repository_sources()
    entry = {name.removesuffix(".py") for name in ENTRY_POINTS}
    for path in sources:
        mods = imported_modules(path)
        assert not mods & entry, f"{path.relative_to(REPO)} imports an entry point"
        rel = path.relative_to(REPO).parts
        if rel[0] == "common":
            assert not mods & {"jasper", "utils", "triton"}, f"{path} imports upward"
        if rel[0] == "jasper":
            assert not mods & {"utils", "triton"}, f"{path} imports upward"


def test_no_sys_path_insertion_outside_tests():
    offenders = [p for p in repository_sources() if "sys.path.insert" in p.read_text()]
    assert not offenders


def test_packages_import_from_any_directory(tmp_path):
    # scripts/setup_env.sh installs the repository with `pip install -e .`.
    code = (
        "import common.features, jasper.model, utils.download_utils; print(jasper.model.__file__)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env={}
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == str(REPO / "jasper" / "model.py")
