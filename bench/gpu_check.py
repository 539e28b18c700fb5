"""The stages of the GPU check that ``bench/gpu_check.sh`` runs, one process each (docs/gpu_check.md).

    python bench/gpu_check.py STAGE --work DIR --budget SECONDS [--dry-run]
    python bench/gpu_check.py summary --work DIR --out OUT_DIR --stages prepare gpu_tests ...

==============  ==================================================================================
prepare         a tone corpus (train/val manifests) and two checkpoints, jasper10x5dr for latency and
                quartznet15x5 for the exports (random weights, BatchNorm statistics measured on real
                speech so that activations have their trained scale)
gpu_tests       ``python -m pytest -m gpu`` on the test files that hold GPU tests
train_speed     ``bench/train_speed.py``: upstream-style and ours, fp16 and bf16, Jasper and QuartzNet
train_run       ``scripts/train.sh`` (AMP, 1 GPU, DALI's GPU loader when DALI imports), stopped after
                one epoch and resumed (``RESUME=true``), then ``scripts/evaluation.sh``
latency         ``scripts/inference_benchmark.sh`` for the upstream-style, default, CUDA-graph and
                compiled variants; the greedy transcripts of real recordings compared across them
dali            ``bench/dali_throughput.py`` with and without online speed perturbation
export          ``triton/export.py`` (TorchScript, ONNX, TensorRT when it imports), each file checked
                against PyTorch; the Triton model repository, served when ``tritonserver`` exists
summary         ``DIR/stages/*.json`` -> ``OUT_DIR/summary.json`` and ``OUT_DIR/summary.md``
==============  ==================================================================================

Each stage writes ``DIR/stages/STAGE.json`` (status, notes, a markdown fragment and its data) after
every step, so a stage stopped at its budget keeps what it measured. Statuses: ``ok``, ``skipped``
(with the reason: no CUDA, no DALI), ``partial`` (the budget ran out before every case or latency
cell was measured: the others are named), ``failed``, ``timeout``. With ``--dry-run``
every stage runs its CPU form at tiny sizes (tiny configs, bf16 autocast, a few steps): what CI
runs (tests/test_gpu_check.py), so that the check never rots.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import nn

from common import machine
from common.audio import load_audio
from common.dali import dali_available
from common.features import FilterbankFeatures
from common.logger import parse_json_log
from jasper import config
from jasper.model import BN_MOMENTUM

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SAMPLE_RATE = 16000  # Hz
STATUS_GOOD = ("ok", "skipped", "partial")
# Recordings of data/audio: BatchNorm calibration, and the transcripts compared across variants.
SHORT_RECORDINGS = (
    "data/audio/goforward.wav",  # 2.8 s
    "data/audio/librivox/sense_and_sensibility_0880.wav",  # 3.0 s
    "data/audio/librivox/sense_and_sensibility_0930.wav",  # 3.3 s
)
# A differing greedy frame is a near-tie when the reference's top two log-probs are closer than
# this: twice the log-prob difference two half-precision implementations of a model may show
# (tests/test_inference.py allows 0.25 on the GPU; bf16 keeps 3 bits less than fp16). The
# checkpoints are random, so near-ties occur; a stale CUDA graph or a wrong mask flips frames far
# from ties, which every row counts ("confident frames").
NEAR_TIE = {"fp16": 0.5, "bf16": 1.0, "fp32": 2e-3}


@dataclass(frozen=True)
class Sizes:
    """What each stage runs: the GPU sizes, or the dry run's tiny CPU ones."""

    precision: str  # autocast dtype of training and inference
    latency_config: str
    export_config: str
    train_config: str
    corpus_utts: tuple[int, int]  # train, val
    speed_configs: tuple[str, ...]
    speed_batch: int
    speed_duration: float  # seconds
    speed_precisions: tuple[str, ...]
    speed_steps: tuple[int, int]  # warm-up, timed
    train_batch: int
    latency_batches: str
    latency_durations: str
    latency_steps: tuple[int, int]  # warm-up, timed
    latency_variants: tuple[str, ...]
    dali_device: str
    dali_durations: tuple[str, ...]
    dali_utts: int
    dali_batch: int
    export_precisions: tuple[str, ...]


GPU = Sizes(
    precision="fp16",
    latency_config="configs/jasper10x5dr_speedp-online_speca.yaml",
    export_config="configs/quartznet15x5_speedp-online-1.15_speca.yaml",
    train_config="configs/quartznet15x5_speedp-online-1.15_speca.yaml",
    corpus_utts=(64, 16),
    speed_configs=(
        "configs/jasper10x5dr_speedp-online_speca.yaml",
        "configs/quartznet15x5_speedp-online-1.15_speca.yaml",
    ),
    speed_batch=64,
    speed_duration=16.7,
    speed_precisions=("fp16", "bf16"),
    speed_steps=(2, 8),
    train_batch=16,
    latency_batches="1 16",
    latency_durations="2 7 16.7",
    latency_steps=(5, 40),
    latency_variants=("upstream-style", "default", "cuda-graphs", "compile"),
    dali_device="gpu",
    dali_durations=("5", "15"),
    dali_utts=256,
    dali_batch=64,
    export_precisions=("fp16", "fp32"),
)
DRY = Sizes(
    precision="bf16",  # fp16 autocast means nothing on a CPU
    latency_config="configs/jasper_tiny.yaml",
    export_config="configs/quartznet_tiny.yaml",
    train_config="configs/jasper_tiny.yaml",
    corpus_utts=(16, 8),
    speed_configs=("configs/jasper_tiny.yaml", "configs/quartznet_tiny.yaml"),
    speed_batch=2,
    speed_duration=0.5,
    speed_precisions=("bf16",),
    speed_steps=(1, 2),
    train_batch=4,
    latency_batches="1",
    latency_durations="2",
    latency_steps=(1, 25),  # the fewest steps common.latency accepts
    latency_variants=("upstream-style", "default"),  # no CUDA graphs on a CPU; compile: minutes
    dali_device="cpu",
    dali_durations=("1",),
    dali_utts=16,
    dali_batch=8,
    export_precisions=("fp32",),
)
# inference_benchmark.sh's speed settings of each variant (scripts/lib/launcher.sh), and the same as
# inference.py flags for the transcripts. upstream-style: eager, masks on, no folding (CONVENTIONS).
LATENCY_VARIANTS: dict[str, dict[str, str]] = {
    "upstream-style": {"FOLD_BATCHNORM": "false", "SKIP_MASKS": "false", "FFT_CONVS": "false"},
    "default": {},
    "cuda-graphs": {"CUDA_GRAPHS": "true"},
    "compile": {"COMPILE": "true"},
}
VARIANT_FLAGS: dict[str, list[str]] = {
    "upstream-style": ["--no-fold_batchnorm", "--no-skip_masks", "--no-fft_convs"],
    "default": [],
    "cuda-graphs": ["--cuda_graphs"],
    "compile": ["--compile"],
}


# --------------------------------------------------------------------------------------------
# Running commands and reporting


class Report:
    """A stage's ``stages/NAME.json``, rewritten (atomically) after every change."""

    def __init__(self, path: Path, stage: str, budget: float) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "stage": stage,
            "status": "running",
            "budget_s": budget,
            "notes": [],
            "markdown": "",
        }
        self.save()

    def set(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def note(self, text: str) -> None:
        print(f"[{self.data['stage']}] {text}", flush=True)
        self.data["notes"].append(text)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        os.replace(tmp, self.path)


@dataclass
class Result:
    rc: int
    output: str
    seconds: float
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out


_RUNNING: set[subprocess.Popen] = set()


def _kill(proc: subprocess.Popen) -> None:
    """The command and everything it started (its own session, see :func:`run`)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _on_sigterm(signum, frame) -> None:
    """``timeout`` in gpu_check.sh stops this stage: its commands, in sessions of their own, go too."""
    for proc in list(_RUNNING):
        _kill(proc)
    raise SystemExit(124)


def run(cmd: list[str], limit: float, env: dict[str, str] | None = None) -> Result:
    """Run ``cmd`` from the repository root for at most ``limit`` seconds, its output printed as it
    comes (into gpu_check.log) and returned. It runs in a session of its own so that, at the
    limit, the launchers' Python children are stopped with it."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.monotonic()
    if limit <= 1:
        print("not started: the stage's time budget is spent", flush=True)
        return Result(124, "", 0.0, True)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    _RUNNING.add(proc)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
        sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(proc)
        proc.wait()
        print(f"stopped at its time limit ({limit:.0f} s)", flush=True)
    finally:
        _RUNNING.discard(proc)
    reader.join(timeout=5)
    return Result(proc.returncode, "".join(lines), time.monotonic() - start, timed_out)


@dataclass
class Check:
    """What a stage works with."""

    work: Path
    dry_run: bool
    sizes: Sizes
    deadline: float  # time.monotonic() by which the stage must be done
    report: Report
    ours_train: list[str]

    def left(self, reserve: float = 0.0) -> float:
        """Seconds left of the stage's budget, less ``reserve`` kept for what comes after."""
        return self.deadline - time.monotonic() - reserve

    @property
    def cuda(self) -> bool:
        return torch.cuda.is_available()


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# prepare: corpus and checkpoints

WORDS = ("go", "stop", "left", "right", "up", "down", "yes", "no")


def manifest_entry(transcript: str, fname: str, num_samples: int) -> dict[str, Any]:
    """A manifest entry (docs/upstream.md#manifests) of one 16 kHz file, ``fname`` relative to the
    dataset folder."""
    seconds = num_samples / SAMPLE_RATE
    files = [{"fname": fname, "speed": 1.0, "duration": seconds, "num_samples": num_samples}]
    return {"transcript": transcript, "files": files, "original_duration": seconds}


def tone_corpus(root: Path, name: str, n: int, seed: int) -> Path:
    """``n`` utterances of 1 to 3 words, each word a 0.25 s tone whose pitch the word picks, then
    50 ms of silence, with a little noise (as tests/conftest.py's corpus): learnable in a few
    steps, no speech synthesiser needed. WAVs in ``root/name/``, the manifest ``root/name.json``."""
    rng = np.random.default_rng(seed)
    (root / name).mkdir(parents=True, exist_ok=True)
    t = np.arange(int(0.25 * SAMPLE_RATE)) / SAMPLE_RATE
    entries = []
    for i in range(n):
        words = [str(w) for w in rng.choice(WORDS, size=rng.integers(1, 4))]
        pieces = []
        for w in words:
            pieces += [0.3 * np.sin(2 * np.pi * (200 + 80 * WORDS.index(w)) * t), np.zeros(800)]
        audio = np.concatenate(pieces).astype(np.float32)
        audio += 0.01 * rng.standard_normal(audio.size).astype(np.float32)
        fname = f"{name}/utt{i:03d}.wav"
        sf.write(root / fname, audio, SAMPLE_RATE, subtype="PCM_16")
        entries.append(manifest_entry(" ".join(words), fname, audio.size))
    path = root / f"{name}.json"
    path.write_text(json.dumps(entries, indent=1))
    return path


def calibrated_checkpoint(config_path: str, out: Path) -> dict[str, Any]:
    """A checkpoint of ``config_path``'s model with random weights whose BatchNorm statistics are
    the means and variances of its activations on real speech: in eval mode the activations then
    have the scale they have in training (the default statistics, 0 and 1, let them grow or shrink
    block after block, which half precision does not survive in a 54-layer model)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = config.load(REPO / config_path)
    torch.manual_seed(0)
    model = config.build_model(cfg).to(device)
    _, features_kw = config.input(cfg, "val")
    audio = [torch.from_numpy(load_audio(REPO / p, trim_silence=True)) for p in SHORT_RECORDINGS]
    lens = torch.tensor([a.numel() for a in audio])
    batch = nn.utils.rnn.pad_sequence(audio, batch_first=True)
    features = FilterbankFeatures(**features_kw).to(device).eval()
    with torch.no_grad():
        feats, feat_lens = features(batch.to(device), lens.to(device))
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average: one pass sets the statistics
        model.train()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        model(feats, feat_lens)
        for bn in norms:
            bn.momentum = BN_MOMENTUM
    model.eval()
    torch.save(
        {"state_dict": model.cpu().state_dict(), "config": cfg, "labels": cfg["labels"]}, out
    )
    return {
        "config": config_path,
        "path": str(out),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def stage_prepare(check: Check) -> str:
    s, work = check.sizes, check.work
    corpus = work / "corpus"
    train = tone_corpus(corpus, "train", s.corpus_utts[0], seed=1)
    val = tone_corpus(corpus, "val", s.corpus_utts[1], seed=2)
    check.report.set(corpus={"root": str(corpus), "train": str(train), "val": str(val)})
    (work / "ckpt").mkdir(exist_ok=True)
    ckpts = {
        "latency": calibrated_checkpoint(s.latency_config, work / "ckpt" / "latency.pt"),
        "export": calibrated_checkpoint(s.export_config, work / "ckpt" / "export.pt"),
    }
    check.report.set(checkpoints=ckpts)
    rows = [[f"`{name}`", f"`{c['config']}`", f"{c['params_m']:.1f}"] for name, c in ckpts.items()]
    check.report.set(
        markdown=f"Tone corpus: {s.corpus_utts[0]} training and {s.corpus_utts[1]} validation "
        "utterances. Checkpoints (random weights, BatchNorm statistics measured on speech):\n\n"
        + md_table(["checkpoint", "config", "parameters (M)"], rows)
    )
    return "ok"


def prepared(check: Check, key: str) -> dict[str, Any]:
    """What the prepare stage recorded under ``key``; a clear error when it did not run through."""
    path = check.work / "stages" / "prepare.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if key not in data:
        raise RuntimeError(f"the prepare stage did not make the {key} (see its log)")
    return data[key]


# --------------------------------------------------------------------------------------------
# gpu_tests

PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def pytest_counts(output: str) -> dict[str, int]:
    """``{"passed": 3, "skipped": 2, ...}`` from pytest's last summary line."""
    for line in reversed(output.splitlines()):
        found = PYTEST_COUNT.findall(line)
        if found and " in " in line:
            return {
                kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in found
            }
    return {}


def stage_gpu_tests(check: Check) -> str:
    files = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").glob("test_*.py")
        if "pytest.mark.gpu" in p.read_text()
    )
    cmd = [PYTHON, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rfEs", *files]
    result = run(cmd, check.left())
    counts = pytest_counts(result.output)
    reasons = sorted(
        {
            line.split(": ", 1)[-1]
            for line in result.output.splitlines()
            if line.startswith("SKIPPED")
        }
    )
    failures = [line for line in result.output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    check.report.set(files=files, counts=counts, skip_reasons=reasons, failures=failures)
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "no summary line"
    lines = [f"`python -m pytest -m gpu` on {', '.join(files)}: {summary}."]
    lines += [f"- {f}" for f in failures] + [f"- skipped: {r}" for r in reasons]
    check.report.set(markdown="\n".join(lines) + "\n")
    if result.timed_out:
        return "timeout"
    if result.rc != 0:
        return "failed"
    if not counts.get("passed"):
        check.report.note("no GPU test ran here: " + ("; ".join(reasons) or "none selected"))
        return "skipped"
    return "ok"


# --------------------------------------------------------------------------------------------
# train_speed


def stage_train_speed(check: Check) -> str:
    s = check.sizes
    out = check.work / "train_speed"
    # Cases that would start in the last 40 s are skipped: a Jasper case takes about 25 s.
    reserve = 5 if check.dry_run else 40
    cmd = [
        PYTHON, "bench/train_speed.py", "--out", str(out), "--configs", *s.speed_configs,
        "--batch_size", str(s.speed_batch), "--duration", str(s.speed_duration), "--precisions",
        *s.speed_precisions, "--warmup", str(s.speed_steps[0]), "--steps", str(s.speed_steps[1]),
        "--time_budget", f"{max(1.0, check.left(reserve)):.0f}",
    ]  # fmt: skip
    if check.ours_train:
        cmd += ["--ours", *check.ours_train]
    result = run(cmd, check.left())
    table = out.with_suffix(".json")
    if not table.exists():
        check.report.note("bench/train_speed.py wrote no table")
        return "timeout" if result.timed_out else "failed"
    data = json.loads(table.read_text())
    check.report.set(
        train_speed=data, markdown=out.with_suffix(".md").read_text().split("\n", 2)[2]
    )
    statuses = {r["status"] for r in data["rows"]}
    if result.timed_out or "failed" in statuses or not result.ok:
        return "timeout" if result.timed_out else "failed"
    if "skipped" in statuses:
        check.report.note("cases skipped at the time budget: see the table")
        return "partial"
    return "ok"


# --------------------------------------------------------------------------------------------
# train_run


def last_log_values(log: Path, keys: tuple[str, ...]) -> dict[str, float]:
    """The last logged value of each of ``keys`` in a training JSON log."""
    found: dict[str, float] = {}
    if log.exists():
        for record in parse_json_log(log):
            if record.get("type") == "LOG":
                found.update({k: v for k, v in record["data"].items() if k in keys})
    return found


def stage_train_run(check: Check) -> str:
    s, work = check.sizes, check.work
    corpus = prepared(check, "corpus")
    out = work / "train_run"
    shutil.rmtree(out, ignore_errors=True)
    dali = "gpu" if check.cuda and dali_available() else "none"
    loader = "DALI on the GPU" if dali == "gpu" else "PyTorch (DALI does not import here)"
    if not check.cuda:
        loader = "PyTorch (CPU)"
    env = {
        "DATA_DIR": corpus["root"], "MODEL_CONFIG": s.train_config, "OUTPUT_DIR": str(out),
        "TRAIN_MANIFESTS": corpus["train"], "VAL_MANIFESTS": corpus["val"], "NUM_GPUS": "1",
        "AMP": "true", "PRECISION": s.precision, "DALI_DEVICE": dali,
        "BATCH_SIZE": str(s.train_batch), "GRAD_ACCUMULATION_STEPS": "2", "EPOCHS": "2",
        "WARMUP_EPOCHS": "1", "HOLD_EPOCHS": "0", "SAVE_FREQUENCY": "1", "KEEP_MILESTONES": "",
        "SAVE_BEST_FROM": "1", "EVAL_FREQUENCY": "100000", "PREDICTION_FREQUENCY": "100000",
        "NUM_WORKERS": "2", "SEED": "0", "LOG_FILE": "",
    }  # fmt: skip
    steps: list[list[str]] = []
    check.report.set(loader=loader, config=s.train_config)

    def record(name: str, verdict: str) -> None:
        steps.append([name, verdict])
        check.report.set(
            steps=steps,
            markdown=f"Loader: {loader}; `{s.train_config}`, AMP "
            f"{s.precision}, one process.\n\n" + md_table(["run", "result"], steps),
        )

    first = run(
        ["bash", "scripts/train.sh"],
        check.left(25),
        {**env, "RESUME": "false", "EPOCHS_THIS_JOB": "1"},
    )
    epoch1 = sorted(out.glob("*_epoch1_checkpoint.pt"))
    ok1 = first.ok and bool(epoch1)
    record(
        "1. `scripts/train.sh` RESUME=false EPOCHS_THIS_JOB=1",
        f"{'ok' if ok1 else 'FAILED'}: {epoch1[0].name if epoch1 else 'no epoch-1 checkpoint'} "
        f"({first.seconds:.0f} s)",
    )
    if not ok1:
        return "timeout" if first.timed_out else "failed"

    second = run(
        ["bash", "scripts/train.sh"],
        check.left(12),
        {**env, "RESUME": "true", "EPOCHS_THIS_JOB": "0"},
    )
    resumed = re.search(r"resumed from \S+: epoch \d+, step \d+", second.output)
    epoch2 = sorted(out.glob("*_epoch2_checkpoint.pt"))
    wers = last_log_values(out / "nvlog.json", ("dev_wer", "dev_ema_wer", "train_loss"))
    ok2 = second.ok and bool(resumed) and bool(epoch2) and "dev_wer" in wers
    record(
        "2. `scripts/train.sh` RESUME=true",
        f"{'ok' if ok2 else 'FAILED'}: {resumed.group(0) if resumed else 'did not resume'}; "
        f"{epoch2[0].name if epoch2 else 'no epoch-2 checkpoint'}; final evaluation: "
        + ", ".join(f"{k} {v:.3g}" for k, v in wers.items())
        + f" ({second.seconds:.0f} s)",
    )
    check.report.set(final_log=wers)
    if not ok2:
        return "timeout" if second.timed_out else "failed"

    eval_env = {
        "CHECKPOINT": str(epoch2[0]), "MODEL_CONFIG": "", "DATA_DIR": corpus["root"],
        "VAL_MANIFESTS": corpus["val"], "OUTPUT_DIR": str(work / "evaluation"), "AMP": "true",
        "PRECISION": s.precision, "DALI_DEVICE": dali, "NUM_GPUS": "1", "BATCH_SIZE": "8",
        "NUM_WORKERS": "2",
    }  # fmt: skip
    evaluation = run(["bash", "scripts/evaluation.sh"], check.left(), eval_env)
    wer = re.search(r"^WER ([\d.na]+) %", evaluation.output, re.MULTILINE)
    record(
        "3. `scripts/evaluation.sh` (EMA weights)",
        f"{'ok' if evaluation.ok and wer else 'FAILED'}: "
        f"{'WER ' + wer.group(1) + ' %' if wer else 'no WER printed'} "
        f"({evaluation.seconds:.0f} s)",
    )
    if not (evaluation.ok and wer):
        return "timeout" if evaluation.timed_out else "failed"
    return "ok"


# --------------------------------------------------------------------------------------------
# latency


def cell_order(batches: str, durations: str) -> list[tuple[int, str]]:
    """The sweep's cells, most telling first, so that a budget cut drops the least: the smallest
    (launch-bound: where CUDA graphs matter), the largest (compute-bound), then by growing work."""
    cells = [(int(b), d) for d in durations.split() for b in batches.split()]
    cells.sort(key=lambda c: c[0] * float(c[1]))
    return cells[:1] + cells[-1:] + cells[1:-1] if len(cells) > 2 else cells


def latency_markdown(rows: dict[str, list[dict]], variants: list[str]) -> str:
    """One line per (batch, duration): each variant's DNN latency p90 / mean in ms, and upstream's
    p90 over the best other variant's."""
    cells: dict[tuple, dict[str, dict]] = {}
    for variant in variants:
        for r in rows.get(variant, []):
            cells.setdefault((r["batch_size"], float(r["duration"])), {})[variant] = r["latency_ms"]
    header = ["batch", "audio (s)"] + [f"{v} p90 / mean" for v in variants]
    header.append("upstream / best (p90)")
    table = []
    for (batch, duration), by_variant in sorted(cells.items()):
        line: list[Any] = [batch, duration]
        for v in variants:
            ms = by_variant.get(v)
            line.append(
                f"{ms['dnn_latency_0.9']:.2f} / {ms['dnn_latency_0.5']:.2f}" if ms else "not run"
            )
        p90 = {v: ms["dnn_latency_0.9"] for v, ms in by_variant.items()}
        base = p90.get("upstream-style")
        others = [t for v, t in p90.items() if v != "upstream-style"]
        line.append(f"{base / min(others):.2f}" if base and others else "")
        table.append(line)
    return md_table(header, table)


def transcript_manifest(path: Path) -> Path:
    """A manifest of :data:`SHORT_RECORDINGS` with their reference transcripts (data/audio)."""
    entries = [
        manifest_entry((REPO / name).with_suffix(".txt").read_text().strip(), name,
                       sf.info(str(REPO / name)).frames)
        for name in SHORT_RECORDINGS  # all at 16 kHz
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=1))
    return path


def variant_transcripts(
    check: Check, variant: str, ckpt: str, manifest: Path, limit: float
) -> tuple[Result, dict[str, str], Path]:
    """``inference.py`` with ``variant``'s flags on the recordings as one padded batch (one input
    shape: one compilation, one CUDA graph): ``(result, {name: transcript}, logits file)``."""
    out = check.work / "latency" / "transcripts"
    predictions, logits = out / f"{variant}.predictions", out / f"{variant}.logits.pt"
    cmd = [
        PYTHON, "inference.py", "--ckpt", ckpt, "--val_manifests", str(manifest), "--dataset_dir",
        str(REPO), "--batch_size", str(len(SHORT_RECORDINGS)), "--amp", "--precision",
        check.sizes.precision, "--no-ema", "--output_dir", str(out), "--save_predictions",
        str(predictions), "--save_logits", str(logits), *VARIANT_FLAGS[variant],
    ]  # fmt: skip
    result = run(cmd, limit)
    texts = {}
    if result.ok and predictions.exists():
        for line in predictions.read_text().splitlines():
            name, _, text = line.partition("\t")
            texts[name] = text
    return result, texts, logits


def compare_transcripts(
    texts: dict[str, dict[str, str]], logits: dict[str, Path], precision: str
) -> tuple[list[list[Any]], bool]:
    """Rows ``[variant, same transcripts, differing frames, confident frames, max |log-prob
    diff|]`` against upstream-style, and whether every variant agrees with it up to near-ties."""
    ref = torch.load(logits["upstream-style"], weights_only=True)
    rows, good = [], True
    for variant in texts:
        if variant == "upstream-style":
            continue
        same = texts[variant] == texts["upstream-style"]
        got = torch.load(logits[variant], weights_only=True)
        differing = clear = confident = 0
        worst = 0.0
        for want, have in zip(ref["log_probs"], got["log_probs"], strict=True):
            if want.shape != have.shape:
                differing = clear = -1
                break
            worst = max(worst, (want - have).abs().max().item())
            top2 = want.topk(2, dim=-1).values
            sure = top2[:, 0] - top2[:, 1] >= NEAR_TIE[precision]
            flips = want.argmax(-1) != have.argmax(-1)
            differing += int(flips.sum())
            clear += int((flips & sure).sum())
            confident += int(sure.sum())
        agrees = same or clear == 0
        good &= agrees
        verdict = "yes" if same else ("no, near-ties only" if agrees else "NO")
        frames = "lengths differ" if differing < 0 else f"{differing} ({clear} not near-ties)"
        rows.append([variant, verdict, frames, confident, f"{worst:.3g}"])
    return rows, good


def stage_latency(check: Check) -> str:
    """The transcripts first (bounded), then the latency sweep one (variant, cell) at a time, the
    most telling cells first, for as long as the budget lasts."""
    s = check.sizes
    ckpt = prepared(check, "checkpoints")["latency"]["path"]
    variants = [v for v in s.latency_variants if v != "cuda-graphs" or check.cuda]
    skipped = {v: "skipped: needs CUDA" if v == "cuda-graphs" else "skipped in the dry run"
               for v in LATENCY_VARIANTS if v not in variants}  # fmt: skip
    # Seconds a run needs at least (process start, model load, cuDNN autotuning; compile: more).
    least = {v: 25 if v == "compile" else 8 for v in LATENCY_VARIANTS}
    cap = {v: 100 if v == "compile" else 40 for v in LATENCY_VARIANTS}

    manifest = transcript_manifest(check.work / "latency" / "recordings.json")
    texts: dict[str, dict[str, str]] = {}
    logits: dict[str, Path] = {}
    heard: dict[str, str] = {}  # variant -> "ok", "time budget" or "FAILED"
    for variant in variants:
        limit = min(cap[variant], check.left())
        result, got, path = variant_transcripts(check, variant, ckpt, manifest, limit)
        if len(got) == len(SHORT_RECORDINGS):
            texts[variant], logits[variant], heard[variant] = got, path, "ok"
        else:
            heard[variant] = "time budget" if result.timed_out else "FAILED"
    compared: list[list[Any]] = []
    agree, transcripts_md = False, ""
    if "upstream-style" in texts and len(texts) > 1:
        compared, agree = compare_transcripts(texts, logits, s.precision)
        header = ["variant", "same transcripts", "differing frames", "confident frames",
                  "max abs log-prob diff"]  # fmt: skip
        transcripts_md = (
            f"Greedy transcripts of {len(SHORT_RECORDINGS)} recordings of data/audio as one padded "
            "batch (`inference.py --val_manifests`), each variant against upstream-style (a "
            f"near-tie: upstream-style's top two log-probs within {NEAR_TIE[s.precision]}):\n\n"
            + md_table(header, compared)
        )
        check.report.set(transcripts=texts, transcript_check=compared)
    else:
        check.report.note("the transcripts could not be compared across the variants")

    rows: dict[str, list[dict]] = {v: [] for v in variants}
    cells = cell_order(s.latency_batches, s.latency_durations)
    failed: set[str] = set()

    def publish() -> dict[str, str]:
        outcome = dict(skipped)
        for v in variants:
            done = len(rows[v])
            outcome[v] = "FAILED" if v in failed else f"{done} of {len(cells)} cells"
            if heard[v] != "ok":
                outcome[v] += f"; transcripts {heard[v]}"
        check.report.set(rows=rows, outcome=outcome, markdown=(
            f"`scripts/inference_benchmark.sh` per cell: `{s.latency_config}` (random weights), "
            f"{s.precision}, synthetic audio, {s.latency_steps[0]} warm-up + "
            f"{s.latency_steps[1]} timed batches; DNN latency in ms. Variants: "
            + "; ".join(f"{v}: {outcome[v]}" for v in LATENCY_VARIANTS) + ".\n\n"
            + latency_markdown(rows, variants) + "\n" + transcripts_md
        ))  # fmt: skip
        return outcome

    for batch, duration in cells:
        for variant in variants:
            if variant in failed or check.left() < least[variant]:
                continue
            out = check.work / "latency" / variant / f"bs{batch}_dur{duration}"
            env = {
                "CHECKPOINT": ckpt, "MODEL_CONFIG": "", "OUTPUT_DIR": str(out), "AMP": "true",
                "PRECISION": s.precision, "EMA": "false", "BATCH_SIZE_SEQ": str(batch),
                "MAX_DURATION_SEQ": duration, "NUM_WARMUP_STEPS": str(s.latency_steps[0]),
                "NUM_STEPS": str(s.latency_steps[1]), **LATENCY_VARIANTS[variant],
            }  # fmt: skip
            limit = min(cap[variant], check.left())
            result = run(["bash", "scripts/inference_benchmark.sh"], limit, env)
            table = out / "inference_benchmark.json"
            if result.ok and table.exists():
                rows[variant] += json.loads(table.read_text())["rows"]
            elif not result.timed_out:
                failed.add(variant)
            publish()
    outcome = publish()
    if failed or "FAILED" in heard.values() or not agree:
        return "failed"
    unfinished = [v for v in variants if len(rows[v]) < len(cells) or heard[v] != "ok"]
    if unfinished:
        check.report.note(
            "not all measured within the budget: "
            + "; ".join(f"{v}: {outcome[v]}" for v in unfinished)
            + " (STAGES=latency BUDGET_LATENCY=420 bash bench/gpu_check.sh OUT measures all)"
        )
        return "partial"
    return "ok"


# --------------------------------------------------------------------------------------------
# dali

DALI_ROW = re.compile(r"^\| (.+?) \| (DALI \w+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \|$")


def stage_dali(check: Check) -> str:
    s = check.sizes
    if not dali_available():
        check.report.note(
            "NVIDIA DALI does not import here: stage skipped (carry its wheel: "
            "WITH_DALI=true bash scripts/prepare_device.sh)"
        )
        check.report.set(markdown="Skipped: NVIDIA DALI does not import here.\n")
        return "skipped"
    runs = (
        ("with", "configs/jasper10x5dr_speedp-online_speca.yaml"),
        ("without", "configs/jasper10x5dr_speca.yaml"),
    )
    rows, status = [], "ok"
    for i, (speed, cfg) in enumerate(runs):
        md = check.work / f"dali_{speed}.md"
        cmd = [
            PYTHON, "bench/dali_throughput.py", str(md), "--config", cfg, "--devices",
            s.dali_device, "--durations", *s.dali_durations, "--num_utts", str(s.dali_utts),
            "--epochs", "1", "--batch_size", str(s.dali_batch),
        ]  # fmt: skip
        result = run(cmd, check.left() / (len(runs) - i))
        if not result.ok:
            status = "timeout" if result.timed_out else "failed"
            continue
        for line in md.read_text().splitlines():
            m = DALI_ROW.match(line)
            if m:
                rows.append([speed, m.group(1), m.group(2), m.group(5), m.group(6)])
        check.report.set(
            rows=rows,
            markdown=(
                f"`bench/dali_throughput.py`: training features (`{runs[0][1]}` input_train, and "
                f"without speed perturbation `{runs[1][1]}`), batch {s.dali_batch}, {s.dali_utts} synthetic "
                "utterances per duration, one timed epoch after a warm-up epoch.\n\n"
                + md_table(
                    ["speed perturbation", "data", "path", "utterances/s", "audio s per s"], rows
                )
            ),
        )
    return status


# --------------------------------------------------------------------------------------------
# export

# export.py's lines about each file, and the acoustic model of each Triton backend.
EXPORT_CHECKED = re.compile(r"^(fp16|fp32): (\S+) checked \((.*)\) in ([\d.]+) s$")
EXPORT_NOT_BUILT = re.compile(r"^(fp16|fp32): (\S+) not built: (.*)$")
ACOUSTIC_MODELS = {"ts-trace": "jasper-ts-trace", "onnx": "jasper-onnx",
                   "tensorrt": "jasper-tensorrt"}  # fmt: skip
# The server's backend of each (the feature extractor and decoder are TorchScript: pytorch).
TRITON_BACKENDS = {"ts-trace": "pytorch", "onnx": "onnxruntime", "tensorrt": "tensorrt"}
BACKEND_DIR = Path(os.environ.get("TRITON_BACKEND_DIR", "/opt/tritonserver/backends"))


def serve_once(check: Check, export_dir: Path, backends: list[str]) -> str:
    """The Triton model repository for this machine; on a GPU, served once when a
    ``tritonserver`` with the backends it needs exists (the NGC Triton container's)."""
    target = "gpu" if check.cuda else "cpu"
    repo = check.work / "model_repo"
    cmd = [
        PYTHON, "triton/model_repository.py", "--export_dir", str(export_dir), "--precision",
        check.sizes.export_precisions[0], "--target", target, "--backends", *backends, "--output",
        str(repo), "--overwrite",
    ]  # fmt: skip
    made = run(cmd, check.left(5))
    if not made.ok:
        return f"model repository ({target}) FAILED"
    if target == "cpu":
        return (
            f"model repository (cpu: {', '.join(backends)}) written; served by "
            "tests/test_triton_server.py, not here"
        )
    server = shutil.which("tritonserver")
    if server is None:
        return (
            f"model repository ({target}: {', '.join(backends)}) written; not served: no "
            "`tritonserver` on PATH (the NGC Triton container has it)"
        )
    needed = {"pytorch"} | {TRITON_BACKENDS[b] for b in backends}
    lacking = sorted(b for b in needed if not (BACKEND_DIR / b).is_dir())
    if lacking:
        return (
            f"model repository ({target}) written; not served: {server} has no "
            f"{', '.join(lacking)} backend in {BACKEND_DIR}"
        )
    ports = {"HTTP_PORT": "18000", "GRPC_PORT": "18001", "METRICS_PORT": "18002"}
    env = {
        "SERVER_MODE": "native", "MODEL_REPOSITORY": str(repo), **ports,
        "PID_FILE": str(check.work / "tritonserver.pid"),
        "LOG_FILE": str(check.work / "tritonserver.log"), "WAIT_TIMEOUT": "60",
    }  # fmt: skip
    try:
        started = run(["bash", "triton/scripts/run_server.sh"], check.left(5), env)
        ready = (
            started.ok and run(["bash", "triton/scripts/wait_for_server.sh"], check.left(5), env).ok
        )
        models = []
        if ready:
            for backend in backends:
                name = f"jasper-{backend}-ensemble"
                url = f"http://127.0.0.1:{ports['HTTP_PORT']}/v2/models/{name}/ready"
                try:
                    with urllib.request.urlopen(url, timeout=5) as answer:
                        models.append(f"{name} ready" if answer.status == 200 else name)
                except OSError as e:  # urllib's HTTPError and URLError: not ready
                    models.append(f"{name} not ready ({e}): FAILED")
    finally:
        run(["bash", "triton/scripts/stop_server.sh"], 40, env)
    if not ready:
        return "tritonserver did not become ready: FAILED (see the log)"
    return f"{target} repository served by {server}: {', '.join(models)}"


def stage_export(check: Check) -> str:
    s = check.sizes
    ckpt = prepared(check, "checkpoints")["export"]["path"]
    export_dir = check.work / "export"
    shutil.rmtree(export_dir, ignore_errors=True)
    device = "cuda" if check.cuda else "cpu"
    notes = []
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        gpu = "CUDAExecutionProvider" in providers
        notes.append(
            f"ONNX Runtime {onnxruntime.__version__}: checks on "
            f"{'its CUDA provider' if gpu and device == 'cuda' else 'the CPU'}"
        )
    if importlib.util.find_spec("tensorrt") is None:
        notes.append("TensorRT does not import here: no engine")
    cmd = [
        PYTHON, "triton/export.py", "--ckpt", ckpt, "--export_dir", str(export_dir), "--convert",
        "feature-extractor", "decoder", "ts-trace", "onnx", "tensorrt", "--precisions",
        *s.export_precisions, "--device", device, "--check_audio", "data/audio", "--check_files",
        "3",
    ]  # fmt: skip
    result = run(cmd, check.left(10))
    rows = []
    for line in result.output.splitlines():
        if m := EXPORT_CHECKED.match(line.strip()):
            rows.append([m.group(1), Path(m.group(2)).parts[-3], "checked", m.group(3), m.group(4)])
        elif m := EXPORT_NOT_BUILT.match(line.strip()):
            rows.append([m.group(1), m.group(2), "not built", m.group(3), ""])
    built = {r[1] for r in rows if r[2] == "checked"}
    backends = [b for b, name in ACOUSTIC_MODELS.items() if name in built]
    if result.ok and check.left() > 10:
        notes.append("Triton: " + serve_once(check, export_dir, backends))
    check.report.set(
        rows=rows,
        export_notes=notes,
        torch_cuda=torch.version.cuda,
        markdown=(
            f"`triton/export.py` of `{s.export_config}` (random weights) on {device}, each file "
            "checked against PyTorch on data/audio recordings. "
            + ". ".join(notes)
            + ".\n\n"
            + md_table(["precision", "model", "result", "check", "seconds"], rows)
        ),
    )
    if not result.ok:
        return "timeout" if result.timed_out else "failed"
    return "failed" if any("FAILED" in n for n in notes) else "ok"


# --------------------------------------------------------------------------------------------
# summary


def machine_info(dry_run: bool) -> dict[str, Any]:
    """Where the check ran: :func:`common.machine.describe` plus the versions that matter here."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info: dict[str, Any] = dict(machine.describe(device))
    info.update(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        mode="CPU dry run" if dry_run else "GPU",
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    )
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
        )
        smi = shutil.which("nvidia-smi")
        if smi:
            query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
            answer = subprocess.run(query, capture_output=True, text=True, timeout=20)
            info["driver"] = answer.stdout.strip().splitlines()[0] if answer.stdout else None
    for name, module in (("dali", "nvidia.dali"), ("onnxruntime", "onnxruntime"),
                         ("tensorrt", "tensorrt")):  # fmt: skip
        try:
            info[name] = importlib.import_module(module).__version__
        except (ImportError, OSError):
            info[name] = None
    info["tritonserver"] = shutil.which("tritonserver")
    return info


def load_stage(work: Path, name: str) -> dict[str, Any]:
    """A stage's report, completed from the shell's record (exit status, seconds, budget) when the
    stage was stopped before it could write its status."""
    path = work / "stages" / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else {"stage": name, "notes": []}
    exit_file = work / "stages" / f"{name}.exit"
    rc, seconds, budget = (
        (int(x) for x in exit_file.read_text().split())
        if exit_file.exists()
        else (None, None, None)
    )
    data.setdefault("seconds", seconds)
    data.setdefault("budget_s", budget)
    if data.get("status") in (None, "running"):
        stopped = rc in (124, 137)
        data["status"] = "timeout" if stopped else "failed"
        data["notes"] = data.get("notes", []) + [
            f"stopped before it reported (exit status {rc})" if rc is not None else "did not run"
        ]
    return data


def summary(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(args.dry_run)
    stages = [load_stage(Path(args.work), name) for name in args.stages]
    failures = [s["stage"] for s in stages if s["status"] not in STATUS_GOOD]
    (out / "summary.json").write_text(
        json.dumps({"machine": info, "failures": failures, "stages": stages}, indent=1, default=str)
        + "\n"
    )
    versions = ", ".join(
        f"{k} {info[k]}"
        for k in ("torch", "cuda", "cudnn", "driver", "dali", "onnxruntime", "tensorrt")
        if info.get(k)
    )
    lines = [
        f"# GPU check: {info['device']} ({info['mode']}), {info['date']}",
        "",
        f"{versions}; Python {info['python']}; {info['cpu']} ({info['cpu_cores']} cores).",
        "",
        f"Failures: {', '.join(failures) if failures else 'none'}.",
        "",
    ]
    rows = [
        [
            s["stage"],
            s["status"].upper() if s["status"] not in STATUS_GOOD else s["status"],
            f"{s.get('seconds') or 0:.0f} / {s.get('budget_s') or 0:.0f}",
            "; ".join(s.get("notes", []))[:300],
        ]
        for s in stages
    ]
    lines.append(md_table(["stage", "status", "seconds / budget", "notes"], rows))
    for s in stages:
        if s.get("markdown"):
            lines += [f"## {s['stage']}", "", s["markdown"].rstrip(), ""]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------

STAGES: dict[str, Callable[[Check], str]] = {
    "prepare": stage_prepare,
    "gpu_tests": stage_gpu_tests,
    "train_speed": stage_train_speed,
    "train_run": stage_train_run,
    "latency": stage_latency,
    "dali": stage_dali,
    "export": stage_export,
}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("stage", choices=[*STAGES, "summary"])
    p.add_argument("--work", required=True, help="folder of intermediate files and stage reports")
    p.add_argument("--budget", type=float, default=300.0, help="seconds the stage may take")
    p.add_argument("--dry-run", action="store_true", help="the CPU form at tiny sizes")
    p.add_argument(
        "--ours_train",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="levers of bench/train_speed.py's ours form (its --ours)",
    )
    p.add_argument("--out", default=None, help="summary: the output folder")
    p.add_argument("--stages", nargs="*", default=list(STAGES), help="summary: stages to report")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.stage == "summary":
        if not args.out:
            raise SystemExit("summary needs --out")
        return summary(args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    work = Path(args.work)
    (work / "stages").mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    report = Report(work / "stages" / f"{args.stage}.json", args.stage, args.budget)
    check = Check(
        work=work,
        dry_run=args.dry_run,
        sizes=DRY if args.dry_run else GPU,
        deadline=start + args.budget,
        report=report,
        ours_train=args.ours_train,
    )
    report.set(sizes=asdict(check.sizes))
    try:
        status = STAGES[args.stage](check)
    except Exception as e:  # a stage's error is its result: the other stages still run
        traceback.print_exc()
        report.note(f"error: {type(e).__name__}: {e}")
        status = "failed"
    except SystemExit:  # stopped by gpu_check.sh's timeout (SIGTERM)
        report.set(status="timeout", seconds=round(time.monotonic() - start, 1))
        raise
    report.set(status=status, seconds=round(time.monotonic() - start, 1))
    print(f"[{args.stage}] {status} in {time.monotonic() - start:.0f} s", flush=True)
    return 0 if status in STATUS_GOOD else 1


if __name__ == "__main__":
    sys.exit(main())
