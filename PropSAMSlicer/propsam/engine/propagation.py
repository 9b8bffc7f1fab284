"""Bidirectional propagation of a 2D mask through a volume with PropMask.

The volume is viewed with the propagation axis first (P, rows, cols). Each round sends both
directions' guides in one batch: a guide slice, its mask and the next `window` slices on its
side, all cropped by a square ROI (context x the mask's box) and windowed by the intensity range
of the first guiding mask. The next guide on each side is the most marginal predicted slice whose
area passes the minimum; a side stops at the volume edge or a bound, or when the object ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import ndimage

from ..errors import InputError
from .control import CancelToken, ProgressCallback
from .device import autocast_for
from .intensity import apply_window, inside_and_ring, separability, window_from_values
from .roi import crop_to_model, paste_from_model, roi_grid, slice_extent, square_roi
from .slice_context import context_slices
from .tta import mean_over, mean_turned_back, stack_turned


GROWTH_FLOOR_PX = 16  # max_growth judges a slice against at least this many pixels

# why a side stopped (PropagationStats.stop_reasons), in the words the CLI and the panel show
FADED, TOO_SMALL, LEAK, GROWTH, EDGE = "faded out", "too small", "leak limit", "growth limit", "edge"


@dataclass(frozen=True)
class PropagationOptions:
    thickness_mm: float = 20.0
    max_window: int = 16  # adjacent slices per guide, whatever the spacing
    # > 0: a round also reaches at most this x the prompt's radius (mm) along the axis, so a thin
    # object (a vessel that moves its own width in a few slices) is followed in short steps; 0: off.
    # Off: 1 gained on the tuning set's thin objects, but the dev report read -0.014 and the
    # tuning mean for mask prompts was within noise (results/window_per_radius/)
    window_per_radius: float = 0.0
    context: float = 1.5
    min_area_fraction: float = 0.01  # of the prompt's area ...
    min_area_px: int = 3  # ... but at least this many pixels
    presence_threshold: float = 0.5
    mask_threshold: float = 0.5  # PropMask's averaged probability above this is the object (guides, areas, result)
    stop_patience: int = 1  # a side stops after this many failing slices in a row (2: look past one dip)
    # a slice larger than this x the prompt's (or the guide's, if larger) fails: a leak into a
    # neighbour, since the prompt is drawn on the object's largest slice; 0: off. 2 was chosen on
    # tuning objects, never the evaluation set (results/stop_rule_tuning_real_v2.md)
    max_area_ratio: float = 2.0
    max_growth: float = 0.0  # a slice larger than this x the slice before it fails (a jump into a neighbour); 0: off
    # an end found far from its guide is looked at again from the last passing slice, its neighbour:
    # a far guide may miss a faint tail that the slice next to it still shows. Off: as many ends
    # then run on as stop short (results/confirm_end/)
    confirm_end: bool = False
    keep_connected: bool = True
    # after a side fades out or falls under the minimum area, follow the object's own intensity
    # for at most this many more slices (0: off): a faint tail the network lets go of, where the
    # prompt slice shows a clear outline (intensity separability >= tail_min_separability).
    # Off: about as many ends then run on as stop short less, +0.003 within noise (results/intensity_tail/)
    intensity_tail: int = 0
    tail_level: float = 0.5  # the cut between the ring's median (0) and the object's median (1)
    tail_min_separability: float = 0.9
    tail_growth: float = 1.0  # a tail slice may be at most this x the slice before it
    prompt_memory: bool = True  # show the prompt slice to a PropMask built with a memory (off: ablation)


def check_leak_limit(value: float | None, what: str = "leak limit") -> None:
    """None (the default), 0 (off) or a ratio within (1, 100]; anything else is refused."""
    if value is not None and value != 0 and not 1.0 < value <= 100:
        raise InputError(f"{what} must be 0 (off) or within (1, 100], got {value}")


def ends_text(stop_reasons: dict) -> str:
    """Why each end of the result is where it is, e.g. "lower: faded out, upper: leak limit"
    (lower is towards slice 0 of the prompt's axis)."""
    return ", ".join(f"{name}: {stop_reasons[d]}" for d, name in ((-1, "lower"), (1, "upper")) if d in stop_reasons)


def user_options(thickness_mm: float, context: float, leak_limit: float | None = None) -> PropagationOptions:
    """The options a user sets (the CLI, the Slicer panel); leak_limit None keeps the default."""
    options = PropagationOptions(thickness_mm=thickness_mm, context=context)
    return options if leak_limit is None else replace(options, max_area_ratio=leak_limit)


@dataclass
class PropagationStats:
    rounds: int = 0
    slices_predicted: int = 0
    extent: tuple[int, int] = (0, 0)  # first and last slice of the result along the axis
    stop_reasons: dict = field(default_factory=dict)  # direction -> why it stopped (FADED, ..., EDGE; corrections: USER_STOP)
    # per-slice confidence (see engine/confidence.py): slice -> the presence output, for every
    # predicted slice including the one that ended a side; slice -> agreement of the averaged
    # probability with the final mask, for the slices kept
    presence: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)

    def mirror(self, last: int) -> None:
        """Re-index to a reversed axis (slice k -> last - k, direction d -> -d)."""
        self.extent = (last - self.extent[1], last - self.extent[0])
        self.stop_reasons = {-d: why for d, why in self.stop_reasons.items()}
        self.presence = {last - k: v for k, v in self.presence.items()}
        self.agreement = {last - k: v for k, v in self.agreement.items()}


@dataclass
class _Side:
    direction: int
    guide: int
    mask: np.ndarray
    active: bool = True
    travelled: int = 0
    earlier: list = field(default_factory=list)  # the guides before this one, (slice, mask), most recent first


def _radius_mm(mask: np.ndarray, spacing_rc) -> float:
    """Radius of the disc with the mask's area, in mm."""
    return math.sqrt(mask.sum() * spacing_rc[0] * spacing_rc[1] / math.pi)


def window_size(thickness_mm: float, spacing_mm: float, cap: int) -> int:
    return int(np.clip(round(thickness_mm / spacing_mm), 1, cap))


def propagate(
    net, size: int, volume: np.ndarray, spacing_prc: tuple[float, float, float], guide_index: int,
    guide_mask: np.ndarray, device: torch.device, options: PropagationOptions = PropagationOptions(),
    bounds: tuple[int, int] | None = None, progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
    reference: tuple[int, np.ndarray] | None = None, orientations: int = 1,
) -> tuple[np.ndarray, PropagationStats]:
    """volume (P, R, C) raw; guide_mask (R, C) bool on slice guide_index -> (P, R, C) uint8 mask.

    reference: (slice, mask) that sets the intensity window and the minimum area; default the
    guide. A correction re-propagating from a later slice passes the prompt's, so the object is
    judged by the same yardstick as in the first run. Bounds limit the run to one side.
    orientations: PropMask averages over this many in-plane orientations (engine/tta.py).
    """
    depth = volume.shape[0]
    lo_bound, hi_bound = bounds if bounds is not None else (0, depth - 1)
    spacing_rc = spacing_prc[1:]
    ref_index, ref_mask = reference if reference is not None else (guide_index, guide_mask)
    lo, hi = window_from_values(volume[ref_index][ref_mask])
    min_area = max(options.min_area_px, options.min_area_fraction * ref_mask.sum())
    largest = max(int(ref_mask.sum()), int(guide_mask.sum()))  # a correction may be larger than the prompt
    max_area = options.max_area_ratio * largest if options.max_area_ratio > 0 else math.inf
    radius_mm = _radius_mm(guide_mask, spacing_rc)
    thickness_mm = options.thickness_mm
    if options.window_per_radius > 0:
        thickness_mm = min(thickness_mm, options.window_per_radius * _radius_mm(ref_mask, spacing_rc))
    window = window_size(thickness_mm, spacing_prc[0], options.max_window)
    expected_half = max(window, math.ceil(1.2 * radius_mm / spacing_prc[0]))

    # the prompt slice, shown to a PropMask built with a memory in every round (with the side's
    # previous guides where the network's memory holds more than one slice)
    memory = (guide_index, guide_mask) if options.prompt_memory and getattr(net, "memory_attention", None) else None
    kept = net.config.memory_slices - 1 if memory is not None else 0  # previous guides each side remembers
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    sides = [_Side(+1, guide_index, guide_mask), _Side(-1, guide_index, guide_mask)]
    stats = PropagationStats()
    done = 0
    while any(s.active for s in sides):
        if cancel is not None:
            cancel.raise_if_cancelled()
        batch = []
        for side in sides:
            if not side.active:
                continue
            targets = [side.guide + side.direction * k for k in range(1, window + 1)]
            targets = [t for t in targets if lo_bound <= t <= hi_bound]
            if not targets:
                side.active = False
                stats.stop_reasons[side.direction] = EDGE
                continue
            batch.append((side, targets))
        if not batch:
            break
        probs, presence, rois = _predict_round(net, size, volume, batch, spacing_rc, options.context, lo, hi, window, device,
                                               orientations, memory)
        stats.rounds += 1
        for (side, targets), prob, present, roi in zip(batch, probs, presence, rois):
            pasted, (r0, r1, c0, c1) = paste_from_model(torch.from_numpy(prob[: len(targets)]), roi, volume.shape[1:])
            planes = []
            for j in range(len(targets)):
                plane = np.zeros(volume.shape[1:], np.float32)
                plane[r0:r1, c0:c1] = pasted[j]
                planes.append(plane)
            accepted, ended, judged, why = _judge(planes, present[: len(targets)], min_area, max_area, options,
                                                  int(side.mask.sum()))
            for t, p in zip(targets[:judged], present[:judged]):
                stats.presence[t] = min(stats.presence.get(t, 1.0), float(p))
            for t, plane in zip(targets, planes[:accepted]):
                sums[t] = sums.get(t, 0) + plane
                counts[t] = counts.get(t, 0) + 1
            side.travelled += len(targets)
            done += len(targets)
            stats.slices_predicted += len(targets)
            if ended:
                side.active = False
                stats.stop_reasons[side.direction] = why
            else:  # the last accepted slice guides the next round
                side.earlier = ([(side.guide, side.mask)] + side.earlier)[:kept]
                side.guide = targets[accepted - 1]
                side.mask = sums[side.guide] / counts[side.guide] > options.mask_threshold
        if progress is not None:
            remaining = sum(
                min(max(window, expected_half - s.travelled), (hi_bound - s.guide) if s.direction > 0 else (s.guide - lo_bound))
                for s in sides if s.active
            )
            progress(done, done + remaining)

    result = np.zeros(volume.shape, np.uint8)
    for t, total in sums.items():
        result[t] = (total / counts[t]) > options.mask_threshold
    result[guide_index] = guide_mask
    cut = tail_cut(volume[ref_index], ref_mask, options) if options.intensity_tail > 0 else None
    if cut is not None:
        for side in sides:
            if stats.stop_reasons.get(side.direction) in (FADED, TOO_SMALL):
                # the side's last accepted slice: its farthest in the result's sums (the prompt if none)
                last = max((t for t in sums if (t - guide_index) * side.direction > 0), key=lambda t: t * side.direction,
                           default=guide_index)
                tail = intensity_tail(volume, last, side.direction, result[last] > 0, cut, (lo_bound, hi_bound),
                                      options.intensity_tail, options.min_area_px, options.tail_growth)
                for t, plane in tail:
                    result[t] = plane
                if tail:
                    stats.stop_reasons[side.direction] += f", then {len(tail)} slices by intensity"
    if options.keep_connected:
        result = keep_components_touching(result, guide_index, guide_mask)
    for t, total in sums.items():
        if t != guide_index and result[t].any():
            stats.agreement[t] = soft_agreement(total / counts[t], result[t] > 0)
    stats.extent = slice_extent(result, axis=0)
    return result, stats


def tail_cut(image: np.ndarray, mask: np.ndarray, options: PropagationOptions, ring: int = 3):
    """(level, bright) that tells the object from its surroundings by intensity on the reference
    slice, or None where its outline is not clear enough to follow by intensity alone."""
    inside, around = inside_and_ring(image, mask, ring)
    if separability(inside, around) < options.tail_min_separability:
        return None
    inside_median, around_median = float(np.median(inside)), float(np.median(around))
    return around_median + options.tail_level * (inside_median - around_median), inside_median > around_median


def intensity_tail(volume, last: int, direction: int, mask: np.ndarray, cut, bounds, limit: int, min_area: int,
                   growth: float = 1.0):
    """Slices past `last` that continue `mask` by intensity: each the pixels on the object's side
    of the cut, within one pixel of the slice before and connected to it, at most `growth` x its
    area (1: an end tapers). Stops at the first slice that fails, the bounds or `limit` slices."""
    level, bright = cut
    out, current, t = [], mask, last + direction
    while len(out) < limit and bounds[0] <= t <= bounds[1] and current.any():
        on = (volume[t] > level) if bright else (volume[t] < level)
        candidate = on & ndimage.binary_dilation(current)
        labels, _ = ndimage.label(candidate)
        keep = np.unique(labels[candidate & current])
        candidate = np.isin(labels, keep[keep > 0])
        area = int(candidate.sum())
        if area < min_area or area > growth * int(current.sum()):
            break
        out.append((t, candidate))
        current, t = candidate, t + direction
    return out


def _judge(planes, presence, min_area: float, max_area: float, options: PropagationOptions,
           guide_area: int = 0) -> tuple[int, bool, int, str]:
    """How many of a window's slices to accept, whether the object has ended, how many slices
    were looked at (up to and including the one that ended it), and why it ended ("" if not).

    A slice fails when the presence output says the object is absent (FADED), or its area is
    below the minimum (TOO_SMALL) or above the leak limit (LEAK), or (with max_growth) it outgrows
    the last passing slice (the guide to begin with) by more than that factor (GROWTH); growth is
    judged against at least GROWTH_FLOOR_PX, so a tiny lesion's few pixels may double. The object
    ends after `stop_patience` failures in a row, for the last one's reason; a shorter run of
    failures followed by a passing slice is a dip (a small lesion fading for a slice) and is
    accepted with its neighbours. A window that ends on pending failures hands the last passing
    slice on as guide, so the failures are looked at again from there. With confirm_end an end
    after a passing slice of the window does not end the side either: the last passing slice
    guides the next round, which judges the first failing slice from right next to it. Nothing
    accepted at all ends the side (it never loops on the same guide).
    """
    accepted, run, last_area = 0, 0, guide_area
    why = ""
    for j, plane in enumerate(planes):
        area = int((plane > options.mask_threshold).sum())
        why = (FADED if presence[j] < options.presence_threshold else TOO_SMALL if area < min_area
               else LEAK if area > max_area
               else GROWTH if options.max_growth > 0 and area > options.max_growth * max(last_area, GROWTH_FLOOR_PX)
               else "")
        if why:
            run += 1
            if run >= options.stop_patience:
                if options.confirm_end and accepted > 0:  # not yet seen from its neighbour: again, from there
                    return accepted, False, accepted, ""
                return accepted, True, j + 1, why
        else:
            run, accepted, last_area = 0, j + 1, area
    return accepted, accepted == 0, len(planes), why if accepted == 0 else ""  # nothing accepted: the last slice failed


def _predict_round(net, size, volume, batch, spacing_rc, context, lo, hi, window, device, orientations=1, memory=None):
    """One PropMask call for all active sides; shorter sides are padded by repeating their last slice.

    memory: (prompt slice, prompt mask) for a network with a memory: the prompt, then the side's
    previous guides (the prompt again where there are fewer), cropped like each side's guide.
    """
    memory_slices = net.config.memory_slices if memory is not None else 0
    channels = net.config.in_channels  # 2.5D: each slice with its neighbours along this side's direction

    def crop_images(indices, side, grid):  # (N,) slice indices -> (N, C, S, S)
        around = context_slices(np.asarray(indices), side.direction, channels, volume.shape[0]).ravel()
        planes = torch.from_numpy(np.ascontiguousarray(volume[around], dtype=np.float32))
        return crop_to_model(apply_window(planes, lo, hi), grid).unflatten(0, (len(indices), channels))

    images, masks, adjacent, rois, mem_images, mem_masks = [], [], [], [], [], []
    for side, targets in batch:
        roi = square_roi(side.mask, spacing_rc, context)
        grid = roi_grid(roi, size, volume.shape[1:])
        padded = targets + [targets[-1]] * (window - len(targets))
        x = crop_images([side.guide] + padded, side, grid)
        m = crop_to_model(torch.from_numpy(side.mask[None].astype(np.float32)), grid)
        images.append(x[0])
        masks.append((m > 0.5).float())
        adjacent.append(x[1:])
        rois.append(roi)
        if memory is not None:
            held = ([memory] + side.earlier + [memory] * memory_slices)[:memory_slices]  # earlier: at most M - 1
            mem_images.append(crop_images([index for index, _ in held], side, grid))
            mem_masks.append((crop_to_model(torch.from_numpy(np.stack([m for _, m in held]).astype(np.float32)), grid) > 0.5).float())
    tensors = (images, masks, adjacent) + ((mem_images, mem_masks) if memory is not None else ())
    inputs = [stack_turned(torch.stack(t), orientations).to(device) for t in tensors]
    with torch.inference_mode(), autocast_for(device):
        out = net(*inputs)
    probs = mean_turned_back(torch.sigmoid(out["masks"][0].float()), orientations)[:, :, 0].cpu().numpy()
    if "presence" in out:
        presence = mean_over(torch.sigmoid(out["presence"].float()), orientations).cpu().numpy()
    else:
        presence = np.ones(probs.shape[:2], np.float32)
    return probs, presence, rois


def soft_agreement(probability: np.ndarray, mask: np.ndarray) -> float:
    """Soft Dice of a slice's averaged probability with its final mask: 1 when every prediction
    of the slice is sharp and they coincide, lower where they hesitate or disagree."""
    total = float(probability.sum() + mask.sum())
    return 2.0 * float(probability[mask].sum()) / total if total > 0 else 1.0


def keep_components_touching(mask: np.ndarray, guide_index: int, guide_mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return mask
    keep = np.unique(labels[guide_index][guide_mask])
    keep = keep[keep > 0]
    return np.isin(labels, keep).astype(np.uint8)
