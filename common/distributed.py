"""One process per GPU (or a single process): set-up, reductions and gathering.

``torchrun`` starts the processes and sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; NCCL joins
GPU processes and gloo CPU ones. Every helper here also works in a single process, where it does
nothing (or returns its input), so callers need no ``if world_size > 1`` of their own.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
import torch.distributed as dist


def init(
    device: str = "auto", local_rank: int | None = None, cudnn_benchmark: bool = False
) -> tuple[torch.device, int, int]:
    """``(device, rank, world_size)``; joins the process group when torchrun started this process.

    ``device``: ``auto`` (CUDA when available, else the CPU), ``cuda`` or ``cpu``.
    """
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible")
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        where = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = cudnn_benchmark
    else:
        where = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return where, rank(), world_size


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def all_reduce(value: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """``value`` reduced over the ranks, in place (unchanged in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(value, op=op)
    return value


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over the ranks, in float64 (exact for counts of errors and words)."""
    return all_reduce(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def gather_lists(items: list[Any]) -> list[Any] | None:
    """Every rank's ``items`` concatenated in rank order on rank 0; None on the other ranks."""
    if not dist.is_initialized():
        return list(items)
    parts: list | None = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(items, parts, dst=0)
    return [x for part in parts for x in part] if parts is not None else None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group together: no rank tears it down while another is still in a
    collective."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
