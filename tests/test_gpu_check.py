"""The GPU check (bench/gpu_check.sh, docs/gpu_check.md) in its CPU dry run, so that it never rots:
every stage runs its tiny CPU form and reports ok, or a skip whose reason a CPU explains; the
output folder holds what a GPU run brings back. Plus the pieces the dry run cannot reach: a stage
killed at its budget, the latency sweep's order, the levers of train_speed's "ours" form, and
scripts/prepare_device.sh offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, load_script

gpu_check = load_script("bench", "gpu_check")
train_speed = load_script("bench", "train_speed")
STAGES = ["prepare", "gpu_tests", "train_speed", "train_run", "dali", "export", "latency"]


def _bash(script: str, *args: str, env: dict[str, str], timeout: float = 60):
    full = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", script, *args], cwd=REPO, env=full, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_check")
    run = _bash(
        "bench/gpu_check.sh", "--dry-run", str(root / "out"), env={"WORK_DIR": str(root / "work")},
        timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    return root / "out", json.loads((root / "out" / "summary.json").read_text())


@pytest.mark.slow
def test_dry_run_brings_back_a_log_and_two_summaries(dry_run):
    out, summary = dry_run
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "summary.json", "summary.md"]
    machine = summary["machine"]
    assert machine["mode"] == "CPU dry run" and machine["device_type"] == "cpu"
    assert machine["torch"] == torch.__version__ and machine["date"]
    md = (out / "summary.md").read_text()
    assert md.startswith("# GPU check: ") and "Failures: none." in md
    assert all(f"## {stage}" in md for stage in STAGES)
    log = (out / "gpu_check.log").read_text()
    assert all(f"==== {stage} (budget" in log for stage in STAGES)


@pytest.mark.slow
def test_dry_run_every_stage_ok_or_a_documented_cpu_skip(dry_run):
    _, summary = dry_run
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == STAGES and summary["failures"] == []
    # No CUDA: the GPU tests are all skipped (tests/conftest.py), and the stage says so.
    assert stages["gpu_tests"]["status"] == "skipped"
    assert (
        stages["gpu_tests"]["counts"]["skipped"] > 0
        and "passed" not in stages["gpu_tests"]["counts"]
    )
    assert "no GPU test ran here" in stages["gpu_tests"]["notes"][0]
    # DALI is optional on a CPU: ok where it imports, else skipped with the reason.
    dali = stages["dali"]
    assert dali["status"] == "ok" or "DALI does not import" in dali["notes"][0]
    others = set(STAGES) - {"gpu_tests", "dali"}
    assert {stages[s]["status"] for s in others} == {"ok"}, {s: stages[s]["notes"] for s in others}


@pytest.mark.slow
def test_dry_run_measures_both_training_forms_and_resumes(dry_run):
    stages = {s["stage"]: s for s in dry_run[1]["stages"]}
    rows = stages["train_speed"]["train_speed"]["rows"]
    assert {(r["model"], r["form"]) for r in rows} == {
        (m, f) for m in ("jasper_tiny", "quartznet_tiny") for f in ("upstream-style", "ours")
    }
    assert all(r["status"] == "ok" and r["sequences_per_s"] > 0 for r in rows)
    assert all("ours_over_upstream" in r for r in rows if r["form"] == "ours")
    steps = stages["train_run"]["steps"]
    assert len(steps) == 3 and all(verdict.startswith("ok") for _, verdict in steps)
    assert "resumed from" in steps[1][1] and "epoch2" in steps[1][1]
    assert "dev_wer" in stages["train_run"]["final_log"]


@pytest.mark.slow
def test_dry_run_latency_rows_transcripts_and_exports(dry_run):
    stages = {s["stage"]: s for s in dry_run[1]["stages"]}
    latency = stages["latency"]
    for variant in ("upstream-style", "default"):
        (row,) = latency["rows"][variant]
        assert (row["batch_size"], row["duration"]) == (1, 2.0)
        assert row["latency_ms"]["dnn_latency_0.9"] > 0
    assert latency["outcome"]["cuda-graphs"] == "skipped: needs CUDA"
    (compared,) = latency["transcript_check"]
    assert compared[0] == "default" and compared[1] in ("yes", "no, near-ties only")
    assert len(latency["transcripts"]["upstream-style"]) == len(gpu_check.SHORT_RECORDINGS)
    checked = {r[1] for r in stages["export"]["rows"] if r[2] == "checked"}
    assert {"jasper-ts-trace", "jasper-onnx", "feature-extractor-ts-trace"} <= checked
    assert any(
        "model repository (cpu: ts-trace, onnx) written" in n
        for n in stages["export"]["export_notes"]
    )


def test_a_stage_stopped_at_its_budget_is_a_named_failure(tmp_path, capsys):
    stages = tmp_path / "stages"
    stages.mkdir()
    (stages / "prepare.json").write_text(json.dumps({"stage": "prepare", "status": "ok"}))
    (stages / "prepare.exit").write_text("0 3 25\n")
    (stages / "latency.json").write_text(json.dumps({"stage": "latency", "status": "running"}))
    (stages / "latency.exit").write_text("124 205 190\n")
    argv = ["summary", "--work", str(tmp_path), "--out", str(tmp_path / "out")]
    assert gpu_check.main([*argv, "--stages", "prepare", "latency", "export"]) == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["failures"] == ["latency", "export"]
    latency = summary["stages"][1]
    assert latency["status"] == "timeout" and latency["seconds"] == 205
    assert "exit status 124" in latency["notes"][-1]
    assert summary["stages"][2]["notes"] == ["did not run"]
    assert "Failures: latency, export." in capsys.readouterr().out


def test_latency_cells_most_telling_first():
    cells = gpu_check.cell_order("1 16", "2 7 16.7")
    assert cells[:2] == [(1, "2"), (16, "16.7")]
    assert sorted(cells) == sorted((b, d) for b in (1, 16) for d in ("2", "7", "16.7"))
    assert gpu_check.cell_order("1", "2") == [(1, "2")]


def test_pytest_counts_from_the_summary_line():
    output = (
        "....\nFAILED tests/x.py::t - boom\n2 failed, 5 passed, 3 skipped, 9 deselected in 4.1s\n"
    )
    counts = gpu_check.pytest_counts(output)
    assert counts == {"failed": 2, "passed": 5, "skipped": 3, "deselected": 9}
    assert gpu_check.pytest_counts("1 error in 0.2s") == {"error": 1}


def test_ours_form_takes_named_levers():
    ours = train_speed.parse_form(train_speed.OURS, ["masks=none", "compile=true"])
    assert (ours.name, ours.masks, ours.compile, ours.ema) == ("ours", "none", True, True)
    upstream = train_speed.UPSTREAM
    assert upstream.masks == "upstream" and not upstream.compile and not upstream.grad_check
    for bad in (["speed=fast"], ["compile=maybe"], ["masks=some"], ["masks"]):
        with pytest.raises(ValueError):
            train_speed.parse_form(train_speed.OURS, bad)


def test_gpu_check_refuses_bad_arguments(tmp_path):
    run = _bash("bench/gpu_check.sh", env={})
    assert run.returncode == 2 and "usage" in run.stderr
    run = _bash("bench/gpu_check.sh", str(tmp_path / "out"), env={"STAGES": "latency bogus"})
    assert run.returncode == 2 and "unknown stage bogus" in run.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_device_offline_names_the_package(tmp_path):
    (tmp_path / "links").mkdir()
    env = {"WHEEL_DIR": str(tmp_path / "whl"), "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(tmp_path / "links")}  # fmt: skip
    run = _bash("scripts/prepare_device.sh", env=env, timeout=120)
    assert run.returncode == 1
    assert "pip could not download soundfile==" in run.stderr
