"""Multi-node training: torchrun's static rendezvous from the launchers' NNODES, NODE_RANK,
MASTER_ADDR and MASTER_PORT, and the SLURM example that sets them from SLURM's variables."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.checkpoint import load_checkpoint
from tests.conftest import REPO, TINY_CONFIG, make_corpus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nodes")
    make_corpus(root, 16, seed=21, name="train")
    return root


def launcher_env(corpus: Path, out: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
        "DATA_DIR": str(corpus), "MODEL_CONFIG": str(TINY_CONFIG), "OUTPUT_DIR": str(out),
        "TRAIN_MANIFESTS": str(corpus / "train.json"), "VAL_MANIFESTS": str(corpus / "train.json"),
        "DALI_DEVICE": "none", "NUM_WORKERS": "0", "BATCH_SIZE": "4",
        "GRAD_ACCUMULATION_STEPS": "1", "EPOCHS": "1", "WARMUP_EPOCHS": "0", "HOLD_EPOCHS": "1",
        "EMA": "0", "SAVE_FREQUENCY": "1", "RESUME": "false",
        **extra,
    }  # fmt: skip


# float64: the comparison does not depend on the CPU's float32 kernels.
TRAIN_EXTRA = ["--dtype", "float64", "--device", "cpu"]


def test_two_nodes_on_localhost_equal_one_node_with_two_processes(corpus, tmp_path):
    one_node = tmp_path / "one_node"
    run = subprocess.run(
        ["bash", "scripts/train.sh", *TRAIN_EXTRA], cwd=REPO, capture_output=True, text=True,
        env=launcher_env(corpus, one_node, NUM_GPUS="2"), timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

    two_nodes, port = tmp_path / "two_nodes", str(free_port())

    def node(rank: int) -> subprocess.Popen:
        env = launcher_env(
            corpus, two_nodes, NUM_GPUS="1", NNODES="2", NODE_RANK=str(rank),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
        )  # fmt: skip
        return subprocess.Popen(
            ["bash", "scripts/train.sh", *TRAIN_EXTRA], cwd=REPO, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    nodes = [node(0), node(1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    assert "--nnodes=2 --node_rank=1 --master_addr=127.0.0.1" in outputs[1]

    a = load_checkpoint(one_node / "Jasper_epoch1_checkpoint.pt")
    b = load_checkpoint(two_nodes / "Jasper_epoch1_checkpoint.pt")
    assert a["step"] == b["step"] == 2  # 16 utterances, 2 processes x 4 per step
    for key, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][key], rtol=0, atol=1e-12), key


def test_sbatch_starts_one_torchrun_per_node_at_node_zero(tmp_path):
    """scripts/slurm/train.sbatch under fake srun/scontrol: each node's train.sh runs torchrun
    with NNODES from SLURM_NNODES, its rank from SLURM_NODEID and node 0 as the rendezvous."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {
        # srun: run the task once per node, as SLURM would on each, with that node's id.
        "srun": '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
        'for id in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$id "$@" || exit; done\n',
        "scontrol": "#!/usr/bin/env bash\nprintf 'gpu-node-07\\ngpu-node-08\\n'\n",
        # The interpreter: CUDA "present" for the launcher's check; otherwise print nothing.
        "python": "#!/usr/bin/env bash\nexit 0\n",
    }
    for name, text in fakes.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
        "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
        "SLURM_SUBMIT_DIR": str(REPO), "SLURM_GPUS_ON_NODE": "8", "OUTPUT_DIR": str(tmp_path),
    }  # fmt: skip
    run = subprocess.run(
        ["bash", "scripts/slurm/train.sbatch", "--epochs_this_job", "1"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if "torch.distributed.run" in line]
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert (
            f"-m torch.distributed.run --nnodes=2 --node_rank={rank} --master_addr=gpu-node-07 "
            "--master_port=29500 --nproc_per_node=8 train.py" in line
        )
        assert line.rstrip().endswith("--epochs_this_job 1")
