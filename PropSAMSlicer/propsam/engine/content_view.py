"""The content view: turn each object in-plane into a pose its own prompt slice picks.

The same anatomy can reach the engine in any of the 8 in-plane orientations (a flipped or
transposed storage, a direction matrix the canonical flips cannot undo: a mirrored acquisition,
a sagittal view of a transposed series). The networks, although trained on all 8, answer each
a little differently. Instead of averaging over orientations (engine/tta.py: exact, but 8 network
passes per slice), the engine turns the volume into the orientation that the prompt's own pixels
choose, before Box2Mask and PropMask see it, and turns the result back. Turning the input turns
the pixels, so it turns the choice with them: every stored orientation reaches the networks in
the same pose, and the answer no longer depends on the storage, at no network cost.

The pose: with v the prompt region's intensities minus their mean, and x, y its column and row
offsets from the region's centre, the first moments a = sum(v x) and b = sum(v y) are made
a >= 0, b >= 0 and a >= b (the brighter side goes right and down, right more than down). A flip
negates a moment and a transpose swaps them, so exactly one of the 8 orientations reaches that
pose unless a moment is 0 or |a| = |b|. The sums are exactly rounded (math.fsum), so a turned
region gives the same moments up to sign and order, bit for bit; a true tie means the region is
symmetric in those moments, and the first pose in the fixed order of ORIENTATIONS is taken.
"""

from __future__ import annotations

import math

import numpy as np

from .tta import ORIENTATIONS, Orientation


def region_moments(plane: np.ndarray, region: tuple[int, int, int, int]) -> tuple[float, float]:
    """(a, b): the intensity moments along cols and rows of plane[r0:r1+1, c0:c1+1] about its centre."""
    r0, c0, r1, c1 = region
    values = np.asarray(plane[r0 : r1 + 1, c0 : c1 + 1], dtype=np.float64)
    centred = values - math.fsum(values.ravel()) / values.size
    rows = np.arange(values.shape[0], dtype=np.float64)[:, None] * 2 - (values.shape[0] - 1)  # 2 x offset: integers
    cols = np.arange(values.shape[1], dtype=np.float64)[None, :] * 2 - (values.shape[1] - 1)
    return math.fsum((centred * cols).ravel()), math.fsum((centred * rows).ravel())


def turned_moments(o: Orientation, a: float, b: float) -> tuple[float, float]:
    """The moments of the region after `o` (transpose first, then the flips)."""
    if o.transpose:
        a, b = b, a
    return (-a if o.flip_cols else a), (-b if o.flip_rows else b)


def content_orientation(plane: np.ndarray, region: tuple[int, int, int, int]) -> Orientation:
    """The orientation that puts the prompt region of `plane` in the content pose (module docstring).
    region: inclusive (r0, c0, r1, c1) pixel bounds."""
    a, b = region_moments(plane, region)
    for o in ORIENTATIONS:
        ta, tb = turned_moments(o, a, b)
        if ta >= 0 and tb >= 0 and ta >= tb:
            return o
    raise AssertionError("unreachable: one of the 8 orientations always reaches the pose")


def turn_spacing(o: Orientation, spacing_prc: tuple[float, float, float]) -> tuple[float, float, float]:
    """(along the axis, rows, cols) spacing of a (P, R, C) stack after `o`."""
    p, r, c = spacing_prc
    return (p, c, r) if o.transpose else (p, r, c)


def box_region(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """A prompt box (c0, r0, c1, r1) as a region (r0, c0, r1, c1), the order of roi.mask_bbox,
    which gives a prompt mask's region."""
    c0, r0, c1, r1 = box
    return r0, c0, r1, c1
