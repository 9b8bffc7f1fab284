"""One-view and two-view prompts, in array indices of the (Z, Y, X) volume, and their checks.

A 2D prompt lies on slice `slice_index` along `axis` (0 = z/axial array axis, 1 = y, 2 = x).
Its plane is np.take(volume, slice_index, axis): rows/cols are (Y, X) for z, (Z, X) for y and
(Z, Y) for x. A box is (col0, row0, col1, row1), inclusive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

AXES = {"z": 0, "y": 1, "x": 2}
AXIS_NAMES = "zyx"
PLANE_AXES = {0: ("Y", "X"), 1: ("Z", "X"), 2: ("Z", "Y")}  # (rows, cols)


def plane_shape(shape: tuple[int, int, int], axis: int) -> tuple[int, int]:
    return tuple(s for i, s in enumerate(shape) if i != axis)  # type: ignore[return-value]


def _check_slice(shape, axis: int, index: int) -> None:
    if axis not in (0, 1, 2):
        raise InputError(f"slice axis must be z, y or x (0, 1, 2), got {axis!r}")
    if not 0 <= index < shape[axis]:
        raise InputError(f"slice index {index} is outside the volume: axis {AXIS_NAMES[axis]} has slices 0..{shape[axis] - 1}")


@dataclass(frozen=True)
class BoxPrompt:
    slice_index: int
    box: tuple[int, int, int, int]  # col0, row0, col1, row1 inclusive
    axis: int = 0

    def validate(self, shape) -> None:
        _check_slice(shape, self.axis, self.slice_index)
        c0, r0, c1, r1 = self.box
        rows, cols = plane_shape(shape, self.axis)
        names = PLANE_AXES[self.axis]
        if c1 < c0 or r1 < r0:
            raise InputError(f"box is inverted: {names[1]}1 < {names[1]}0 or {names[0]}1 < {names[0]}0 in {self.box}")
        if c1 == c0 or r1 == r0:
            raise InputError(f"box {self.box} has zero width or height")
        if c0 < 0 or r0 < 0 or c1 >= cols or r1 >= rows:
            raise InputError(
                f"box {self.box} lies outside the slice: {names[1]} must be within 0..{cols - 1} and {names[0]} within 0..{rows - 1}"
            )


@dataclass(frozen=True)
class MaskPrompt:
    slice_index: int
    mask: np.ndarray  # 2D, the plane's shape
    axis: int = 0

    def validate(self, shape) -> None:
        _check_slice(shape, self.axis, self.slice_index)
        expected = plane_shape(shape, self.axis)
        if self.mask.ndim != 2 or self.mask.shape != expected:
            raise InputError(f"mask prompt has shape {self.mask.shape}, the slice plane is {expected}")
        if not np.any(self.mask):
            raise InputError("mask prompt is empty: sketch the object on the slice first")

    @classmethod
    def from_volume_mask(cls, mask3d: np.ndarray) -> "MaskPrompt":
        """A mask on the image grid with exactly one non-empty slice; its axis is inferred."""
        nonzero = np.argwhere(mask3d)
        if nonzero.size == 0:
            raise InputError("mask prompt is empty: it has no non-zero voxel")
        single = [axis for axis in range(3) if np.unique(nonzero[:, axis]).size == 1]
        if not single:
            counts = [int(np.unique(nonzero[:, a]).size) for a in range(3)]
            raise InputError(
                f"mask prompt spans several slices along every axis (z: {counts[0]}, y: {counts[1]}, x: {counts[2]}); "
                "draw it on one slice"
            )
        axis = single[0]
        index = int(nonzero[0, axis])
        return cls(index, np.take(mask3d, index, axis=axis) > 0, axis)


@dataclass(frozen=True)
class TwoViewBoxPrompt:
    """A 3D box (x0, y0, z0, x1, y1, z1) inclusive: an axial box plus its extent in an orthogonal view."""

    box3d: tuple[int, int, int, int, int, int]

    def validate(self, shape) -> None:
        x0, y0, z0, x1, y1, z1 = self.box3d
        if x1 <= x0 or y1 <= y0 or z1 < z0:
            raise InputError(f"two-view box {self.box3d} is inverted or has zero size")
        limits = {"x": (x0, x1, shape[2]), "y": (y0, y1, shape[1]), "z": (z0, z1, shape[0])}
        for name, (lo, hi, size) in limits.items():
            if lo < 0 or hi >= size:
                raise InputError(f"two-view box {self.box3d} lies outside the volume: {name} must be within 0..{size - 1}")

    def axial_prompt(self) -> BoxPrompt:
        x0, y0, z0, x1, y1, z1 = self.box3d
        return BoxPrompt((z0 + z1) // 2, (x0, y0, x1, y1), axis=0)


Prompt = BoxPrompt | MaskPrompt | TwoViewBoxPrompt
