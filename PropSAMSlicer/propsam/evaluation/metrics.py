"""Overlap and surface metrics in physical units (spacing in mm, numpy axis order)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    a, b = prediction > 0, truth > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def edge_separability(image: np.ndarray, mask: np.ndarray, ring: int = 3) -> float:
    """How visible an object's outline is on one slice: the Mann-Whitney AUC of the intensities
    inside `mask` against a ring of `ring` pixels around it, folded to 0.5 (the same intensities:
    only the guide's shape can tell the object from its neighbours) .. 1 (fully apart)."""
    mask = mask > 0
    inside = image[mask].astype(np.float64)
    around = image[ndimage.binary_dilation(mask, iterations=ring) & ~mask].astype(np.float64)
    if inside.size == 0 or around.size == 0:
        return float("nan")
    auc = stats.mannwhitneyu(inside, around).statistic / (inside.size * around.size)  # U of `inside`, ties halved
    return float(max(auc, 1.0 - auc))


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
