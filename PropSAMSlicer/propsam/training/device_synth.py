"""Anatomy-driven synthesis on the training device: synthesis.py's recipe in torch.

Same steps and ranges as synthesis.synthetic_source (a crop around a random label of a real label
map; a random intensity per label in a CT-, MR- or PET-like style with equal-intensity touching
neighbours; texture, PET hot cores, partial-volume blur, bias field, a random slice thickness of
1-6 mm, noise; objects are every label and a few unions with a touching neighbour; a quarter of
the volumes are instead real images with planted lesions and lesion chains). Two stand-ins for
scipy: the PET depth is a chessboard distance (repeated 3x3x3 erosion, up to 12 voxels) and the
thick-slice average replicates the edge slice instead of reflecting it. Arbitrary scanner units
are left out: every window downstream is a percentile window, which ignores them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .atlas import Atlas, build_atlas
from .pack import PackedVolume
from .sources import MIN_OBJECT_VOXELS
from .synthesis import MAX_CROP, check_lesion_kinds

STYLES = ("ct", "mr", "pet")


@dataclass
class SynthOptions:
    volumes: int = 16  # synthetic volumes per group; a refresh rebuilds one group
    groups: int = 4
    max_crop: tuple = MAX_CROP  # (Z, Y, X) voxels at most per crop
    lesion_share: float = 0.25  # set by the recipe's top-level lesion_share
    lesion_kinds: tuple = ("blob",)  # set by the recipe's top-level lesion_kinds (synthesis.LESION_KINDS)
    unions: int = 3


def _u(gen, lo, hi, device, n=()):
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _randint(gen, lo, hi, device) -> int:
    """An integer in [lo, hi)."""
    return int(torch.randint(lo, hi, (1,), generator=gen, device=device))


def gaussian_blur(x: torch.Tensor, sigmas) -> torch.Tensor:
    """x (Z, Y, X): separable Gaussian with per-axis sigma (voxels), truncated at 4 sigma, edges replicated."""
    for axis, sigma in enumerate(sigmas):
        sigma = float(sigma)
        if sigma < 0.05:
            continue
        radius = max(1, int(math.ceil(4 * sigma)))
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = (kernel / kernel.sum()).view(1, 1, -1)
        moved = x.movedim(axis, -1)
        shape = moved.shape
        line = moved.reshape(-1, 1, shape[-1])
        line = F.pad(line, (radius, radius), mode="replicate") if shape[-1] > 1 else F.pad(line, (radius, radius))
        x = F.conv1d(line, kernel).reshape(shape).movedim(-1, axis)
    return x


def smooth_noise(gen, shape, sigma: float, device) -> torch.Tensor:
    """phantoms.smooth_noise in torch: a zero-mean, unit-std smooth field (coarse, then upsampled)."""
    factor = max(1, int(sigma // 2))
    coarse = tuple(max(2, s // factor) for s in shape)
    field = gaussian_blur(torch.randn(coarse, generator=gen, device=device), [sigma / factor] * 3)
    field = F.interpolate(field[None, None], size=tuple(shape), mode="trilinear", align_corners=False)[0, 0]
    return (field - field.mean()) / (field.std() + 1e-6)


def touching_pairs(labels: torch.Tensor, limit: int = 64) -> torch.Tensor:
    """(P, 2) label pairs sharing a face (synthesis._touching_pairs)."""
    codes = []
    big = int(labels.max()) + 1
    for axis in range(3):
        lo = labels.narrow(axis, 0, labels.shape[axis] - 1).reshape(-1).long()
        hi = labels.narrow(axis, 1, labels.shape[axis] - 1).reshape(-1).long()
        diff = (lo != hi) & (lo > 0) & (hi > 0)
        a, b = lo[diff], hi[diff]
        codes.append(torch.minimum(a, b) * big + torch.maximum(a, b))
    codes = torch.unique(torch.cat(codes))[:limit]
    return torch.stack([codes // big, codes % big], 1)


def _label_means(present: torch.Tensor, pairs: torch.Tensor, style: str, n_labels: int, gen, device) -> torch.Tensor:
    """synthesis._label_means as a lookup table over label values (index 0: background)."""
    if style == "ct":
        levels = _u(gen, 0, 1, device, (_randint(gen, 3, 7, device),))
        lut = levels[torch.randint(levels.numel(), (n_labels,), generator=gen, device=device)]
    elif style == "pet":
        lut = _u(gen, 0.0, 0.25, device, (n_labels,))
        hot = present[torch.randperm(present.numel(), generator=gen, device=device)[: _randint(gen, 1, 4, device)]]
        lut[hot] = _u(gen, 0.5, 1.0, device, (hot.numel(),))
    else:
        lut = _u(gen, 0, 1, device, (n_labels,))
    same = torch.rand(pairs.shape[0], generator=gen, device=device) < 0.15
    lut[pairs[same, 1]] = lut[pairs[same, 0]]
    lut[0] = _u(gen, 0, 0.6, device) if style != "pet" else _u(gen, 0, 0.1, device)
    return lut


def _pet_depth(hot: torch.Tensor, steps: int = 12) -> torch.Tensor:
    """Distance (voxels) from the outside of `hot`, chessboard, capped at `steps`."""
    depth = torch.zeros_like(hot, dtype=torch.float32)
    inside = hot.float()[None, None]
    for _ in range(steps):
        depth += inside[0, 0]
        inside = -F.max_pool3d(-inside, 3, 1, 1)
    return depth


def _thick_slices(image, labels, spacing_z: float, gen, device):
    """synthesis._thick_slices: block average along z to 1-6 mm, every factor-th slice."""
    factor = int(round(float(_u(gen, 1.0, 6.0, device)) / spacing_z))
    if factor <= 1 or image.shape[0] // factor < 4:
        return image, labels, spacing_z
    pad = torch.cat([image[:1].expand(factor // 2, -1, -1), image, image[-1:].expand(factor, -1, -1)])
    cs = torch.cat([torch.zeros_like(image[:1]), pad.cumsum(0)])
    idx = torch.arange(image.shape[0], device=device)
    averaged = (cs[idx + factor] - cs[idx]) / factor  # mean of image[i - factor//2 : i - factor//2 + factor]
    start = _randint(gen, 0, factor, device)
    return averaged[start::factor], labels[start::factor], spacing_z * factor


def synthesize_image(labels: torch.Tensor, spacing_zyx, style: str, gen):
    """synthesis.synthesize_image in torch: labels (Z, Y, X) -> (image, labels, spacing_zyx, pairs)."""
    device = labels.device
    n_labels = int(labels.max()) + 1
    present = torch.unique(labels).long()
    present = present[present > 0]
    pairs = touching_pairs(labels)
    lut = _label_means(present, pairs, style, n_labels, gen, device)
    image = lut[labels.long()]
    image = image + float(_u(gen, 0.0, 0.08, device)) * smooth_noise(gen, labels.shape, float(_u(gen, 1.0, 3.0, device)), device)
    if style == "pet":
        hot = image > 0.4
        falloff = 0.4 + 0.6 * torch.tanh(_pet_depth(hot) / float(_u(gen, 1.5, 5.0, device)))
        image = torch.where(hot, image * falloff, image)
    sigma = float(_u(gen, 0.3, 1.0, device) if style != "pet" else _u(gen, 1.5, 3.0, device))
    image = gaussian_blur(image, [sigma * min(1.0, spacing_zyx[1] / spacing_zyx[0]), sigma, sigma])
    if style != "ct":
        image = image * torch.exp(float(_u(gen, 0.0, 0.35, device)) * smooth_noise(gen, labels.shape, 20.0, device))
    image, labels, spacing_z = _thick_slices(image, labels, spacing_zyx[0], gen, device)
    image = image + float(_u(gen, 0.005, 0.06, device)) * torch.randn(image.shape, generator=gen, device=device)
    return image, labels, (spacing_z, spacing_zyx[1], spacing_zyx[2]), pairs


def _paint(out, labels, dist, level, gen):
    """synthesis._paint: a new label for the free voxels inside `dist < 1`, `level` added with a soft edge."""
    blob = (dist < 1) & (labels == 0)
    if int(blob.sum()) < MIN_OBJECT_VOXELS:
        return out
    labels[blob] = int(labels.max()) + 1
    edge = (1.5 - dist).clamp(0, 1)  # soft edge: partial volume
    return out + level * edge * (1 + 0.1 * smooth_noise(gen, out.shape, 1.5, out.device))


def _term(grid, axis: int, values) -> torch.Tensor:
    """A per-axis term (1-D over `axis`) shaped to broadcast over the volume."""
    shape = [1, 1, 1]
    shape[axis] = -1
    return values(grid[axis]).view(shape)


def _sign(gen, device) -> int:
    return 1 if float(torch.rand(1, generator=gen, device=device)) < 0.5 else -1


def _plant_tapering(out, labels, grid, extent, spread, gen):
    """synthesis._plant_tapering: a small drawn-out lesion whose tails thin to a point and fade."""
    device = out.device
    centre = extent * _u(gen, 0.25, 0.75, device, (3,))
    axis = _randint(gen, 0, 3, device)
    radii = float(_u(gen, 2.5, 6.0, device)) * _u(gen, 0.8, 1.2, device, (3,))
    radii[axis] *= float(_u(gen, 1.5, 3.0, device))
    pointed = float(_u(gen, 1.0, 2.0, device))
    along = _term(grid, axis, lambda g: (g - centre[axis]).abs() / radii[axis])
    dist = along ** pointed
    for i in range(3):
        if i != axis:
            dist = dist + _term(grid, i, lambda g, i=i: ((g - centre[i]) / radii[i]) ** 2)
    fade = 1 - float(_u(gen, 0.3, 0.7, device)) * along.clamp(0, 1) ** 2
    level = _sign(gen, device) * float(_u(gen, 0.3, 0.7, device)) * spread * fade
    return _paint(out, labels, dist, level, gen)


def _plant_stack(out, labels, grid, extent, spread, gen):
    """synthesis._plant_stack: same-size objects along an axis, each parted from the next by a thin disc."""
    device = out.device
    axis = _randint(gen, 0, 3, device)
    direction = torch.eye(3, device=device)[axis] + 0.08 * torch.randn(3, generator=gen, device=device)
    direction = direction / direction.norm()
    radii = float(_u(gen, 5.0, 0.2 * float(extent[1:].min()) + 5.0, device)) * _u(gen, 0.85, 1.15, device, (3,))
    radii[axis] *= float(_u(gen, 0.4, 0.9, device))
    exponent = float(_u(gen, 2.0, 4.0, device))
    gap = float(_u(gen, 1.0, 2.5, device)) * float(extent[axis]) / out.shape[axis]
    contrast = _sign(gen, device) * float(_u(gen, 0.2, 0.6, device)) * spread
    disc_level = contrast * float(_u(gen, -0.3, 0.8, device))
    count = _randint(gen, 3, 6, device)
    step = 2 * float(radii[axis]) + gap
    centre = extent / 2 - direction * step * (count - 1) / 2 + extent * _u(gen, -0.15, 0.15, device, (3,))

    def field(c, r):
        return sum(_term(grid, i, lambda g, i=i: ((g - c[i]) / r[i]).abs() ** exponent) for i in range(3))

    for i in range(count):
        r = radii * _u(gen, 0.97, 1.03, device, (3,))
        level = contrast * (1 + 0.03 * float(torch.randn(1, generator=gen, device=device)))
        out = _paint(out, labels, field(centre + direction * step * i, r), level, gen)
    disc = radii * 0.9
    disc[axis] = radii[axis] * 0.35 + gap
    for i in range(count - 1):
        out = _paint(out, labels, field(centre + direction * step * (i + 0.5), disc), disc_level, gen)
    return out


def plant_lesions(image: torch.Tensor, spacing_zyx, gen, kinds: tuple[str, ...] = ("blob",)) -> tuple[torch.Tensor, torch.Tensor]:
    """synthesis.plant_lesions in torch: 1-2 groups, each one of `kinds` (blob chains, tapering
    lesions, stacks parted by discs), one label per object."""
    check_lesion_kinds(kinds)
    device = image.device
    labels = torch.zeros(image.shape, dtype=torch.int16, device=device)
    sample = image.reshape(-1)[:: max(1, image.numel() // 200_000)].float()
    spread = float(torch.quantile(sample, 0.99) - torch.quantile(sample, 0.01)) or 1.0
    spacing = torch.tensor(spacing_zyx, device=device, dtype=torch.float32)
    grid = [torch.arange(n, device=device, dtype=torch.float32) * s for n, s in zip(image.shape, spacing_zyx)]
    extent = torch.tensor(image.shape, device=device, dtype=torch.float32) * spacing
    out = image.clone()
    for _group in range(_randint(gen, 1, 3, device)):
        kind = kinds[0] if len(kinds) == 1 else kinds[_randint(gen, 0, len(kinds), device)]
        if kind == "tapering":
            out = _plant_tapering(out, labels, grid, extent, spread, gen)
            continue
        if kind == "stack":
            out = _plant_stack(out, labels, grid, extent, spread, gen)
            continue
        centre = extent * _u(gen, 0.25, 0.75, device, (3,))
        radius = float(_u(gen, 3.0, max(3.0, 0.18 * float(extent[1:].min())), device))
        direction = torch.randn(3, generator=gen, device=device)
        direction = direction / direction.norm()
        contrast = _sign(gen, device) * float(_u(gen, 0.15, 0.6, device)) * spread
        for _ in range(_randint(gen, 1, 5, device)):
            r = radius * _u(gen, 0.7, 1.2, device, (3,))
            dist = sum(_term(grid, i, lambda g, i=i: ((g - centre[i]) / r[i]) ** 2) for i in range(3))
            dist = dist * torch.exp(0.25 * smooth_noise(gen, image.shape, 4.0, device))
            if int(((dist < 1) & (labels == 0)).sum()) >= MIN_OBJECT_VOXELS:  # the level is drawn only for a blob that lands
                level = contrast * (1 + 0.2 * float(torch.randn(1, generator=gen, device=device)))
                out = _paint(out, labels, dist, level, gen)
            centre = centre + direction * radius * float(_u(gen, 1.4, 1.9, device))
    return out, labels


class SynthPoolGPU:
    """`groups` atlases of synthetic volumes on the device; `refresh` rebuilds the oldest (all, the first time),
    like SynthPool swapping a few volumes, so the mix keeps changing at a small cost per step."""

    def __init__(self, maps: list[PackedVolume], device, options: SynthOptions, total_weight: float):
        self.device, self.options, self.total_weight = device, options, total_weight
        self.maps = []
        for m in maps:
            values, compact = np.unique(m.labels, return_inverse=True)
            compact = compact.reshape(m.labels.shape) + (0 if values[0] == 0 else 1)  # 0 stays background
            labels = torch.from_numpy(compact.astype(np.int16)).to(device)
            present = torch.unique(labels)
            self.maps.append((labels, torch.from_numpy(m.image).to(device), m.spacing_zyx, present[present > 0]))
        self.atlases: list[Atlas] = []

    def _crop(self, gen):
        """synthesis._crop_around_label: at most max_crop voxels holding part of a random label."""
        labels, image, spacing, present = self.maps[_randint(gen, 0, len(self.maps), self.device)]
        centre = [n // 2 for n in labels.shape]
        if present.numel():
            where = (labels == present[_randint(gen, 0, present.numel(), self.device)]).nonzero()
            centre = where[_randint(gen, 0, where.shape[0], self.device)].tolist()
        box = []
        for c, n, m in zip(centre, labels.shape, self.options.max_crop):
            size = min(n, _randint(gen, m // 2, m + 1, self.device))
            start = int(np.clip(c - size // 2 + _randint(gen, -(size // 4), size // 4 + 1, self.device), 0, n - size))
            box.append(slice(start, start + size))
        return labels[tuple(box)], image[tuple(box)], spacing

    def _volume(self, gen):
        labels, image, spacing = self._crop(gen)
        if float(torch.rand(1, generator=gen, device=self.device)) < self.options.lesion_share:
            image, labels = plant_lesions(image, spacing, gen, tuple(self.options.lesion_kinds))
            return image, labels, spacing, self._objects(labels, torch.zeros(0, 2, dtype=torch.long, device=self.device), 0)
        style = STYLES[_randint(gen, 0, 3, self.device)]
        image, labels, spacing, pairs = synthesize_image(labels, spacing, style, gen)
        return image, labels, spacing, self._objects(labels, pairs, self.options.unions, gen)

    def _objects(self, labels, pairs, unions, gen=None) -> list[list[int]]:
        """synthesis.anatomy_objects: every label of >= MIN_OBJECT_VOXELS, and `unions` touching pairs."""
        counts = torch.bincount(labels.reshape(-1).long())
        sets = [[int(v)] for v in (counts >= MIN_OBJECT_VOXELS).nonzero()[:, 0].tolist() if v > 0]
        if unions and pairs.shape[0]:
            for i in torch.randperm(pairs.shape[0], generator=gen, device=self.device)[:unions].tolist():
                sets.append([int(pairs[i, 0]), int(pairs[i, 1])])
        return sets

    def _group(self, gen) -> Atlas | None:
        items = []
        weight = self.total_weight / (self.options.volumes * self.options.groups)
        for _ in range(self.options.volumes):
            image, labels, spacing, sets = self._volume(gen)
            if sets:
                items.append((image.float(), labels, tuple(float(s) for s in spacing), weight, sets))
        return build_atlas(items, self.device) if items else None

    def refresh(self, gen) -> None:
        for _ in range(self.options.groups if not self.atlases else 1):
            group = self._group(gen)
            if group is not None:
                self.atlases.append(group)
        del self.atlases[: max(0, len(self.atlases) - self.options.groups)]
