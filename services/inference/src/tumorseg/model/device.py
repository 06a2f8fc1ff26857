"""Which torch device inference runs on."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from tumorseg.errors import ModelError

Device = Literal["cpu", "cuda"]


def resolve_device(requested: str) -> Device:
    """``auto`` → ``cuda`` when a CUDA device is usable, else ``cpu``; ``cuda`` without one is an error."""
    import torch  # deferred: importing torch costs a second or two

    if requested == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise ModelError("TUMORSEG_DEVICE=cuda but no CUDA device is visible; use auto or cpu")
    return "cuda" if available else "cpu"


def usable_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup v2 CPU quota (a container
    started with ``--cpus 4`` on a 64-core host sees 64 cores but gets the time of 4)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def configure_threads(cpus: int | None = None) -> int:
    """One intra-op thread per usable CPU for torch and for SimpleITK's filters (their defaults count
    the host's cores, which oversubscribes a CPU-limited container). Returns the count used."""
    import SimpleITK as sitk
    import torch

    cpus = cpus or usable_cpus()
    torch.set_num_threads(cpus)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(cpus)
    return cpus
