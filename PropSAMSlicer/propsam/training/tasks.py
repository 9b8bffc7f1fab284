"""Training samples for both networks, drawn from real volumes and phantoms.

A PropMask task is a guiding slice, its mask and K adjacent slices within the propagation
thickness on one side (each image slice with its neighbours for a 2.5D network), cropped by the
same square ROI as at inference. A share of guides is taken near an object's end so that some
targets are empty: that is how stopping is learned.

With `self_guide`, a share of tasks also carries the slice one round behind the guide (its true
mask): the trainer lets the network read the guide slice from it and trains on that reading as
the guide, as propagation's later rounds do (train.py own_guides).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..engine.intensity import apply_window, window_from_values
from ..engine.roi import Roi, box_roi, crop_to_model, mask_bbox, roi_grid, square_roi
from ..engine.slice_context import context_slices
from .sources import LabelledObject, SourceVolume

MIN_GUIDE_AREA = 16
# small_share's tasks: objects whose every slice along the axis is at most small_area pixels, with
# guides down to this many pixels (thin vessels and muscles, small lesions: the objects that stop short)
SMALL_GUIDE_AREA = 4


@dataclass
class TaskOptions:
    image_size: int = 96
    adjacent: int = 8
    thickness_mm: tuple[float, float] = (15.0, 30.0)
    max_window: int = 16
    end_fraction: float = 0.3  # guides taken within one window of the object's end
    memory: bool = False  # also return the "prompt slice" (image + mask) behind the guide
    memory_slices: int = 1  # ... and (memory_slices - 1) previous guides between it and the guide
    perturb_guide: float = 0.0  # share of tasks whose guide mask is slightly wrong (memory corrects it)
    small_share: float = 0.0  # share of tasks drawn from objects of small cross-section (see SMALL_GUIDE_AREA)
    small_area: int = 100  # ... at most this many pixels on every slice along the task's axis
    # share of tasks whose guide mask the trainer replaces by the network's own reading of the guide
    # slice from the slice one round behind it (its true mask): later rounds' guides at inference
    # are the network's own, with its own errors, not a true or randomly perturbed mask
    self_guide: float = 0.0
    in_channels: int = 1  # 2.5D: each image slice with its neighbours along the propagation (slice_context.py)
    context: tuple[float, float] = (1.0, 2.0)
    box_scale: tuple[float, float] = (1.0, 1.25)
    augment: bool = True


def _planes(volume: np.ndarray, axis: int, indices: np.ndarray) -> np.ndarray:
    """Slices `indices` along `axis`, as (N, rows, cols) in np.take's in-plane order."""
    return np.moveaxis(np.take(volume, indices, axis=axis), axis, 0)


def _object_planes(obj: LabelledObject, shape, axis: int, indices: np.ndarray) -> np.ndarray:
    full = np.zeros((len(indices),) + tuple(s for i, s in enumerate(shape) if i != axis), bool)
    lo, hi = obj.bbox[axis].start, obj.bbox[axis].stop
    inplane = tuple(b for i, b in enumerate(obj.bbox) if i != axis)
    for n, idx in enumerate(indices):
        if lo <= idx < hi:
            full[(n,) + inplane] = np.take(obj.mask, idx - lo, axis=axis)
    return full


def _augmentation(rng: np.random.Generator, allow_rotation: bool, free_angle: bool) -> dict:
    """One of the 8 in-plane orientations (quarter turns x a flip), uniformly: a volume may store
    its axes in any of them. PropMask (free_angle) also gets a small extra rotation."""
    aug = {"rotation_deg": 0.0, "flip_rows": bool(rng.random() < 0.5), "flip_cols": False}
    if allow_rotation:
        aug["rotation_deg"] = 90.0 * int(rng.integers(4))
        if free_angle and rng.random() < 0.5:
            aug["rotation_deg"] += float(rng.uniform(-30, 30))
    return aug


def _perturb_guide(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slightly wrong guide (too big, too small or shifted), as after a few rounds of drift."""
    kind = rng.integers(3)
    steps = int(rng.integers(1, 4))
    if kind == 0:
        out = ndimage.binary_dilation(mask, iterations=steps)
    elif kind == 1:
        out = ndimage.binary_erosion(mask, iterations=steps)
    else:
        out = np.roll(mask, tuple(rng.integers(-steps, steps + 1, 2)), axis=(0, 1))
    return out if out.sum() >= MIN_GUIDE_AREA else mask


def previous_guides(guide, prompt, direction, window, memory_slices: int) -> list:
    """The guides of the rounds before `guide`, most recent first, as propagation meets them: a
    window apart (every round accepting its whole window), and the prompt where that would pass
    it. The same arithmetic serves ints (tasks.py) and tensors of them (device_data.py)."""
    out = []
    for j in range(1, memory_slices):
        back = guide - direction * window * j
        out.append(back + (prompt - back) * (direction * (back - prompt) < 0))
    return out


def _brightness_contrast(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    if rng.random() < 0.5:
        x = (x - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.2, 0.2)
    return x.clamp(0, 1)


def _pick_object(sources: list[SourceVolume], rng: np.random.Generator) -> tuple[SourceVolume, LabelledObject]:
    weights = np.array([s.weight if s.objects else 0.0 for s in sources], float)  # skip volumes with no object
    source = sources[rng.choice(len(sources), p=weights / weights.sum())]
    return source, source.objects[rng.integers(len(source.objects))]


def _slice_areas(obj: LabelledObject, axis: int, length: int) -> np.ndarray:
    areas = np.zeros(length, np.int64)
    other = tuple(i for i in range(3) if i != axis)
    areas[obj.bbox[axis]] = obj.mask.sum(axis=other)
    return areas


def _pick_guided(sources: list[SourceVolume], rng: np.random.Generator, small: bool, small_area: int):
    """(source, object, axis, slice areas, slices usable as a guide); `small`: an object whose
    slices along the axis are all at most small_area pixels, None if 200 draws find none."""
    for _ in range(200 if small else 50):
        source, obj = _pick_object(sources, rng)
        axis = int(rng.integers(3))
        areas = _slice_areas(obj, axis, source.image.shape[axis])
        if small and areas.max() > small_area:
            continue
        valid = np.flatnonzero(areas >= (SMALL_GUIDE_AREA if small else MIN_GUIDE_AREA))
        if valid.size:
            return source, obj, axis, areas, valid
    if small:
        return None
    raise RuntimeError("no object with a usable guiding slice")


def sample_propmask_task(sources: list[SourceVolume], rng: np.random.Generator, opt: TaskOptions) -> dict:
    small = opt.small_share > 0 and rng.random() < opt.small_share
    picked = _pick_guided(sources, rng, small, opt.small_area) if small else None
    source, obj, axis, areas, valid = picked or _pick_guided(sources, rng, False, opt.small_area)
    length = source.image.shape[axis]
    spacing = source.spacing_zyx[axis]
    window = int(np.clip(round(rng.uniform(*opt.thickness_mm) / spacing), 1, opt.max_window))
    direction = int(rng.choice([-1, 1]))
    if rng.random() < opt.end_fraction:
        end = valid[-1] if direction > 0 else valid[0]
        near = valid[np.abs(valid - end) < window]
        guide = int(rng.choice(near))
    else:
        guide = int(rng.choice(valid))
    offsets = np.arange(1, window + 1)
    inside = offsets[(guide + direction * offsets >= 0) & (guide + direction * offsets < length)]
    if inside.size == 0:
        direction = -direction
        inside = offsets[(guide + direction * offsets >= 0) & (guide + direction * offsets < length)]
    chosen = np.sort(rng.choice(inside, size=opt.adjacent, replace=inside.size < opt.adjacent))
    indices = np.concatenate([[guide], guide + direction * chosen])
    if opt.memory:  # the user's prompt lies behind the guide: often the largest slice, else any
        behind = valid[direction * (valid - guide) <= 0]
        if rng.random() < 0.5:
            memory = int(behind[areas[behind].argmax()])
        else:
            memory = int(rng.choice(behind))
        indices = np.concatenate([indices, [memory] + previous_guides(guide, memory, direction, window, opt.memory_slices)])
    own_guide = None
    if opt.self_guide > 0 and opt.memory:  # the slice a round behind the guide (the prompt, if nearer)
        behind_guide = previous_guides(guide, memory, direction, window, 2)[0]
        own_guide = rng.random() < opt.self_guide and behind_guide != guide and areas[behind_guide] >= MIN_GUIDE_AREA
        indices = np.concatenate([indices, [behind_guide]])

    c = opt.in_channels
    images = _planes(source.image, axis, context_slices(indices, direction, c, length).ravel())  # (P * C, rows, cols)
    masks = _object_planes(obj, source.image.shape, axis, indices)
    if rng.random() < opt.perturb_guide:
        masks[0] = _perturb_guide(masks[0], rng)
    spacing_rc = tuple(s for i, s in enumerate(source.spacing_zyx) if i != axis)
    roi = square_roi(masks[0], spacing_rc, float(rng.uniform(*opt.context)))
    jitter = rng.uniform(-0.1, 0.1, 2)
    roi = Roi(roi.centre_row + jitter[0] * roi.half_rows, roi.centre_col + jitter[1] * roi.half_cols, roi.half_rows, roi.half_cols)
    aug = _augmentation(rng, opt.augment, free_angle=True) if opt.augment else {}
    grid = roi_grid(roi, opt.image_size, images.shape[1:], **aug)
    prompt = opt.adjacent + 1 if opt.memory else 0
    lo, hi = window_from_values(images[prompt * c + c // 2][masks[prompt]],
                                rng.uniform(0, 2), rng.uniform(98, 100))  # the prompt's window, as at inference
    x = crop_to_model(apply_window(torch.from_numpy(images), lo, hi), grid).unflatten(0, (len(indices), c))
    if opt.augment:
        x = _brightness_contrast(x, rng)
    y = (crop_to_model(torch.from_numpy(masks.astype(np.float32)), grid) > 0.5).float()
    k = opt.adjacent
    task = {
        "guide_image": x[0], "guide_mask": y[:1], "adjacent": x[1 : k + 1], "target": y[1 : k + 1, None],
        "presence": torch.from_numpy(areas[indices[1 : k + 1]] > 0).float(),
        "position": torch.from_numpy(direction * chosen / window).float(),
    }
    if opt.memory:
        end = k + 1 + opt.memory_slices
        task["memory_image"], task["memory_mask"] = x[k + 1 : end], y[k + 1 : end]
    if own_guide is not None:
        task["source_image"], task["source_mask"] = x[-1], y[-1:]
        # a source that the guide's crop loses (an object that moves or tapers across the round) guides nothing
        task["self_guide"] = torch.tensor(float(own_guide and y[-1].sum() >= MIN_GUIDE_AREA))
    return task


def sample_box2mask(sources: list[SourceVolume], rng: np.random.Generator, opt: TaskOptions) -> dict:
    for _ in range(50):
        source, obj = _pick_object(sources, rng)
        axis = int(rng.integers(3))
        areas = _slice_areas(obj, axis, source.image.shape[axis])
        valid = np.flatnonzero(areas >= MIN_GUIDE_AREA)
        if valid.size:
            break
    else:
        raise RuntimeError("no object with a usable slice")
    index = np.array([int(rng.choice(valid))])
    image = _planes(source.image, axis, index)[0]
    mask = _object_planes(obj, source.image.shape, axis, index)[0]
    r0, c0, r1, c1 = mask_bbox(mask)
    roi = box_roi((c0, r0, c1, r1), float(rng.uniform(*opt.box_scale)))
    shift = rng.uniform(-0.05, 0.05, 2)
    roi = Roi(roi.centre_row + shift[0] * roi.half_rows, roi.centre_col + shift[1] * roi.half_cols, roi.half_rows, roi.half_cols)
    if rng.random() < 0.7:  # a window of the inference search grid, else the (optional) refined one
        br0, br1, bc0, bc1 = roi.bounds(image.shape)
        lo, hi = window_from_values(image[br0:br1, bc0:bc1], rng.uniform(5, 40), rng.uniform(90, 95))
    else:
        lo, hi = window_from_values(image[mask], 0.5, 99.5)
    aug = _augmentation(rng, opt.augment, free_angle=False) if opt.augment else {}
    grid = roi_grid(roi, opt.image_size, image.shape, **aug)
    x = crop_to_model(apply_window(torch.from_numpy(image[None]), lo, hi), grid)
    if opt.augment:
        x = _brightness_contrast(x, rng)
    y = (crop_to_model(torch.from_numpy(mask[None].astype(np.float32)), grid) > 0.5).float()
    return {"image": x, "target": y}


def collate(samples: list[dict]) -> dict:
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
