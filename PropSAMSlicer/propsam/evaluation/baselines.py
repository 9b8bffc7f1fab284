"""Baselines that carry a 2D mask through the volume slice by slice along numpy axis 0.

All share the engine's stop rules: each direction stops at the volume edge or once the object
vanishes (area below the engine's minimum), and only the 3D component touching the prompt is kept.
  copy: the prompt mask itself, repeated until the image under it no longer looks like the prompt.
  registration: 2D Demons registration of each slice to the previous one warps the mask along.
  box2mask_chain: MedSAM-Lite "type I" chaining: the previous mask's box plus a margin is the next box.
    Box2Mask has no presence output and always finds something in a box, so empty results alone
    rarely stop it; by default it also stops on the drift rule below.

Drift rule of copy and registration: stop when the median intensity under the carried mask moves
more than DRIFT_K robust standard deviations (1.4826 MAD) from the prompt's. The median of a
two-tissue mixture only leaves the object's distribution when the other tissue nears half of the
mask, so with K = 1 a clear edge stops a slice once about 40 % of the mask lies outside the object,
where keeping the slice would start to cost Dice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..engine.box2mask_predictor import box_to_mask
from ..engine.intensity import apply_window, window_from_values
from ..engine.propagation import PropagationOptions, keep_components_touching
from ..engine.roi import mask_bbox, square_roi
from ..errors import InputError
from ..io.volume import Volume

DRIFT_K = 1.0
REGISTRATION_CONTEXT = 2.0  # crop around the mask: room for the motion between slices
DEMONS_ITERATIONS = 30
DEMONS_SMOOTHING_MM = 1.5
CHAIN_MARGIN = 0.1  # of the previous box's size per side, at least CHAIN_MARGIN_PX
CHAIN_MARGIN_PX = 2

Step = Callable[[int, int, np.ndarray], "np.ndarray | None"]  # (from slice, to slice, mask) -> mask or stop


@dataclass(frozen=True)
class IntensityReference:
    median: float
    spread: float

    @classmethod
    def of(cls, plane: np.ndarray, mask: np.ndarray) -> "IntensityReference":
        values = plane[mask].astype(np.float64)
        median = float(np.median(values))
        mad = 1.4826 * float(np.median(np.abs(values - median)))
        lo, hi = window_from_values(plane)
        return cls(median, max(mad, 0.01 * (hi - lo)))  # a flat label value would stop at any noise

    def drifted(self, plane: np.ndarray, mask: np.ndarray) -> bool:
        return abs(float(np.median(plane[mask])) - self.median) > DRIFT_K * self.spread


def chain(volume: np.ndarray, slice_index: int, prompt_mask: np.ndarray, step: Step) -> np.ndarray:
    """Run `step` outwards from the prompt slice in both directions -> uint8 (Z, Y, X) mask."""
    prompt_mask = np.asarray(prompt_mask) > 0
    options = PropagationOptions()
    min_area = max(options.min_area_px, options.min_area_fraction * prompt_mask.sum())
    out = np.zeros(volume.shape, np.uint8)
    out[slice_index] = prompt_mask
    for direction in (+1, -1):
        mask, target = prompt_mask, slice_index + direction
        while 0 <= target < volume.shape[0]:
            mask = step(target - direction, target, mask)
            if mask is None or mask.sum() < min_area:
                break
            out[target] = mask
            target += direction
    return keep_components_touching(out, slice_index, prompt_mask)


def copy_baseline(volume: Volume, slice_index: int, prompt_mask: np.ndarray) -> np.ndarray:
    image = volume.array
    reference = IntensityReference.of(image[slice_index], prompt_mask > 0)

    def step(_source: int, target: int, mask: np.ndarray):
        return None if reference.drifted(image[target], mask) else mask

    return chain(image, slice_index, prompt_mask, step)


def _image2d(array: np.ndarray, spacing_rc: tuple[float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing((spacing_rc[1], spacing_rc[0]))
    return image


def warp_mask(source: np.ndarray, target: np.ndarray, mask: np.ndarray, spacing_rc) -> np.ndarray:
    """Register `target` to `source` (2D, Demons) around the mask and carry the mask onto `target`."""
    r0, r1, c0, c1 = square_roi(mask, spacing_rc, REGISTRATION_CONTEXT).bounds(mask.shape)
    crops = source[r0:r1, c0:c1], target[r0:r1, c0:c1]
    lo, hi = window_from_values(np.concatenate([c.ravel() for c in crops]))
    moving, fixed = (_image2d(apply_window(c.astype(np.float32), lo, hi), spacing_rc) for c in crops)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(DEMONS_ITERATIONS)
    demons.SetStandardDeviations(DEMONS_SMOOTHING_MM)
    demons.SetNumberOfThreads(1)  # tiny 2D crops: threads cost more than they save, and stay deterministic
    field = demons.Execute(fixed, moving)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    carried = _image2d(mask[r0:r1, c0:c1], spacing_rc)
    warped = sitk.GetArrayFromImage(sitk.Resample(carried, fixed, transform, sitk.sitkLinear, 0.0)) > 0.5
    out = np.zeros(mask.shape, bool)
    out[r0:r1, c0:c1] = warped
    return out


def registration_baseline(volume: Volume, slice_index: int, prompt_mask: np.ndarray) -> np.ndarray:
    image = volume.array
    spacing_rc = (volume.axis_spacing(1), volume.axis_spacing(2))
    reference = IntensityReference.of(image[slice_index], prompt_mask > 0)

    def step(source: int, target: int, mask: np.ndarray):
        warped = warp_mask(image[source], image[target], mask, spacing_rc)
        return None if not warped.any() or reference.drifted(image[target], warped) else warped

    return chain(image, slice_index, prompt_mask, step)


def grown_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The mask's box plus the chaining margin, clipped to the slice, as (col0, row0, col1, row1)."""
    r0, c0, r1, c1 = mask_bbox(mask)
    dr = max(CHAIN_MARGIN_PX, round(CHAIN_MARGIN * (r1 - r0 + 1)))
    dc = max(CHAIN_MARGIN_PX, round(CHAIN_MARGIN * (c1 - c0 + 1)))
    rows, cols = mask.shape
    return max(0, c0 - dc), max(0, r0 - dr), min(cols - 1, c1 + dc), min(rows - 1, r1 + dr)


def box_guide(segmenter, plane: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Box2Mask on one slice, as the engine runs it for a box prompt; InputError when nothing is found."""
    return box_to_mask(segmenter.box2mask, plane.astype(np.float32), box, segmenter.config.box2mask.image_size,
                       segmenter.device)


def box2mask_chain(volume: Volume, slice_index: int, prompt_mask: np.ndarray, segmenter,
                   stop_on_drift: bool = True) -> np.ndarray:
    """`segmenter`: a loaded engine Segmenter; only its Box2Mask network is used."""
    image = volume.array
    reference = IntensityReference.of(image[slice_index], prompt_mask > 0)

    def step(_source: int, target: int, mask: np.ndarray):
        try:
            found = box_guide(segmenter, image[target], grown_box(mask))
        except InputError:  # Box2Mask found nothing in the box: the object has ended
            return None
        return None if stop_on_drift and reference.drifted(image[target], found) else found

    return chain(image, slice_index, prompt_mask, step)
