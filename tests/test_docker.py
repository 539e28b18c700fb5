"""The container recipe builds from this repository: the Dockerfile's sources exist and survive
.dockerignore, it installs requirements.txt on the NGC PyTorch base, and launch.sh mounts the
folders the launchers use. Docker itself does not run here: the scripts run against a stand-in
``docker`` that records its arguments."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

NGC_PYTORCH = "nvcr.io/nvidia/pytorch:"
LARGE_FOLDERS = ("datasets", "checkpoints", "results", "runs")  # mounted at run time, never copied


@dataclass
class Instruction:
    keyword: str
    args: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            out.append(Instruction(keyword.upper(), args.strip()))
    return out


def copy_sources(instruction: Instruction) -> list[str]:
    """Source paths of a COPY/ADD (flags such as --chown dropped; the last word is the target)."""
    words = [w for w in shlex.split(instruction.args) if not w.startswith("--")]
    return words[:-1]


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """``(is_exception, regex)`` per .dockerignore line, with Docker's matching rules: patterns are
    anchored at the build context's root, ``*`` stays within one path element, ``**`` spans any."""
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex + r"\Z")))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves ``path`` out: the last rule matching the path or one of
    its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            result = not negate
    return result


def repository_files() -> list[str]:
    """The repository's files: what git tracks, else (no git checkout) the tree without hidden
    folders, caches and the large data folders."""
    try:
        git = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    except FileNotFoundError:  # no git installed
        git = None
    if git is not None and git.returncode == 0 and git.stdout:
        names = git.stdout.decode().split("\0")
        return [n for n in names if n and (REPO / n).is_file()]
    files = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if (
            path.is_file()
            and not any(part.startswith(".") or part == "__pycache__" for part in rel.parts[:-1])
            and rel.parts[0] not in LARGE_FOLDERS
        ):
            files.append(rel.as_posix())
    return files


def test_base_image_is_ngc_pytorch():
    instructions = dockerfile()
    args = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, value = ins.args.split("=", 1)
            args[name] = value
    (base,) = [ins.args for ins in instructions if ins.keyword == "FROM"]
    image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], base.split()[0])
    assert image.startswith(NGC_PYTORCH), image


def test_every_copied_path_exists_and_is_in_the_build_context():
    rules = dockerignore_rules()
    copies = [ins for ins in dockerfile() if ins.keyword in ("COPY", "ADD")]
    assert copies
    for ins in copies:
        for source in copy_sources(ins):
            assert (REPO / source).exists(), f"{ins.keyword} {ins.args}: {source} does not exist"
            if source != ".":  # the whole context; what it leaves out is checked below
                assert not ignored(source, rules), f"{source} is excluded by .dockerignore"


def test_installs_requirements_txt_after_copying_it():
    instructions = dockerfile()
    copied_at = next(
        i
        for i, ins in enumerate(instructions)
        if ins.keyword == "COPY" and "requirements.txt" in copy_sources(ins)
    )
    installs = [
        i
        for i, ins in enumerate(instructions)
        if ins.keyword == "RUN" and re.search(r"pip install .*-r requirements\.txt", ins.args)
    ]
    assert installs and installs[0] > copied_at
    # requirements.txt must leave out what the NGC image ships (reinstalling it breaks the image).
    requirements = (REPO / "requirements.txt").read_text().lower()
    for shipped in ("torch", "nvidia-dali", "tensorrt"):
        assert not re.search(rf"^{shipped}\b", requirements, re.MULTILINE), shipped


def test_dockerignore_keeps_out_venvs_data_checkpoints_and_results():
    rules = dockerignore_rules()
    for path in (
        ".venv/bin/python",
        ".venv-triton/bin/python",
        ".git/HEAD",
        "datasets/LibriSpeech/test-clean/1089/134686/1089-134686-0000.flac",
        "checkpoints/nvidia_jasper_210205.pt",
        "results/Jasper_best_checkpoint.pt",
        "runs/quickstart/results/Jasper_best_checkpoint.pt",
        "jasper/__pycache__/model.cpython-311.pyc",
        "nvidia_jasper_210205.pt",
        "triton/model_repo/fp16/jasper-tensorrt/1/model.plan",
    ):
        assert ignored(path, rules), path


def test_dockerignore_keeps_every_repository_file():
    """The image holds the whole repository, reference checkpoint and recordings included, so the
    tests and the notebook run inside it."""
    rules = dockerignore_rules()
    files = repository_files()
    assert "tests/data/reference/small_model/checkpoint.pt" in files
    assert [f for f in files if ignored(f, rules)] == []


@pytest.fixture
def fake_docker(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose ``docker`` writes its working directory and arguments to a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "docker_args"
    (bin_dir / "docker").write_text(f'#!/bin/sh\nprintf "%s\\0" "$PWD" "$@" > {record}\n')
    (bin_dir / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for name in ("IMAGE", "GPUS", "SHM_SIZE", "EXTRA_JASPER_ENV", "DATA_DIR", "SCRIPT"):
        env.pop(name, None)
    return env, record


def run_script(script: str, args: list[str], env: dict[str, str], record: Path) -> list[str]:
    run = subprocess.run(
        ["bash", str(REPO / script), *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return record.read_text().split("\0")[:-1]


def test_launch_mounts_data_checkpoints_results_with_gpus_and_shm(fake_docker, tmp_path):
    env, record = fake_docker
    folders = [tmp_path / name for name in ("data", "ckpt", "out")]
    _, *argv = run_script(
        "scripts/docker/launch.sh",
        [*map(str, folders), "scripts/train.sh", "--epochs", "1"],
        env,
        record,
    )
    assert argv[:2] == ["run", "--rm"] or argv[:3] == ["run", "-i", "--rm"]
    mounts = {argv[i + 1] for i, a in enumerate(argv) if a == "-v"}
    assert {f"{folders[0]}:/datasets", f"{folders[1]}:/checkpoints", f"{folders[2]}:/results"} <= (
        mounts
    )
    assert f"{REPO}:/workspace/jasper" in mounts
    assert all(f.is_dir() for f in folders)  # created when missing, as upstream
    assert argv[argv.index("--gpus") + 1] == '"all"'
    assert any(a.startswith("--shm-size=") for a in argv)
    assert argv[-5:] == ["jasper:latest", "bash", "scripts/train.sh", "--epochs", "1"]

    env["GPUS"] = "none"  # a machine without the NVIDIA container toolkit
    _, *argv = run_script("scripts/docker/launch.sh", list(map(str, folders)), env, record)
    assert "--gpus" not in argv and argv[-2:] == ["jasper:latest", "bash"]


def test_launchers_default_to_the_mounted_folders():
    """train.sh and inference.sh look where launch.sh mounts: /datasets, /checkpoints, /results."""
    for script, variable, folder in (
        ("scripts/train.sh", "DATA_DIR", "/datasets/"),
        ("scripts/train.sh", "OUTPUT_DIR", "/results"),
        ("scripts/inference.sh", "CHECKPOINT", "/checkpoints/"),
        ("scripts/inference.sh", "OUTPUT_DIR", "/results"),
    ):
        default = re.search(rf'^: "\$\{{{variable}:=(.*?)\}}"', (REPO / script).read_text(), re.M)
        assert default and default.group(1).startswith(folder), (script, variable)


def test_build_tags_the_image_from_the_repository_root(fake_docker):
    env, record = fake_docker
    cwd, *argv = run_script("scripts/docker/build.sh", [], env, record)
    assert Path(cwd) == REPO
    assert argv[:2] == ["build", "."] and argv[argv.index("-t") + 1] == "jasper:latest"
