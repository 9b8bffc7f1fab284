"""Intensity windows: map raw CT/MR values to [0, 1] for the networks."""

from __future__ import annotations

import numpy as np


def window_from_values(values: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> tuple[float, float]:
    """Percentile window of the given voxel values; never degenerate (constant regions widen)."""
    values = np.asarray(values, dtype=np.float32).ravel()
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [low_pct, high_pct])
    if hi - lo < 1e-6:
        spread = max(float(np.abs(values).max()) * 0.05, 1e-3)
        lo, hi = lo - spread, hi + spread
    return float(lo), float(hi)


def apply_window(values, lo: float, hi: float):
    """Linear map of [lo, hi] to [0, 1], clipped. Works on numpy arrays and torch tensors."""
    scaled = (values - lo) / (hi - lo)
    return scaled.clip(0, 1)
