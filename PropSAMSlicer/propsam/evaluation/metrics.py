"""Overlap and surface metrics in physical units (spacing in mm, numpy axis order)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..engine.intensity import edge_separability  # noqa: F401  (the evaluation's outline classes; the engine's intensity tail)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    a, b = prediction > 0, truth > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def surface_distances(prediction: np.ndarray, truth: np.ndarray, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of one mask to the other's surface, both ways."""
    a, b = prediction > 0, truth > 0
    sa, sb = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing_zyx)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing_zyx)
    return to_b[sa], to_a[sb]


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing_zyx) -> float:
    """95th percentile symmetric Hausdorff distance in mm; inf when one mask is empty."""
    if not (prediction > 0).any() or not (truth > 0).any():
        return float("inf")
    d1, d2 = surface_distances(prediction, truth, spacing_zyx)
    return float(np.percentile(np.concatenate([d1, d2]), 95))


def average_surface_distance(prediction: np.ndarray, truth: np.ndarray, spacing_zyx) -> float:
    if not (prediction > 0).any() or not (truth > 0).any():
        return float("inf")
    d1, d2 = surface_distances(prediction, truth, spacing_zyx)
    return float(np.concatenate([d1, d2]).mean())
