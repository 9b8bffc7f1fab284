"""Slicer prompts (markups ROI, slice view, painted segment) -> the engine's prompts in voxel indices.

A box drawn in a slice view is a markups ROI. Its slice axis is the voxel axis closest to the
view's normal (or, without a view, the ROI's thinnest voxel extent); its slice is the voxel
nearest the ROI centre; its rectangle spans the voxels whose centres lie inside the ROI.
Boxes reaching past the volume's edge are clipped; boxes or slices entirely outside are refused.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np

from propsam.engine.prompts import AXIS_NAMES, BoxPrompt, MaskPrompt, TwoViewBoxPrompt
from propsam.errors import InputError

from .geometry import check_volume_node, ijk_to_ras, matrix_to_numpy, node_name, parent_to_world, world_to_ijk

# a view farther than this from every voxel plane is refused: the box would not be one slice
MAX_OBLIQUE_DEGREES = 20.0
EPS = 1e-6
IJK_NAMES = "IJK"


def roi_corners_world(roi_node) -> np.ndarray:
    """The ROI's 8 corners in world RAS (4, 8) homogeneous."""
    if roi_node is None:
        raise InputError("no box is drawn: place the box on a slice first")
    if roi_node.GetNumberOfControlPoints() == 0:
        raise InputError(f"box '{node_name(roi_node)}' is not placed yet")
    size = np.array(roi_node.GetSize(), float)
    half = size / 2.0
    corners = np.array([[sx * half[0], sy * half[1], sz * half[2], 1.0] for sx, sy, sz in product((-1, 1), repeat=3)]).T
    return matrix_to_numpy(roi_node.GetObjectToWorldMatrix()) @ corners


def roi_ijk_bounds(volume_node, roi_node) -> tuple[np.ndarray, np.ndarray]:
    """Continuous voxel-index bounds (i, j, k) of the ROI's corners: (low, high)."""
    corners = (world_to_ijk(volume_node) @ roi_corners_world(roi_node))[:3]
    return corners.min(axis=1), corners.max(axis=1)


def slice_plane_normals(volume_node) -> np.ndarray:
    """Unit normals (world RAS) of the voxel planes k=const, j=const, i=const, as rows 0 (I) .. 2 (K)."""
    columns = (parent_to_world(volume_node) @ ijk_to_ras(volume_node))[:3, :3]
    normals = []
    for axis in range(3):
        a, b = (columns[:, c] for c in range(3) if c != axis)
        normal = np.cross(a, b)
        normals.append(normal / np.linalg.norm(normal))
    return np.array(normals)


def view_axis(volume_node, slice_node) -> tuple[int, float]:
    """(numpy axis of the volume the view's slices lie on, degrees between them), flips included."""
    normal = matrix_to_numpy(slice_node.GetSliceToRAS())[:3, 2]
    normal = normal / np.linalg.norm(normal)
    cosines = np.abs(slice_plane_normals(volume_node) @ normal)
    ijk_axis = int(np.argmax(cosines))
    degrees = math.degrees(math.acos(min(1.0, float(cosines[ijk_axis]))))
    if degrees > MAX_OBLIQUE_DEGREES:
        raise InputError(
            f"view '{node_name(slice_node)}' is oblique to the voxel grid of '{node_name(volume_node)}' "
            f"({degrees:.0f} degrees from its nearest slice plane); rotate the view to the volume's planes "
            "(slice view menu: 'Rotate to volume plane') and draw the prompt again"
        )
    return 2 - ijk_axis, degrees


def _voxel_range(low: float, high: float, size: int, what: str) -> tuple[int, int]:
    """Voxels whose centres lie in [low, high], clipped to 0..size-1."""
    first, last = math.ceil(low - EPS), math.floor(high + EPS)
    if last < 0 or first > size - 1:
        raise InputError(f"{what} lies outside the volume (voxels {first}..{last}, the volume has 0..{size - 1})")
    return max(first, 0), min(last, size - 1)


def _slice_of(center: float, size: int, axis: int) -> int:
    index = int(math.floor(center + 0.5))
    if not 0 <= index < size:
        raise InputError(
            f"the box is on slice {index} along {AXIS_NAMES[axis]}, outside the volume (slices 0..{size - 1}); "
            "draw it on a slice of the selected volume"
        )
    return index


def box_prompt_from_roi(volume_node, roi_node, slice_node=None) -> BoxPrompt:
    """The one-view box prompt for an ROI drawn on one slice (in `slice_node`'s view if given)."""
    check_volume_node(volume_node)
    low, high = roi_ijk_bounds(volume_node, roi_node)
    dims = volume_node.GetImageData().GetDimensions()  # i, j, k
    if slice_node is not None:
        axis, _ = view_axis(volume_node, slice_node)
    else:
        thickness = high - low
        ijk_axis = int(np.argmin(thickness))
        if thickness[ijk_axis] > 1.0 + EPS:
            raise InputError(
                f"box '{node_name(roi_node)}' is {thickness[ijk_axis]:.1f} voxels thick along every axis; "
                "draw it on one slice (or use the two-view box)"
            )
        axis = 2 - ijk_axis
    ijk_axis = 2 - axis
    index = _slice_of((low[ijk_axis] + high[ijk_axis]) / 2.0, dims[ijk_axis], axis)
    # plane rows/cols are the remaining numpy axes in order, so cols = the lower IJK axis
    col_ijk, row_ijk = (a for a in range(3) if a != ijk_axis)
    c0, c1 = _voxel_range(low[col_ijk], high[col_ijk], dims[col_ijk], f"box '{node_name(roi_node)}'")
    r0, r1 = _voxel_range(low[row_ijk], high[row_ijk], dims[row_ijk], f"box '{node_name(roi_node)}'")
    if c1 <= c0 or r1 <= r0:
        raise InputError(
            f"box '{node_name(roi_node)}' covers {c1 - c0 + 1} x {r1 - r0 + 1} voxels inside the volume; "
            "it must span at least 2 x 2 voxels"
        )
    return BoxPrompt(index, (c0, r0, c1, r1), axis)


def two_view_prompt_from_roi(volume_node, roi_node) -> TwoViewBoxPrompt:
    """A 3D box: drawn in one view, its depth set by dragging it in an orthogonal view."""
    check_volume_node(volume_node)
    low, high = roi_ijk_bounds(volume_node, roi_node)
    dims = volume_node.GetImageData().GetDimensions()
    ranges = [_voxel_range(low[a], high[a], dims[a], f"two-view box '{node_name(roi_node)}'") for a in range(3)]
    flat = [IJK_NAMES[a] for a, (lo, hi) in enumerate(ranges) if hi <= lo]
    if flat:
        raise InputError(
            f"two-view box '{node_name(roi_node)}' is flat along {', '.join(flat)}: drag its handles in a second, "
            "orthogonal view to give it the object's extent"
        )
    (i0, i1), (j0, j1), (k0, k1) = ranges
    return TwoViewBoxPrompt((i0, j0, k0, i1, j1, k1))


def mask_prompt_from_array(mask3d: np.ndarray, axis: int | None = None, what: str = "sketch") -> MaskPrompt:
    """A sketch painted on one slice of the volume grid; `axis` (from the view) settles 1-voxel-thin sketches."""
    mask3d = np.asarray(mask3d) > 0
    if not mask3d.any():
        raise InputError(f"the {what} is empty: paint the object on one slice first")
    if axis is not None:
        slices = np.flatnonzero(mask3d.any(axis=tuple(a for a in range(3) if a != axis)))
        if slices.size == 1:
            return MaskPrompt(int(slices[0]), np.take(mask3d, int(slices[0]), axis=axis), axis)
    return MaskPrompt.from_volume_mask(mask3d)


def flatten_box_to_view(roi_node, slice_node, only_in_view: bool = True) -> None:
    """Make a box drawn with two clicks (or click-drag) in a slice view a flat 2D box on that view's
    slice: Slicer places such an ROI as a 3D box whose depth equals its shorter side. `only_in_view`
    shows it in that view alone (the one-view box); a two-view box stays visible everywhere so its
    depth can be dragged in an orthogonal view."""
    constrain_roi_to_slice(roi_node, slice_node)
    display = roi_node.GetDisplayNode()
    if display is not None:
        display.SetViewNodeIDs([slice_node.GetID()] if only_in_view else [])


def constrain_roi_to_slice(roi_node, slice_node) -> None:
    """Flatten an ROI onto the view's slice plane through its centre: the box is then 2D in that view."""
    normal = matrix_to_numpy(slice_node.GetSliceToRAS())[:3, 2]
    normal_in_roi = np.linalg.inv(matrix_to_numpy(roi_node.GetObjectToWorldMatrix()))[:3, :3] @ normal
    roi_axis = int(np.argmax(np.abs(normal_in_roi)))
    size = list(roi_node.GetSize())
    if size[roi_axis] != 0.0:
        size[roi_axis] = 0.0
        roi_node.SetSize(*size)
