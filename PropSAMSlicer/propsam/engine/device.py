"""Pick the compute device: CUDA if present, else Apple MPS, else CPU."""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import ResourceError

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto") -> torch.device:
    if name not in DEVICES:
        raise ResourceError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ResourceError("CUDA was requested but no CUDA GPU is usable (is this a CPU build of torch?)")
    if name == "mps" and not mps_ok:
        raise ResourceError("Apple MPS was requested but is not available on this machine")
    return torch.device(name)


def autocast_for(device: torch.device):
    """Mixed precision on GPUs; full fp32 on CPU, where fp16 would be slower and less exact."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def cpu_threads() -> int:
    """All cores this process may use (affinity-aware), so containers are not oversubscribed."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
