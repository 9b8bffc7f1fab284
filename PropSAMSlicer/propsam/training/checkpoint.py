"""Training checkpoints (model, optimizer, step, RNG states) written and read without pickled code.

A run folder may come from someone else (a shared drive, a download), so its checkpoint.pt is
untrusted input: it is read with torch.load(weights_only=True), which rebuilds only tensors and
plain containers (dict, list, tuple, str, int, float, bool, None) and refuses any other object.
Everything a checkpoint holds is kept to those types, and `save_checkpoint` proves it by
loading the bytes back the same way before they replace the previous checkpoint.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from ..errors import WeightsError
from ..io.atomic import atomic_path

FILENAME = "checkpoint.pt"


def _safe_load(source, name: str, map_location) -> dict:
    try:
        state = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError for foreign objects; others for damaged files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"checkpoint {name} cannot be loaded safely (only tensors and plain data are "
                           f"accepted): {reason[:200]}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"checkpoint {name} holds a {type(state).__name__}, expected a dictionary")
    return state


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write `state` atomically, after checking that it loads with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    _safe_load(buffer, str(path), "cpu")  # a non-plain object would make the run impossible to resume
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The checkpoint's dictionary; WeightsError when it holds anything but tensors and plain data."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    return _safe_load(path, str(path), map_location)
