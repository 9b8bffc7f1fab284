"""Corrections of a result: fix one slice and re-propagate the rest from it.

A correction acts on slice k along the result's propagation axis, on one side of the prompt:
the side away from the prompt slice (both sides when k is the prompt slice and the correction
is a mask or a box). Slices between the prompt and k stay as they are; only the slices beyond k
on that side change:

- "mask": the corrected 2D mask of slice k (painted). Slice k becomes it, and the slices beyond
  are propagated again from it.
- "box": a 2D box on slice k; Box2Mask turns it into the mask, then as "mask".
- "stop": the object ends at slice k; the slices beyond are cleared. The stop holds for later
  corrections on its side: re-propagating from a slice before it ends there (until a "continue").
- "continue": the object goes on past slice k. One window past k is predicted from the result's
  slice k without the stop rule, then propagation goes on from there as in a run.

Corrections stack: a result is reproduced by running the prompt and applying the same list in
order. Re-propagation uses the prompt's intensity window and area yardstick (or the corrected
mask's, when it replaces the prompt slice), the same options as the run, and is deterministic.
Progress and cancellation work as in a run; a cancelled correction returns nothing.

File format (`propsam segment --corrections FILE.json`), version 1; indices as for the prompt
(array indices of SimpleITK.GetArrayFromImage, boxes X0,Y0,X1,Y1 inclusive on the slice)::

    {"format": "propsam-corrections", "version": 1,
     "corrections": [
       {"kind": "mask", "slice_index": 52, "mask_file": "fix52.nii.gz"},
       {"kind": "box", "slice_index": 20, "box": [40, 38, 71, 66]},
       {"kind": "stop", "slice_index": 61},
       {"kind": "continue", "slice_index": 12, "direction": -1}
     ]}

"slice_axis" ("z", "y" or "x", default "z") must be the prompt's axis. "direction" (+1: towards
higher indices, -1: lower) is needed for "stop" and "continue" on the prompt slice, and may
limit a "mask"/"box" there to one side; elsewhere it can only be the side away from the prompt.
"mask_file" (relative to the JSON file) is a 2D mask of the slice, or a mask on the image's
grid whose slice k is taken.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.volume import Volume
from .box2mask_predictor import box_to_mask
from .content_view import content_orientation, turn_spacing
from .control import CancelToken, ProgressCallback
from .orientation import canonical_flips, flip_array, flip_plane, flip_prompt
from .prompts import AXES, AXIS_NAMES, BoxPrompt, MaskPrompt, _check_slice, plane_shape
from .propagation import PropagationStats, propagate, window_size
from .roi import mask_bbox, slice_extent
from .segmenter import SegmentOptions, SegmentResult, Segmenter, check_volume
from .tta import ORIENTATIONS, Orientation, propmask_orientations

FORMAT = "propsam-corrections"
VERSION = 1
KINDS = ("mask", "box", "stop", "continue")
USER_STOP = "stopped by user"


@dataclass(frozen=True)
class Correction:
    kind: str
    slice_index: int
    axis: int = 0
    mask: np.ndarray | None = None  # "mask": 2D bool, the plane's shape
    box: tuple[int, int, int, int] | None = None  # "box": c0, r0, c1, r1 inclusive
    direction: int | None = None  # +1 / -1; None: away from the prompt (both ways on it for mask/box)

    def validate(self, shape, axis: int, prompt_index: int) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown correction kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.axis != axis:
            raise InputError(f"correction on slice axis {AXIS_NAMES[self.axis]} but the result was propagated "
                             f"along {AXIS_NAMES[axis]}; correct slices of the prompt's axis")
        _check_slice(shape, axis, self.slice_index)
        if self.direction not in (None, 1, -1):
            raise InputError(f"correction direction must be +1 or -1, got {self.direction!r}")
        k = self.slice_index
        if self.direction is not None and k != prompt_index and self.direction != np.sign(k - prompt_index):
            raise InputError(f"a correction on slice {k} can only change the slices beyond it, away from the "
                             f"prompt slice {prompt_index} (direction {int(np.sign(k - prompt_index)):+d})")
        if k == prompt_index and self.direction is None and self.kind in ("stop", "continue"):
            raise InputError(f"'{self.kind}' on the prompt slice {k} needs a direction (+1 or -1)")
        if self.kind == "mask":
            if self.mask is None or self.mask.shape != plane_shape(shape, axis):
                got = None if self.mask is None else self.mask.shape
                raise InputError(f"corrected mask of slice {k} has shape {got}, the slice plane is {plane_shape(shape, axis)}")
            if not np.any(self.mask):
                raise InputError(f"the corrected mask of slice {k} is empty; to end the object there, "
                                 "use a 'stop' on the slice before it")
        if self.kind == "box":
            if self.box is None:
                raise InputError(f"a 'box' correction on slice {k} needs its box")
            BoxPrompt(k, tuple(self.box), axis).validate(shape)

    def sides(self, prompt_index: int) -> tuple[int, ...]:
        if self.direction is not None:
            return (self.direction,)
        return (1, -1) if self.slice_index == prompt_index else (int(np.sign(self.slice_index - prompt_index)),)

    def flipped(self, flips, shape) -> "Correction":
        """The same correction on the array flipped by `flips` (as orientation.flip_prompt)."""
        if self.kind == "box":
            moved = flip_prompt(BoxPrompt(self.slice_index, tuple(self.box), self.axis), flips, shape)
            out = replace(self, slice_index=moved.slice_index, box=moved.box)
        elif self.kind == "mask":
            moved = flip_prompt(MaskPrompt(self.slice_index, self.mask, self.axis), flips, shape)
            out = replace(self, slice_index=moved.slice_index, mask=moved.mask)
        else:
            out = replace(self, slice_index=shape[self.axis] - 1 - self.slice_index if flips[self.axis] else self.slice_index)
        if flips[self.axis] and self.direction is not None:
            out = replace(out, direction=-self.direction)
        return out

    def turned(self, o: Orientation, plane: tuple[int, int]) -> "Correction":
        """The same correction on slices of shape `plane` turned in-plane by `o`."""
        if self.kind == "box":
            return replace(self, box=o.box(tuple(self.box), plane))
        if self.kind == "mask":
            return replace(self, mask=o.apply(self.mask))
        return self


def apply_corrections(
    segmenter: Segmenter, volume: Volume, result: SegmentResult, corrections: list[Correction],
    options: SegmentOptions = SegmentOptions(), progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> SegmentResult:
    """Apply a list of corrections in order; the result of each is the input of the next."""
    for correction in corrections:
        result = apply_correction(segmenter, volume, result, correction, options, progress, cancel)
    return result


def apply_correction(
    segmenter: Segmenter, volume: Volume, result: SegmentResult, correction: Correction,
    options: SegmentOptions = SegmentOptions(), progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> SegmentResult:
    """A new SegmentResult: `result` corrected on one slice and re-propagated beyond it. The
    mask may be any 3D result on the volume's grid (e.g. hand-edited); nothing passed is modified."""
    start = time.perf_counter()
    check_volume(volume)
    if result.mask.shape != volume.shape:
        raise InputError(f"the result to correct has shape {result.mask.shape}, the image {volume.shape}")
    axis, last = result.axis, volume.shape[result.axis] - 1
    correction.validate(volume.shape, axis, result.slice_index)
    flips = canonical_flips(volume.direction)
    flip = flips[axis]
    stats = replace(result.stats, presence=dict(result.stats.presence), agreement=dict(result.stats.agreement),
                    stop_reasons=dict(result.stats.stop_reasons))
    if flip:
        stats.mirror(last)
    prompt_index = last - result.slice_index if flip else result.slice_index
    mask, prompt_mask, stats = _correct_canonical(
        segmenter, flip_array(volume.array, flips), volume.spacing, axis,
        np.moveaxis(flip_array(result.mask, flips), axis, 0), prompt_index, flip_plane(result.prompt_mask, axis, flips),
        stats, correction.flipped(flips, volume.shape), options, progress, cancel,
    )
    if flip:
        stats.mirror(last)
    mask = np.ascontiguousarray(flip_array(np.moveaxis(mask, 0, axis), flips))
    stats.extent = slice_extent(mask, axis) or (result.slice_index, result.slice_index)
    prompt_mask = np.ascontiguousarray(flip_plane(prompt_mask, axis, flips))
    return SegmentResult(mask, prompt_mask, axis, result.slice_index, time.perf_counter() - start, stats)


def _correct_canonical(segmenter, array, spacing_xyz, axis, current, prompt_index, prompt_mask, stats: PropagationStats,
                       correction: Correction, options: SegmentOptions, progress, cancel):
    """current (P, R, C) with the propagation axis first; returns (mask (P, R, C), prompt mask, stats).

    Runs in the content view of the prompt slice and the result's prompt mask (engine/content_view.py),
    so a correction, like the first run, does not depend on how the axes were stored."""
    moved = np.moveaxis(array, axis, 0)
    spacing_zyx = tuple(spacing_xyz[::-1])
    spacing = (spacing_zyx[axis],) + tuple(spacing_zyx[a] for a in range(3) if a != axis)
    view = content_orientation(moved[prompt_index], mask_bbox(prompt_mask)) if options.tta.content_view else ORIENTATIONS[0]
    out, prompt_mask, stats = _correct_in_view(
        segmenter, view.apply(moved), turn_spacing(view, spacing), view.apply(current), prompt_index,
        view.apply(prompt_mask), stats, correction.turned(view, moved.shape[1:]), options, progress, cancel)
    return view.invert(out), view.invert(prompt_mask), stats


def _correct_in_view(segmenter, moved, spacing, current, prompt_index, prompt_mask, stats: PropagationStats,
                     correction: Correction, options: SegmentOptions, progress, cancel):
    depth, k, kind = moved.shape[0], correction.slice_index, correction.kind
    sides = correction.sides(prompt_index)
    net, size, device = segmenter.propmask, segmenter.config.propmask.image_size, segmenter.device

    def beyond(t: int, start: int = k) -> bool:
        return any((t - start) * d > 0 for d in sides)

    # an earlier "stop" still holds on its side: re-propagation from a slice before it ends there
    filled = np.flatnonzero(current.reshape(depth, -1).any(1))
    user_ends = {d: int(filled[-1] if d > 0 else filled[0]) for d in sides
                 if stats.stop_reasons.get(d) == USER_STOP and filled.size and kind != "continue"}

    def bounds(start: int, stop: int | None = None) -> tuple[int, int]:
        lo, hi = 0, depth - 1
        for d, end in list(user_ends.items()) + ([(sides[0], stop)] if stop is not None else []):
            if (end - start) * d > 0:
                lo, hi = (lo, min(hi, end)) if d > 0 else (max(lo, end), hi)
        if len(sides) == 1:
            lo, hi = (start, hi) if sides[0] > 0 else (lo, start)
        return lo, hi

    out = np.array(current, np.uint8)
    for t in range(depth):
        if beyond(t):
            out[t] = 0
    keep = {t for t in stats.presence if not beyond(t) and (kind in ("stop", "continue") or t != k)}
    new = PropagationStats(rounds=0, slices_predicted=0, stop_reasons=dict(stats.stop_reasons),
                           presence={t: v for t, v in stats.presence.items() if t in keep},
                           agreement={t: v for t, v in stats.agreement.items() if t in keep})
    reference = (prompt_index, prompt_mask)

    def run(guide_index, guide, opts, limits):
        mask, run_stats = propagate(net, size, moved, spacing, guide_index, guide, device, opts, bounds=limits,
                                    progress=progress, cancel=cancel, reference=reference,
                                    orientations=propmask_orientations(options.tta, device))
        for t in range(depth):
            if beyond(t, guide_index):
                out[t] = mask[t]
        new.rounds += run_stats.rounds
        new.slices_predicted += run_stats.slices_predicted
        new.presence.update({t: v for t, v in run_stats.presence.items() if beyond(t, guide_index)})
        new.agreement.update({t: v for t, v in run_stats.agreement.items() if beyond(t, guide_index)})
        new.stop_reasons.update({d: run_stats.stop_reasons[d] for d in sides if d in run_stats.stop_reasons})
        for d, end in user_ends.items():  # ended on the user's stop: it still is the reason
            if (end - guide_index) * d > 0 and new.stop_reasons.get(d) == "edge":
                new.stop_reasons[d] = USER_STOP
        return mask

    if kind in ("mask", "box"):
        if kind == "box":
            if cancel is not None:
                cancel.raise_if_cancelled()
            guide = box_to_mask(segmenter.box2mask, np.asarray(moved[k], np.float32), correction.box,
                                segmenter.config.box2mask.image_size, device, options.window_search, options.box_scale,
                                options.tta.box2mask)
        else:
            guide = np.asarray(correction.mask) > 0
        out[k] = guide
        if k == prompt_index and len(sides) == 2:  # the corrected slice replaces the prompt
            prompt_mask = guide
            reference = (k, guide)
        run(k, guide, options.propagation, bounds(k))
    elif kind == "stop":
        for d in sides:
            new.stop_reasons[d] = USER_STOP
    else:  # continue: one window past k without the stop rule, then a run from its last slice
        guide = current[k] > 0
        if not guide.any():
            raise InputError(f"slice {k} of the result is empty: nothing to continue from; paint or box the "
                             "object on it instead")
        window = window_size(options.propagation.thickness_mm, spacing[0], options.propagation.max_window)
        forced = replace(options.propagation, presence_threshold=0.0, min_area_px=1, min_area_fraction=0.0,
                         max_area_ratio=0.0, max_growth=0.0)
        mask = run(k, guide, forced, bounds(k, k + sides[0] * window))
        filled = [t for t in range(depth) if beyond(t) and mask[t].any()]
        if not filled:
            raise InputError(f"the model finds nothing past slice {k}; paint or box the object on the next slice instead")
        end = max(filled) if sides[0] > 0 else min(filled)
        run(end, mask[end] > 0, options.propagation, bounds(end))
    return out, prompt_mask, new


# --- the corrections file ----------------------------------------------------------------------
def read_corrections(path: str | Path, volume: Volume) -> list[Correction]:
    """Parse and check a corrections file against the image (not yet against the result)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"corrections file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read corrections file {path}: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InputError(f"{path} is not a corrections file: expected \"format\": \"{FORMAT}\"")
    if document.get("version") != VERSION:
        raise InputError(f"{path} has corrections format version {document.get('version')!r}; this propsam reads version {VERSION}")
    items = document.get("corrections")
    if not isinstance(items, list):
        raise InputError(f"{path}: \"corrections\" must be a list")
    return [_parse(item, i, path, volume) for i, item in enumerate(items)]


def _parse(item, i: int, path: Path, volume: Volume) -> Correction:
    where = f"{path}: correction {i}"
    if not isinstance(item, dict):
        raise InputError(f"{where} must be an object")
    unknown = set(item) - {"kind", "slice_index", "slice_axis", "mask_file", "box", "direction"}
    if unknown:
        raise InputError(f"{where} has unknown field(s) {', '.join(sorted(unknown))}")
    kind, k, axis_name = item.get("kind"), item.get("slice_index"), item.get("slice_axis", "z")
    if kind not in KINDS:
        raise InputError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(k, int) or isinstance(k, bool):
        raise InputError(f"{where}: slice_index must be an integer, got {k!r}")
    if axis_name not in AXES:
        raise InputError(f"{where}: slice_axis must be z, y or x, got {axis_name!r}")
    axis = AXES[axis_name]
    try:
        _check_slice(volume.shape, axis, k)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    direction = item.get("direction")
    if direction not in (None, 1, -1) or isinstance(direction, bool):
        raise InputError(f"{where}: direction must be 1 or -1, got {direction!r}")
    mask = box = None
    if kind == "mask":
        if "mask_file" not in item:
            raise InputError(f"{where}: a 'mask' correction needs mask_file")
        mask = _read_slice_mask(path.parent / str(item["mask_file"]), volume, axis, k, where)
    if kind == "box":
        value = item.get("box")
        if not (isinstance(value, list) and len(value) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise InputError(f"{where}: box must be 4 integers [X0, Y0, X1, Y1], got {value!r}")
        box = tuple(value)
    return Correction(kind, k, axis, mask, box, direction)


def _read_slice_mask(file: Path, volume: Volume, axis: int, k: int, where: str) -> np.ndarray:
    import SimpleITK as sitk

    if not file.is_file():
        raise InputError(f"{where}: mask file {file} does not exist")
    try:
        image = sitk.ReadImage(str(file))
    except RuntimeError:
        raise InputError(f"{where}: cannot read mask file {file}") from None
    if image.GetDimension() == 2:
        return sitk.GetArrayFromImage(image) > 0
    mask_volume = Volume.from_sitk(image)
    if not mask_volume.same_grid(volume):
        raise InputError(f"{where}: mask file {file} is not on the image's grid (size, spacing, origin or direction differ)")
    return np.take(mask_volume.array, k, axis=axis) > 0


def corrections_document(corrections: list[Correction], mask_files: dict[int, str] | None = None) -> dict:
    """The JSON document of a list (masks are referenced by file: mask_files maps list position -> path)."""
    items = []
    for i, c in enumerate(corrections):
        item = {"kind": c.kind, "slice_index": int(c.slice_index), "slice_axis": AXIS_NAMES[c.axis]}
        if c.kind == "mask":
            if not mask_files or i not in mask_files:
                raise InputError(f"correction {i} is a mask: give the file it is saved in")
            item["mask_file"] = mask_files[i]
        if c.kind == "box":
            item["box"] = [int(v) for v in c.box]
        if c.direction is not None:
            item["direction"] = int(c.direction)
        items.append(item)
    return {"format": FORMAT, "version": VERSION, "corrections": items}
