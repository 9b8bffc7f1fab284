"""Intensity windows (raw CT/MR values to [0, 1] for the networks) and how well intensity alone
tells an object from its surroundings."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


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


def inside_and_ring(image: np.ndarray, mask: np.ndarray, ring: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The intensities inside `mask` and in a ring of `ring` pixels around it (float64)."""
    mask = mask > 0
    around = ndimage.binary_dilation(mask, iterations=ring) & ~mask
    return image[mask].astype(np.float64), image[around].astype(np.float64)


def separability(inside: np.ndarray, around: np.ndarray) -> float:
    """The Mann-Whitney AUC of two sets of intensities, folded to 0.5 (the same) .. 1 (fully apart);
    NaN where either is empty."""
    from scipy import stats  # here, not at the top: importing scipy.stats took 0.9 s here, too much for every engine start

    if inside.size == 0 or around.size == 0:
        return float("nan")
    auc = stats.mannwhitneyu(inside, around).statistic / (inside.size * around.size)  # U of `inside`, ties halved
    return float(max(auc, 1.0 - auc))


def edge_separability(image: np.ndarray, mask: np.ndarray, ring: int = 3) -> float:
    """How visible an object's outline is on one slice: the separability of the intensities inside
    `mask` from a ring of `ring` pixels around it, 0.5 (the same intensities: only the guide's
    shape can tell the object from its neighbours) .. 1 (fully apart)."""
    return separability(*inside_and_ring(image, mask, ring))
