"""Run every volume in one canonical array orientation.

The same physical grid can be stored with any array axis reversed (a left-handed NIfTI, or
Slicer's copy of it). Flipping those axes so that each array axis runs along the positive
direction of its dominant physical axis makes the result depend on the anatomy, not the storage.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .prompts import BoxPrompt, MaskPrompt, Prompt, TwoViewBoxPrompt

PLANE_AXES = {0: (1, 2), 1: (0, 2), 2: (0, 1)}  # numpy axes of a plane's (rows, cols)


def canonical_flips(direction) -> tuple[bool, bool, bool]:
    """Per numpy axis (z, y, x): reverse it? ITK's direction column c is index axis c (x, y, z)."""
    d = np.asarray(direction, float).reshape(3, 3)
    flip_xyz = [d[int(np.argmax(np.abs(d[:, c]))), c] < 0 for c in range(3)]
    return tuple(flip_xyz[::-1])  # type: ignore[return-value]


def flip_array(array: np.ndarray, flips) -> np.ndarray:
    index = tuple(slice(None, None, -1) if f else slice(None) for f in flips)
    return array[index]


def _flip_range(lo: int, hi: int, size: int, flip: bool) -> tuple[int, int]:
    return (size - 1 - hi, size - 1 - lo) if flip else (lo, hi)


def flip_prompt(prompt: Prompt, flips, shape) -> Prompt:
    """The same prompt expressed on the flipped array (flipping twice gives it back)."""
    if isinstance(prompt, TwoViewBoxPrompt):
        x0, y0, z0, x1, y1, z1 = prompt.box3d
        x0, x1 = _flip_range(x0, x1, shape[2], flips[2])
        y0, y1 = _flip_range(y0, y1, shape[1], flips[1])
        z0, z1 = _flip_range(z0, z1, shape[0], flips[0])
        return TwoViewBoxPrompt((x0, y0, z0, x1, y1, z1))
    axis = prompt.axis
    index = shape[axis] - 1 - prompt.slice_index if flips[axis] else prompt.slice_index
    row_axis, col_axis = PLANE_AXES[axis]
    if isinstance(prompt, BoxPrompt):
        c0, r0, c1, r1 = prompt.box
        r0, r1 = _flip_range(r0, r1, shape[row_axis], flips[row_axis])
        c0, c1 = _flip_range(c0, c1, shape[col_axis], flips[col_axis])
        return replace(prompt, slice_index=index, box=(c0, r0, c1, r1))
    return replace(prompt, slice_index=index, mask=flip_plane(prompt.mask, axis, flips))


def flip_plane(plane: np.ndarray, axis: int, flips) -> np.ndarray:
    row_axis, col_axis = PLANE_AXES[axis]
    return plane[slice(None, None, -1) if flips[row_axis] else slice(None), slice(None, None, -1) if flips[col_axis] else slice(None)]
