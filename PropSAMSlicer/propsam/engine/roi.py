"""Regions of interest on a 2D slice, and resampling between a slice and the model's square input.

Pixel coordinates: row/column indices of the slice array, pixel centres at integers. An ROI is a
centre and half-extents in pixels, so a square in millimetres may be a rectangle in pixels
(anisotropic in-plane spacing, e.g. a sagittal view of 5 mm axial slices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

MIN_HALF_EXTENT_PX = 8.0  # tiny objects get at least a 16-pixel window of context


@dataclass(frozen=True)
class Roi:
    centre_row: float
    centre_col: float
    half_rows: float
    half_cols: float

    def bounds(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """Integer row/col range [r0, r1) x [c0, c1) of the slice that the ROI touches."""
        r0 = max(0, int(math.floor(self.centre_row - self.half_rows)))
        r1 = min(shape[0], int(math.ceil(self.centre_row + self.half_rows)) + 1)
        c0 = max(0, int(math.floor(self.centre_col - self.half_cols)))
        c1 = min(shape[1], int(math.ceil(self.centre_col + self.half_cols)) + 1)
        return r0, r1, c0, c1


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive (r0, c0, r1, c1) of the non-zero pixels of a 2D mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise InputError("the mask is empty")
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def slice_extent(mask: np.ndarray, axis: int = 0) -> tuple[int, int] | None:
    """First and last slice index along `axis` holding any voxel of the mask."""
    filled = np.flatnonzero(np.moveaxis(mask > 0, axis, 0).reshape(mask.shape[axis], -1).any(axis=1))
    return (int(filled[0]), int(filled[-1])) if filled.size else None


def square_roi(mask: np.ndarray, spacing_rc: tuple[float, float], context: float) -> Roi:
    """Square (in mm) ROI around the mask's bounding box, enlarged by `context`."""
    r0, c0, r1, c1 = mask_bbox(mask)
    half_mm = max((r1 - r0 + 1) * spacing_rc[0], (c1 - c0 + 1) * spacing_rc[1]) / 2 * context
    return Roi(
        (r0 + r1) / 2,
        (c0 + c1) / 2,
        max(half_mm / spacing_rc[0], MIN_HALF_EXTENT_PX),
        max(half_mm / spacing_rc[1], MIN_HALF_EXTENT_PX),
    )


def box_roi(box: tuple[int, int, int, int], scale: float) -> Roi:
    """ROI of an inclusive pixel box (c0, r0, c1, r1) scaled about its centre."""
    c0, r0, c1, r1 = box
    return Roi(
        (r0 + r1) / 2,
        (c0 + c1) / 2,
        max((r1 - r0 + 1) / 2 * scale, MIN_HALF_EXTENT_PX / 2),
        max((c1 - c0 + 1) / 2 * scale, MIN_HALF_EXTENT_PX / 2),
    )


def roi_grid(
    roi: Roi, size: int, shape: tuple[int, int], rotation_deg: float = 0.0, flip_rows: bool = False, flip_cols: bool = False
) -> torch.Tensor:
    """(size, size, 2) grid_sample coordinates that read the ROI out of a slice of `shape`."""
    t = (torch.arange(size, dtype=torch.float64) * 2 + 1) / size - 1
    v, u = torch.meshgrid(t, t, indexing="ij")
    if flip_rows:
        v = -v
    if flip_cols:
        u = -u
    if rotation_deg:
        a = math.radians(rotation_deg)
        u, v = u * math.cos(a) - v * math.sin(a), u * math.sin(a) + v * math.cos(a)
    rows = roi.centre_row + v * roi.half_rows
    cols = roi.centre_col + u * roi.half_cols
    grid = torch.stack([(2 * cols + 1) / shape[1] - 1, (2 * rows + 1) / shape[0] - 1], dim=-1)
    return grid.float()


def crop_to_model(planes: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """planes (N, R, C) -> (N, S, S) sampled on `grid`; outside the slice reads 0."""
    n = planes.shape[0]
    sampled = F.grid_sample(
        planes[:, None].float(), grid[None].expand(n, -1, -1, -1).to(planes.device), mode=mode,
        padding_mode="zeros", align_corners=False,
    )
    return sampled[:, 0]


def paste_from_model(prob: torch.Tensor, roi: Roi, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """prob (N, S, S) in ROI coordinates -> (N, r1-r0, c1-c0) on the slice's pixels, plus the bounds."""
    r0, r1, c0, c1 = roi.bounds(shape)
    rows = torch.arange(r0, r1, dtype=torch.float64)
    cols = torch.arange(c0, c1, dtype=torch.float64)
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    grid = torch.stack([(cc - roi.centre_col) / roi.half_cols, (rr - roi.centre_row) / roi.half_rows], dim=-1)
    n = prob.shape[0]
    out = F.grid_sample(
        prob[:, None].float(), grid.float()[None].expand(n, -1, -1, -1).to(prob.device), mode="bilinear",
        padding_mode="zeros", align_corners=False,
    )
    return out[:, 0].cpu().numpy(), (r0, r1, c0, c1)
