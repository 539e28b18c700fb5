"""What a measurement ran on: the CPU's or GPU's name, cores, threads and library versions.

Every benchmark table of the recipe (latency, CPU real-time factor, DALI and training throughput)
is headed by :func:`describe` or :func:`summary`, so that a figure never travels without its machine.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` of /proc/cpuinfo (Linux), or None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set((_cpuinfo_field("flags") or "").split())


def native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 bf16 or AMX), where bf16 can pay on a CPU."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, as in a container), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe(device: torch.device | str = "cpu") -> dict[str, str | int]:
    """``{device, device_type, cpu, cpu_cores, cpu_threads, torch, python}`` for ``device``."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "device": name,
        "device_type": device.type,
        "cpu": cpu_name(),
        "cpu_cores": cpu_cores(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def summary(device: torch.device | str = "cpu") -> str:
    """One line for a table's header, e.g. ``AMD EPYC (2 cores, 2 threads); torch 2.13.0``."""
    d = describe(device)
    where = f"{d['cpu']} ({d['cpu_cores']} cores, {d['cpu_threads']} threads)"
    if d["device_type"] == "cuda":
        where = f"{torch.cuda.device_count()} x {d['device']}; {where}"
    return f"{where}; torch {d['torch']}, Python {d['python']}"
