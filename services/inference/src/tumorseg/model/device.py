"""Which torch device inference runs on."""

from __future__ import annotations

from typing import Literal

from tumorseg.errors import ModelError
from tumorseg.threads import usable_cpus

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


def configure_threads(cpus: int | None = None) -> int:
    """One intra-op thread per usable CPU for torch and for SimpleITK's filters (their defaults count
    the host's cores, which oversubscribes a CPU-limited container). Returns the count used."""
    import SimpleITK as sitk
    import torch

    cpus = cpus or usable_cpus()
    torch.set_num_threads(cpus)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(cpus)
    return cpus
