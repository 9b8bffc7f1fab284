"""Training batches made on the training device (a lent GPU) from a training pack.

The data stay on the device (atlas.Atlas) and a whole batch of PropMask tasks or Box2Mask crops
is drawn with vectorised tensor operations: the same recipe as tasks.py (object by weight, axis,
guide slice with a share near the object's end, K adjacent slices within the propagation
thickness, each with its neighbours for a 2.5D network, the prompt-memory slice behind the guide
(and the previous guides), perturbed guides, the square ROI with context and jitter, the 8
in-plane orientations plus a free angle for PropMask, percentile windows, brightness/contrast,
presence and position targets) and the same keys and shapes, so the Trainer and the losses are
shared. Where tasks.py works on full-resolution pixels (percentile
windows, the perturbed guide), this works on the crop's samples; the difference is that of a
resampling.

Synthetic volumes come from device_synth on the same device, rebuilt every few steps.
No SimpleITK here: the device machine has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.slice_context import context_slices
from .atlas import Atlas, build_atlas
from .pack import PackedVolume, load_pack
from .sources import objects_from_labels
from .tasks import MIN_GUIDE_AREA, SMALL_GUIDE_AREA, TaskOptions, previous_guides

MIN_HALF_EXTENT_PX = 8.0  # as engine.roi


def label_sets(labels: np.ndarray, spec) -> tuple[np.ndarray, list[list[int]]]:
    """(labels, label values of each object) of a packed volume, objects as objects_from_labels finds
    them; for 'components' the labels become the components (one value per object)."""
    objects = objects_from_labels(labels, spec)
    if spec == "components":
        painted = np.zeros(labels.shape, np.int32)
        for i, obj in enumerate(objects, start=1):
            painted[obj.bbox][obj.mask] = i
        return painted, [[i] for i in range(1, len(objects) + 1)]
    labels = labels.astype(np.int32)
    return labels, [sorted(int(v) for v in np.unique(labels[obj.bbox][obj.mask])) for obj in objects]


def pack_atlas(volumes: list[PackedVolume], device, phantom_total: float | None = None) -> Atlas:
    """The real (and phantom) volumes of a pack on `device`; phantoms share `phantom_total` weight."""
    n_phantoms = sum(v.kind == "phantom" for v in volumes)
    items = []
    for v in volumes:
        labels, sets = label_sets(v.labels, v.objects)
        weight = v.weight if v.kind != "phantom" or phantom_total is None else phantom_total / n_phantoms
        items.append((torch.from_numpy(v.image), torch.from_numpy(labels), v.spacing_zyx, weight, sets))
    return build_atlas(items, device)


# ---------------------------------------------------------------- drawing indices

def _uniform(gen, n, lo, hi, device):
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _pick(weights: torch.Tensor, k: int, gen, replacement: bool = False) -> torch.Tensor:
    """k indices per row of non-negative weights; a row with no weight draws uniformly (an all-zero
    row would be a device-side assert on CUDA)."""
    w = weights.float()
    w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
    return torch.multinomial(w, k, replacement=replacement, generator=gen)


def _pick_one(weights: torch.Tensor, gen) -> torch.Tensor:
    return _pick(weights, 1, gen)[:, 0]


def _pick_pairs(atlas: Atlas, n: int, gen, small_share: float = 0.0, small_area: int = 0):
    """(object, axis, slice areas, smallest guide area) of n draws: a volume by weight, one of its
    objects, an axis where the object has a usable slice (tasks._pick_guided with its retries).
    A small_share of the draws is an (object, axis) whose slices are all at most small_area
    pixels, with guides down to SMALL_GUIDE_AREA (where the atlas has one)."""
    usable = (atlas.areas >= MIN_GUIDE_AREA).any(-1)  # (O, 3)
    weights = (atlas.obj_weight[:, None] * usable).flatten()
    pick = torch.multinomial(weights, n, replacement=True, generator=gen)
    least = torch.full((n,), MIN_GUIDE_AREA, device=pick.device)
    if small_share > 0:
        tiny = (atlas.areas >= SMALL_GUIDE_AREA).any(-1) & (atlas.areas.amax(-1) <= small_area)
        tiny_weights = (atlas.obj_weight[:, None] * tiny).flatten()
        if float(tiny_weights.sum()) > 0:
            small = torch.rand(n, generator=gen, device=pick.device) < small_share
            pick = torch.where(small, torch.multinomial(tiny_weights, n, replacement=True, generator=gen), pick)
            least = torch.where(small, SMALL_GUIDE_AREA, least)
    obj, axis = pick // 3, pick % 3
    return obj, axis, atlas.areas[obj, axis].long(), least


@dataclass
class Planes:
    """B tasks, P planes each, sampled on an S x S grid of in-plane points."""

    image: torch.Tensor  # (B, P, S, S, 4) raw values at the 4 bilinear corners (0 outside)
    weight: torch.Tensor  # (B, P, S, S, 4) bilinear weights, 0 for corners outside the slice
    member: torch.Tensor  # (B, P, S, S, 4) bool: corner inside the object

    def mask(self) -> torch.Tensor:
        return (self.weight * self.member).sum(-1)

    def raw(self) -> torch.Tensor:
        return (self.weight * self.image).sum(-1)

    def windowed(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """As tasks.py: window each pixel, then resample (zeros outside the slice)."""
        scaled = ((self.image - lo[:, None, None, None, None]) / (hi - lo)[:, None, None, None, None]).clamp(0, 1)
        return (self.weight * scaled).sum(-1)


def roi_points(centre_row, centre_col, half_rows, half_cols, size: int, rotation_deg, flip_rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched engine.roi.roi_grid, in pixel coordinates: (B, S, S) rows and cols."""
    device = centre_row.device
    t = (torch.arange(size, device=device, dtype=torch.float32) * 2 + 1) / size - 1
    v, u = torch.meshgrid(t, t, indexing="ij")
    v = torch.where(flip_rows[:, None, None], -v, v)
    a = torch.deg2rad(rotation_deg)[:, None, None]
    u, v = u * torch.cos(a) - v * torch.sin(a), u * torch.sin(a) + v * torch.cos(a)
    return centre_row[:, None, None] + v * half_rows[:, None, None], centre_col[:, None, None] + u * half_cols[:, None, None]


def sample_planes(atlas: Atlas, obj, axis, slices, rows, cols) -> Planes:
    """Planes `slices` (B, P) along `axis` (B,) of each task's volume, read at (rows, cols) (B, S, S)."""
    vol = atlas.obj_volume[obj]
    shape, stride = atlas.shape[vol], atlas.stride[vol]
    plane = torch.tensor([_plane for _plane in ((1, 2), (0, 2), (0, 1))], device=axis.device)[axis]  # (B, 2)
    n_rows, n_cols = shape.gather(1, plane[:, :1])[:, 0], shape.gather(1, plane[:, 1:])[:, 0]
    s_row, s_col = stride.gather(1, plane[:, :1])[:, 0], stride.gather(1, plane[:, 1:])[:, 0]
    s_axis = stride.gather(1, axis[:, None])[:, 0]
    r0, c0 = rows.floor(), cols.floor()
    fr, fc = rows - r0, cols - c0
    r0, c0 = r0.long(), c0.long()
    base = atlas.offset[vol][:, None] + slices * s_axis[:, None]  # (B, P)
    images, weights, members = [], [], []
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (1, 0, fr * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 1, fr * fc)):
        r, c = r0 + dr, c0 + dc
        inside = (r >= 0) & (r < n_rows[:, None, None]) & (c >= 0) & (c < n_cols[:, None, None])
        inplane = r.clamp(min=0) * s_row[:, None, None] + c.clamp(min=0) * s_col[:, None, None]
        index = base[:, :, None, None] + torch.where(inside, inplane, 0)[:, None]
        label = atlas.labels[index].long()
        images.append(atlas.image[index])
        weights.append(w[:, None].expand_as(index) * inside[:, None])
        members.append(atlas.members[obj[:, None, None, None], label])
    return Planes(torch.stack(images, -1), torch.stack(weights, -1), torch.stack(members, -1))


def masked_percentiles(values: torch.Tensor, mask: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
    """Per row of values (B, N): np.percentile of values[mask] at `low` and `high` (B,), with
    engine.intensity.window_from_values' widening of degenerate windows; rows with no pixel: (0, 1)."""
    count = mask.sum(1)
    ordered = torch.where(mask, values, torch.full_like(values, float("inf"))).sort(1).values
    out = []
    for pct in (low, high):
        pos = (pct / 100 * (count - 1).clamp(min=0)).clamp(min=0)
        i0 = pos.floor().long()
        i1 = torch.minimum(i0 + 1, (count - 1).clamp(min=0))
        v0, v1 = ordered.gather(1, i0[:, None])[:, 0], ordered.gather(1, i1[:, None])[:, 0]
        out.append(v0 + (pos - i0) * (v1 - v0))
    lo, hi = out
    spread = torch.where(mask, values.abs(), torch.zeros_like(values)).amax(1) * 0.05
    flat = (hi - lo) < 1e-6
    lo = torch.where(flat, lo - spread.clamp(min=1e-3), lo)
    hi = torch.where(flat, hi + spread.clamp(min=1e-3), hi)
    empty = count == 0
    return torch.where(empty, 0.0, lo), torch.where(empty, 1.0, hi)


def brightness_contrast(x: torch.Tensor, gen) -> torch.Tensor:
    """tasks._brightness_contrast per task (x: (B, ...))."""
    n, device = x.shape[0], x.device
    on = torch.rand(n, generator=gen, device=device) < 0.5
    gain = torch.where(on, _uniform(gen, n, 0.8, 1.2, device), 1.0)
    shift = torch.where(on, _uniform(gen, n, -0.2, 0.2, device), 0.0)
    view = (-1,) + (1,) * (x.dim() - 1)
    return ((x - 0.5) * gain.view(view) + 0.5 + shift.view(view)).clamp(0, 1)


def _orientation(gen, n, device, free_angle: bool, augment: bool = True):
    """tasks._augmentation: one of the 8 in-plane orientations (+ a free angle for PropMask);
    without augmentation, the stored orientation (no random draw)."""
    if not augment:
        return torch.zeros(n, device=device), torch.zeros(n, dtype=torch.bool, device=device)
    flip = torch.rand(n, generator=gen, device=device) < 0.5
    angle = 90.0 * torch.randint(4, (n,), generator=gen, device=device).float()
    if free_angle:
        extra = torch.rand(n, generator=gen, device=device) < 0.5
        angle = angle + torch.where(extra, _uniform(gen, n, -30, 30, device), 0.0)
    return angle, flip


def _plane_spacing(atlas: Atlas, obj, axis):
    vol = atlas.obj_volume[obj]
    plane = torch.tensor([(1, 2), (0, 2), (0, 1)], device=axis.device)[axis]
    sp = atlas.spacing[vol]
    return sp.gather(1, axis[:, None])[:, 0], sp.gather(1, plane[:, :1])[:, 0], sp.gather(1, plane[:, 1:])[:, 0]


def _perturb(mask: torch.Tensor, kind, steps, scale, gen) -> torch.Tensor:
    """tasks._perturb_guide on the crop: dilate / erode / shift by `steps` slice pixels (x scale)."""
    px = (steps.float() * scale).round().clamp(min=1).long()  # model pixels per step count
    out = mask.clone()
    grown, shrunk = mask, mask
    for i in range(1, int(px.max()) + 1 if px.numel() else 1):
        grown = F.max_pool2d(grown[:, None], 3, 1, 1)[:, 0]
        shrunk = -F.max_pool2d(-shrunk[:, None], 3, 1, 1)[:, 0]
        hit = px == i
        out = torch.where((hit & (kind == 0))[:, None, None], grown, out)
        out = torch.where((hit & (kind == 1))[:, None, None], shrunk, out)
    n, size = mask.shape[0], mask.shape[-1]
    shift = (torch.randint(-3, 4, (n, 2), generator=gen, device=mask.device).float()
             * steps[:, None].float() / 3 * scale[:, None]).round().long()
    grid = torch.arange(size, device=mask.device)
    rows = (grid[None, :] - shift[:, :1])  # np.roll: out[i] = in[i - shift], wrapping as np.roll does
    cols = (grid[None, :] - shift[:, 1:])
    rolled = mask[torch.arange(n, device=mask.device)[:, None, None], rows[:, :, None] % size, cols[:, None, :] % size]
    out = torch.where((kind == 2)[:, None, None], rolled, out)
    return torch.where((out.sum((1, 2)) >= MIN_GUIDE_AREA)[:, None, None], out, mask)


def sample_propmask_batch(atlas: Atlas, n: int, gen, opt: TaskOptions) -> dict:
    device = atlas.image.device
    obj, axis, areas, least = _pick_pairs(atlas, n, gen, opt.small_share, opt.small_area)
    length = areas.shape[1]
    idx = torch.arange(length, device=device)
    valid = areas >= least[:, None]
    spacing_axis, sp_r, sp_c = _plane_spacing(atlas, obj, axis)
    vol_len = atlas.shape[atlas.obj_volume[obj]].gather(1, axis[:, None])[:, 0]
    window = (_uniform(gen, n, *opt.thickness_mm, device) / spacing_axis).round().clamp(1, opt.max_window).long()
    direction = torch.where(torch.rand(n, generator=gen, device=device) < 0.5, -1, 1)
    first = torch.where(valid, idx, length).amin(1)
    last = torch.where(valid, idx, -1).amax(1)
    end = torch.where(direction > 0, last, first)
    near = valid & ((idx[None] - end[:, None]).abs() < window[:, None])
    at_end = torch.rand(n, generator=gen, device=device) < opt.end_fraction
    guide = _pick_one(torch.where(at_end[:, None], near, valid), gen)
    offsets = torch.arange(1, opt.max_window + 1, device=device)

    def inside_for(d):
        pos = guide[:, None] + d[:, None] * offsets[None]
        return (offsets[None] <= window[:, None]) & (pos >= 0) & (pos < vol_len[:, None])

    inside = inside_for(direction)
    direction = torch.where(inside.any(1), direction, -direction)
    inside = inside_for(direction)
    k = opt.adjacent
    keys = torch.where(inside, torch.rand(inside.shape, generator=gen, device=device), 2.0)
    without = offsets[keys.topk(k, 1, largest=False).indices] if k <= opt.max_window else None
    with_repl = offsets[_pick(inside, k, gen, replacement=True)]
    many = inside.sum(1) >= k
    chosen = torch.where(many[:, None], without, with_repl) if without is not None else with_repl
    chosen = chosen.sort(1).values
    slices = torch.cat([guide[:, None], guide[:, None] + direction[:, None] * chosen], 1)
    if opt.memory:
        behind = valid & (direction[:, None] * (idx[None] - guide[:, None]) <= 0)
        largest = torch.where(behind, areas, -1).argmax(1)
        memory = torch.where(torch.rand(n, generator=gen, device=device) < 0.5, largest, _pick_one(behind, gen))
        earlier = previous_guides(guide, memory, direction, window, opt.memory_slices)
        slices = torch.cat([slices, memory[:, None]] + [e[:, None] for e in earlier], 1)
    own_guide = None
    if opt.self_guide > 0 and opt.memory:  # the slice a round behind the guide (tasks.py, train.own_guides)
        behind_guide = previous_guides(guide, memory, direction, window, 2)[0]
        own_guide = (torch.rand(n, generator=gen, device=device) < opt.self_guide) & (behind_guide != guide) \
            & (areas.gather(1, behind_guide[:, None])[:, 0] >= MIN_GUIDE_AREA)
        slices = torch.cat([slices, behind_guide[:, None]], 1)

    # the ROI: square (mm) around the guide mask's box, as engine.roi.square_roi, then jittered
    box = atlas.boxes[obj, axis, guide].float()  # (B, 4) r0, c0, r1, c1
    perturbed = torch.rand(n, generator=gen, device=device) < opt.perturb_guide
    kind = torch.randint(3, (n,), generator=gen, device=device)
    steps = torch.randint(1, 4, (n,), generator=gen, device=device)
    grow = torch.where(kind == 0, steps, torch.where(kind == 1, -steps, 0)).float() * perturbed
    box = box + torch.stack([-grow, -grow, grow, grow], 1)
    box = torch.where((box[:, 2:] >= box[:, :2]).all(1, keepdim=True), box, atlas.boxes[obj, axis, guide].float())
    context = _uniform(gen, n, *opt.context, device)
    half_mm = torch.maximum((box[:, 2] - box[:, 0] + 1) * sp_r, (box[:, 3] - box[:, 1] + 1) * sp_c) / 2 * context
    half_r = (half_mm / sp_r).clamp(min=MIN_HALF_EXTENT_PX)
    half_c = (half_mm / sp_c).clamp(min=MIN_HALF_EXTENT_PX)
    centre_r = (box[:, 0] + box[:, 2]) / 2 + _uniform(gen, n, -0.1, 0.1, device) * half_r
    centre_c = (box[:, 1] + box[:, 3]) / 2 + _uniform(gen, n, -0.1, 0.1, device) * half_c
    angle, flip = _orientation(gen, n, device, free_angle=True, augment=opt.augment)
    rows, cols = roi_points(centre_r, centre_c, half_r, half_c, opt.image_size, angle, flip)
    c = opt.in_channels  # 2.5D: each plane with its neighbours along the propagation (as tasks.py)
    around = context_slices(slices, direction[:, None], c, vol_len[:, None]).flatten(1)  # (B, P * C)
    planes = sample_planes(atlas, obj, axis, around, rows, cols)
    y = (planes.mask()[:, c // 2 :: c] > 0.5).float()
    scale = opt.image_size / (2 * torch.maximum(half_r, half_c))
    guide_mask = torch.where(perturbed[:, None, None], _perturb(y[:, 0], kind, steps, scale, gen), y[:, 0])
    y = torch.cat([guide_mask[:, None], y[:, 1:]], 1)
    prompt = k + 1 if opt.memory else 0  # the prompt's window, as at inference
    lo, hi = masked_percentiles(planes.raw()[:, prompt * c + c // 2].flatten(1), y[:, prompt].flatten(1) > 0.5,
                                _uniform(gen, n, 0, 2, device), _uniform(gen, n, 98, 100, device))
    x = planes.windowed(lo, hi).unflatten(1, (slices.shape[1], c))
    if opt.augment:
        x = brightness_contrast(x, gen)
    task = {
        "guide_image": x[:, 0], "guide_mask": y[:, :1], "adjacent": x[:, 1 : k + 1], "target": y[:, 1 : k + 1, None],
        "presence": (areas.gather(1, slices[:, 1 : k + 1]) > 0).float(),
        "position": (direction[:, None] * chosen / window[:, None]).float(),
    }
    if opt.memory:
        end = k + 1 + opt.memory_slices
        task["memory_image"], task["memory_mask"] = x[:, k + 1 : end], y[:, k + 1 : end]
    if own_guide is not None:  # a source that the guide's crop loses guides nothing (as tasks.py)
        task["source_image"], task["source_mask"] = x[:, -1], y[:, -1:]
        task["self_guide"] = (own_guide & (y[:, -1].flatten(1).sum(1) >= MIN_GUIDE_AREA)).float()
    return task


def sample_box2mask_batch(atlas: Atlas, n: int, gen, opt: TaskOptions) -> dict:
    device = atlas.image.device
    obj, axis, areas, _ = _pick_pairs(atlas, n, gen)
    index = _pick_one(areas >= MIN_GUIDE_AREA, gen)
    box = atlas.boxes[obj, axis, index].float()
    scale = _uniform(gen, n, *opt.box_scale, device)
    half_r = ((box[:, 2] - box[:, 0] + 1) / 2 * scale).clamp(min=MIN_HALF_EXTENT_PX / 2)  # engine.roi.box_roi
    half_c = ((box[:, 3] - box[:, 1] + 1) / 2 * scale).clamp(min=MIN_HALF_EXTENT_PX / 2)
    centre_r = (box[:, 0] + box[:, 2]) / 2 + _uniform(gen, n, -0.05, 0.05, device) * half_r
    centre_c = (box[:, 1] + box[:, 3]) / 2 + _uniform(gen, n, -0.05, 0.05, device) * half_c
    angle, flip = _orientation(gen, n, device, free_angle=False, augment=opt.augment)
    rows, cols = roi_points(centre_r, centre_c, half_r, half_c, opt.image_size, angle, flip)
    planes = sample_planes(atlas, obj, axis, index[:, None], rows, cols)
    y = (planes.mask() > 0.5).float()
    # a window of the inference search grid over the box (70 %), else of the object's pixels
    in_slice = planes.weight.sum(-1)[:, 0].flatten(1) > 0.999
    grid_window = torch.rand(n, generator=gen, device=device) < 0.7
    mask = torch.where(grid_window[:, None], in_slice, y[:, 0].flatten(1) > 0.5)
    low = torch.where(grid_window, _uniform(gen, n, 5, 40, device), 0.5)
    high = torch.where(grid_window, _uniform(gen, n, 90, 95, device), 99.5)
    lo, hi = masked_percentiles(planes.raw()[:, 0].flatten(1), mask, low, high)
    x = planes.windowed(lo, hi)
    if opt.augment:
        x = brightness_contrast(x, gen)
    return {"image": x, "target": y}


class DeviceSampler:
    """Whole batches for the Trainer from a pack: real volumes, phantoms and GPU synthesis."""

    def __init__(self, cfg, device, options: TaskOptions, seed: int = 0):
        from .device_synth import SynthOptions, SynthPoolGPU

        self.cfg, self.device, self.options = cfg, device, options
        settings = dict(cfg.device_sampler)
        pack = Path(cfg.pack)
        if not pack.is_file():
            raise FileNotFoundError(f"training pack {pack} does not exist (make it with `propsam pack-data`)")
        volumes, synthesis_maps = load_pack(pack)
        wanted = set(cfg.synthesis_maps)
        missing = wanted - {v.id for v in volumes}
        if missing:
            raise ValueError(f"synthesis maps not in the pack: {sorted(missing)}")
        self.real = pack_atlas(volumes, device, phantom_total=cfg.phantom_pool * cfg.phantom_weight)
        maps = [v for v in volumes if v.id in wanted]
        self.synth = None
        if maps and cfg.synth_pool:
            synthesis = dict(settings.get("synthesis", {}))
            if {"lesion_share", "lesion_kinds"} & set(synthesis):
                raise ValueError("set lesion_share and lesion_kinds at the recipe's top level, not in device_sampler.synthesis")
            synth_options = SynthOptions(**synthesis, lesion_share=cfg.lesion_share, lesion_kinds=tuple(cfg.lesion_kinds))
            self.synth = SynthPoolGPU(maps, device, synth_options, total_weight=cfg.synth_pool * cfg.synth_weight)
        self.refresh_every = int(settings.get("synth_refresh_every", 25))
        self.gen = torch.Generator(device=device)
        if torch.device(device).type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.seed = seed
        self.refreshed_at = -1

    def batch(self, step: int) -> dict:
        self.gen.manual_seed(self.seed * 1_000_003 + step)  # a resumed run draws what it would have drawn
        if self.synth is not None and (not self.synth.atlases or (step % self.refresh_every == 0 and step != self.refreshed_at)):
            self.synth.refresh(self.gen)
            self.refreshed_at = step
        atlases = [self.real] + (self.synth.atlases if self.synth is not None else [])
        totals = torch.tensor([a.total_weight for a in atlases], device=self.device)
        counts = torch.bincount(torch.multinomial(totals, self.cfg.batch_size, replacement=True, generator=self.gen),
                                minlength=len(atlases)).tolist()
        sample = sample_propmask_batch if self.cfg.network == "propmask" else sample_box2mask_batch
        parts = [sample(a, c, self.gen, self.options) for a, c in zip(atlases, counts) if c]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
