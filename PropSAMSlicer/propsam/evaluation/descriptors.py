"""Shape irregularity descriptors of a 3D object (PropSAM paper): 1 for a compact convex blob,
smaller the more elongated, hollow, branched or lobulated the object is.

box ratio: volume / axis-aligned bounding-box volume.
convex ratio: voxels / grid points inside the convex hull of the voxel centres. The hull is taken
  in index coordinates: scaling an axis maps hulls to hulls and keeps voxel volumes equal, so the
  ratio is the same as in mm, and a digital ball or box scores exactly 1.
inverse rotational inertia: polar moment of inertia (integral of r^2 dV about the centroid, in
  mm) of a ball of the same volume / the object's; the ball minimises it, so the value is <= 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

_CHUNK = 1024  # grid lines intersected with the hull at a time
_EPS = 1e-7


@dataclass(frozen=True)
class ShapeDescriptors:
    box_ratio: float
    convex_ratio: float
    inverse_inertia: float


def _cropped(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask) > 0
    box = ndimage.find_objects(mask.astype(np.uint8))
    if not box or box[0] is None:
        raise ValueError("the object mask is empty")
    return mask[box[0]]


def box_ratio(mask: np.ndarray) -> float:
    crop = _cropped(mask)
    return float(crop.sum()) / crop.size


def convex_ratio(mask: np.ndarray) -> float:
    crop = _cropped(mask)
    thick = [a for a in range(crop.ndim) if crop.shape[a] > 1]
    if len(thick) <= 1:  # a row of voxels: its hull is its bounding box
        return float(crop.sum()) / crop.size
    flat = crop.reshape([crop.shape[a] for a in thick])
    surface = flat & ~ndimage.binary_erosion(flat)
    try:
        hull = ConvexHull(np.argwhere(surface).astype(float))
    except QhullError:  # every voxel on one line or plane: digitally convex
        return 1.0
    return float(flat.sum()) / _grid_points_inside(hull.equations, flat.shape)


def _grid_points_inside(equations: np.ndarray, shape: tuple[int, ...]) -> int:
    """Integer points of the box `shape` inside the hull. A line along the last axis crosses a convex
    hull in one interval, so each line's interval comes from the facets at once, not point by point."""
    normal, offset = equations[:, :-1], equations[:, -1]
    along = normal[:, -1]
    count = 0
    lines = np.indices(shape[:-1]).reshape(len(shape) - 1, -1).T.astype(float)
    for start in range(0, len(lines), _CHUNK):
        rhs = -(offset + lines[start : start + _CHUNK] @ normal[:, :-1].T)  # along * x <= rhs, per facet
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = rhs / along
        upper = np.where(along > _EPS, bound, np.inf).min(1)
        lower = np.where(along < -_EPS, bound, -np.inf).max(1)
        feasible = np.where(np.abs(along) <= _EPS, rhs >= -_EPS, True).all(1)
        lo = np.maximum(np.ceil(lower - _EPS), 0)
        hi = np.minimum(np.floor(upper + _EPS), shape[-1] - 1)
        count += int(np.where(feasible, np.clip(hi - lo + 1, 0, None), 0).sum())
    return count


def inverse_inertia(mask: np.ndarray, spacing_zyx) -> float:
    crop = _cropped(mask)
    spacing = np.asarray(spacing_zyx, float)
    coords = np.argwhere(crop) * spacing
    voxel_volume = float(np.prod(spacing))
    volume = len(coords) * voxel_volume
    # each voxel's own second moment about its centre adds V (a^2 + b^2 + c^2) / 12
    moment = voxel_volume * (((coords - coords.mean(0)) ** 2).sum() + len(coords) * (spacing**2).sum() / 12)
    radius = (3 * volume / (4 * math.pi)) ** (1 / 3)
    return 0.6 * volume * radius**2 / moment


def describe(mask: np.ndarray, spacing_zyx) -> ShapeDescriptors:
    return ShapeDescriptors(box_ratio(mask), convex_ratio(mask), inverse_inertia(mask, spacing_zyx))
