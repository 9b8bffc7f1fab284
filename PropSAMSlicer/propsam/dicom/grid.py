"""Bring a mask file onto a series grid without interpolation, or refuse.

A mask saved as NIfTI often stores the same voxels with flipped or swapped axes. When every
voxel centre of the mask coincides with one of the series' the voxels are only reindexed;
any other difference (shift, other spacing, other extent) is an error, never a resampling.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

# a voxel centre is "the same" if it lies within this fraction of a voxel
INDEX_TOL = 1e-2


def mask_on_grid(mask: sitk.Image, grid: sitk.Image, name: str = "mask") -> np.ndarray:
    """The mask's voxels as a (Z, Y, X) array in `grid`'s index order."""
    if mask.GetDimension() != 3 or grid.GetDimension() != 3:
        raise InputError(f"{name} must be a 3D image")
    origin_in_mask = np.array(mask.TransformPhysicalPointToContinuousIndex(grid.GetOrigin()))
    steps = []
    for axis in range(3):
        unit = [0, 0, 0]
        unit[axis] = 1
        point = grid.TransformIndexToPhysicalPoint(unit)
        steps.append(np.array(mask.TransformPhysicalPointToContinuousIndex(point)) - origin_in_mask)
    steps = np.array(steps)  # row i: mask index change per grid step along axis i
    is_permutation = (
        np.allclose(np.abs(steps).sum(axis=1), 1, atol=INDEX_TOL)
        and np.allclose(np.abs(steps).max(axis=1), 1, atol=INDEX_TOL)
        and sorted(np.abs(steps).argmax(axis=1)) == [0, 1, 2]
    )
    on_voxels = np.allclose(origin_in_mask, np.round(origin_in_mask), atol=INDEX_TOL)
    if not (is_permutation and on_voxels):
        raise InputError(f"{name} is not on the grid of the DICOM series ({_describe(mask)} vs {_describe(grid)})")
    start = np.round(origin_in_mask).astype(int)
    steps = np.round(steps).astype(int)
    grid_size = np.array(grid.GetSize())
    end = start + steps.T @ (grid_size - 1)
    if (np.minimum(start, end) != 0).any() or (np.maximum(start, end) != np.array(mask.GetSize()) - 1).any():
        raise InputError(f"{name} covers a different extent than the DICOM series ({_describe(mask)} vs {_describe(grid)})")
    array = sitk.GetArrayFromImage(mask)  # (z, y, x) = mask axes (2, 1, 0)
    # numpy axis of the mask array that each grid axis (x, y, z) runs along, and its sign
    mask_axis = np.abs(steps).argmax(axis=1)
    numpy_axes = [2 - int(m) for m in mask_axis]
    signs = [int(steps[i, mask_axis[i]]) for i in range(3)]
    # grid numpy order is (z, y, x) = grid axes (2, 1, 0)
    out = np.transpose(array, [numpy_axes[2], numpy_axes[1], numpy_axes[0]])
    flips = tuple(i for i, axis in enumerate((2, 1, 0)) if signs[axis] < 0)
    return np.ascontiguousarray(np.flip(out, axis=flips) if flips else out)


def _describe(image: sitk.Image) -> str:
    spacing = ", ".join(f"{s:g}" for s in image.GetSpacing())
    origin = ", ".join(f"{o:.2f}" for o in image.GetOrigin())
    return f"size {image.GetSize()}, spacing ({spacing}) mm, origin ({origin})"
