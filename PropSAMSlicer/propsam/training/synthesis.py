"""Anatomy-driven synthesis (in the spirit of SynthSeg): new images from real label maps.

A real label map gives real shapes and real touching neighbours; the image is invented each time:
a random intensity per label (neighbours of equal intensity included), texture, partial-volume
blur, a bias field, noise and a random slice thickness, in a CT-like (few tissue levels), MR-like
(any contrast, bias field) or PET-like (few hot structures, heavy blur, hot cores) style. Any
label, or the union of a label with a touching neighbour, is an object. A second recipe plants
lesion-like blobs, including chains of touching ones with a ground-truth split, in real images.

Everything is seeded: `synthetic_source(maps, seed)` always builds the same volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .phantoms import smooth_noise
from .sources import MIN_OBJECT_VOXELS, LabelledObject, SourceVolume

STYLES = ("ct", "mr", "pet")
MAX_CROP = (72, 128, 128)  # voxels (Z, Y, X) kept from a label map: synthesis cost stays ~0.1-0.5 s


@dataclass
class LabelMap:
    """A real label map (and its real image, for lesion planting) to synthesize from."""

    id: str
    labels: np.ndarray  # int16 (Z, Y, X)
    spacing_zyx: tuple[float, float, float]
    image: np.ndarray | None = None  # float32, same grid


def _crop_around_label(lm: LabelMap, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """A random crop (at most MAX_CROP) that holds at least part of a random label."""
    values = np.unique(lm.labels)
    values = values[values > 0]
    centre = np.array(lm.labels.shape) // 2
    if values.size:
        zz, yy, xx = np.nonzero(lm.labels == rng.choice(values))
        pick = int(rng.integers(zz.size))
        centre = np.array([zz[pick], yy[pick], xx[pick]])
    box = []
    for c, n, m in zip(centre, lm.labels.shape, MAX_CROP):
        size = min(n, int(rng.integers(m // 2, m + 1)))
        start = int(np.clip(c - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, n - size))
        box.append(slice(start, start + size))
    box = tuple(box)
    return lm.labels[box], (lm.image[box] if lm.image is not None else None)


def _touching_pairs(labels: np.ndarray, limit: int = 64) -> list[tuple[int, int]]:
    """Label pairs that share a face (sampled along each axis)."""
    pairs = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        lo, hi = a[:-1].ravel(), a[1:].ravel()
        diff = (lo != hi) & (lo > 0) & (hi > 0)
        for x, y in zip(lo[diff][:: max(1, diff.sum() // 512)], hi[diff][:: max(1, diff.sum() // 512)]):
            pairs.add((int(min(x, y)), int(max(x, y))))
    return sorted(pairs)[:limit]


def _label_means(values: np.ndarray, pairs, style: str, rng: np.random.Generator) -> dict[int, float]:
    if style == "ct":  # a few tissue levels shared by many structures, as in CT
        levels = rng.uniform(0, 1, int(rng.integers(3, 7)))
        means = {int(v): float(rng.choice(levels)) for v in values}
    elif style == "pet":  # most structures cold, a few hot
        means = {int(v): float(rng.uniform(0.0, 0.25)) for v in values}
        for v in rng.choice(values, size=min(len(values), int(rng.integers(1, 4))), replace=False):
            means[int(v)] = float(rng.uniform(0.5, 1.0))
    else:
        means = {int(v): float(rng.uniform(0, 1)) for v in values}
    for a, b in pairs:  # some touching neighbours get the same intensity: only shape tells them apart
        if rng.random() < 0.15:
            means[b] = means[a]
    return means


def _thick_slices(image: np.ndarray, labels: np.ndarray, spacing_z: float, rng: np.random.Generator):
    """Resample along axis 0 to a random slice thickness of 1-6 mm (block average, centre label)."""
    target = float(rng.uniform(1.0, 6.0))
    factor = int(round(target / spacing_z))
    if factor <= 1 or image.shape[0] // factor < 4:
        return image, labels, spacing_z
    image = ndimage.uniform_filter1d(image, factor, axis=0)
    start = int(rng.integers(factor))
    return image[start::factor], labels[start::factor], spacing_z * factor


def synthesize_image(labels: np.ndarray, spacing_zyx, style: str, rng: np.random.Generator):
    """labels (Z, Y, X) int -> (image float32, labels, spacing_zyx) in the given style."""
    values = np.unique(labels)
    values = values[values > 0]
    means = _label_means(values, _touching_pairs(labels), style, rng)
    lut = np.zeros(int(labels.max()) + 1, np.float32)
    lut[0] = rng.uniform(0, 0.6) if style != "pet" else rng.uniform(0, 0.1)
    for v, m in means.items():
        lut[v] = m
    image = lut[labels]
    texture = smooth_noise(rng, labels.shape, sigma=float(rng.uniform(1.0, 3.0)))
    image += rng.uniform(0.0, 0.08) * texture
    if style == "pet":  # hot cores: uptake falls off towards the edge of hot structures
        hot = image > 0.4
        depth = ndimage.distance_transform_edt(hot)
        image = np.where(hot, image * (0.4 + 0.6 * np.tanh(depth / rng.uniform(1.5, 5.0))), image)
    sigma_inplane = rng.uniform(0.3, 1.0) if style != "pet" else rng.uniform(1.5, 3.0)
    image = ndimage.gaussian_filter(image, sigma=[sigma_inplane * min(1.0, spacing_zyx[1] / spacing_zyx[0]),
                                                  sigma_inplane, sigma_inplane])
    if style != "ct":
        image *= np.exp(rng.uniform(0.0, 0.35) * smooth_noise(rng, labels.shape, sigma=20.0))
    image, labels, spacing_z = _thick_slices(image, labels, spacing_zyx[0], rng)
    noise = rng.uniform(0.005, 0.06)
    image = image + noise * rng.standard_normal(image.shape).astype(np.float32)
    if rng.random() < 0.5:  # arbitrary scanner units
        image = image * rng.uniform(50, 2000) + rng.uniform(-1000, 500)
    return image.astype(np.float32), labels, (spacing_z, spacing_zyx[1], spacing_zyx[2])


def anatomy_objects(labels: np.ndarray, rng: np.random.Generator, unions: int = 3) -> list[LabelledObject]:
    """Every label, plus a few unions of a label with a touching neighbour."""
    found = []
    for value, box in enumerate(ndimage.find_objects(labels.astype(np.int32)), start=1):
        if box is not None:
            mask = labels[box] == value
            if mask.sum() >= MIN_OBJECT_VOXELS:
                found.append(LabelledObject(f"label_{value}", box, mask))
    pairs = _touching_pairs(labels)
    for i in rng.permutation(len(pairs))[:unions]:
        a, b = pairs[i]
        union = np.isin(labels, (a, b))
        box = ndimage.find_objects(union.astype(np.uint8))[0]
        found.append(LabelledObject(f"union_{a}_{b}", box, union[box]))
    return found


LESION_KINDS = ("blob", "tapering", "stack")


def check_lesion_kinds(kinds) -> None:
    """Both samplers' planting (this module's and device_synth's) takes kinds among LESION_KINDS."""
    if not kinds or set(kinds) - set(LESION_KINDS):
        raise ValueError(f"lesion kinds must be among {LESION_KINDS}, got {list(kinds)}")


def _paint(out: np.ndarray, labels: np.ndarray, dist: np.ndarray, level, rng: np.random.Generator) -> bool:
    """Give the free voxels inside `dist < 1` a new label and add `level` (a number, or a field)
    with a soft, partial-volume edge and some texture. False when too few voxels were free."""
    blob = (dist < 1) & (labels == 0)
    if blob.sum() < MIN_OBJECT_VOXELS:
        return False
    labels[blob] = labels.max() + 1
    edge = np.clip(1.5 - dist, 0, 1)  # soft edge: partial volume
    out += (level * edge * (1 + 0.1 * smooth_noise(rng, out.shape, sigma=1.5))).astype(np.float32)
    return True


def _axis_direction(rng: np.random.Generator, tilt: float) -> tuple[int, np.ndarray]:
    """A volume axis, slightly tilted: the axis a training task may propagate along."""
    axis = int(rng.integers(3))
    direction = np.eye(3)[axis] + tilt * rng.standard_normal(3)
    return axis, direction / np.linalg.norm(direction)


def _plant_tapering(out, labels, grid, extent, spread, rng) -> None:
    """A small lesion drawn out along an axis whose tails thin to a point and fade: the faint
    last slices of a real small lesion are still the lesion (real MS lesions lost their ends)."""
    centre = extent * rng.uniform(0.25, 0.75, 3)
    axis, _ = _axis_direction(rng, 0.0)
    radii = rng.uniform(2.5, 6.0) * rng.uniform(0.8, 1.2, 3)
    radii[axis] *= rng.uniform(1.5, 3.0)
    pointed = rng.uniform(1.0, 2.0)  # exponent along the long axis: 1 gives cone-like tails
    along = np.abs(grid[axis] - centre[axis]) / radii[axis]
    dist = along ** pointed + sum(((g - c) / r) ** 2 for i, (g, c, r) in enumerate(zip(grid, centre, radii)) if i != axis)
    fade = 1 - rng.uniform(0.3, 0.7) * np.clip(along, 0, 1) ** 2  # contrast falls towards the tails
    _paint(out, labels, dist, rng.choice([-1, 1]) * rng.uniform(0.3, 0.7) * spread * fade, rng)


def _plant_stack(out, labels, grid, extent, spread, rng) -> None:
    """3-5 objects of one size and one intensity stacked along an axis, each parted from the next
    by a thin disc (its own label, of a nearby or different intensity), as vertebrae and discs
    are: only the disc and the narrowing at it say where one object ends."""
    axis, direction = _axis_direction(rng, 0.08)
    radii = rng.uniform(5.0, 0.2 * extent[1:].min() + 5.0) * rng.uniform(0.85, 1.15, 3)
    radii[axis] *= rng.uniform(0.4, 0.9)
    exponent = rng.uniform(2.0, 4.0)  # higher: boxier, so the objects meet over more of their face
    gap = rng.uniform(1.0, 2.5) * (extent[axis] / out.shape[axis])
    contrast = rng.choice([-1, 1]) * rng.uniform(0.2, 0.6) * spread
    disc_level = contrast * rng.uniform(-0.3, 0.8)
    count = int(rng.integers(3, 6))
    step = 2 * radii[axis] + gap
    centre = extent / 2 - direction * step * (count - 1) / 2 + extent * rng.uniform(-0.15, 0.15, 3)

    def field(c, r):
        return sum(np.abs((g - ci) / ri) ** exponent for g, ci, ri in zip(grid, c, r))

    for i in range(count):
        here = centre + direction * step * i
        _paint(out, labels, field(here, radii * rng.uniform(0.97, 1.03, 3)), contrast * (1 + 0.03 * rng.standard_normal()), rng)
    disc = radii * 0.9
    disc[axis] = radii[axis] * 0.35 + gap  # overlaps both neighbours; only the free voxels become the disc
    for i in range(count - 1):
        _paint(out, labels, field(centre + direction * step * (i + 0.5), disc), disc_level, rng)


def plant_lesions(image: np.ndarray, spacing_zyx, rng: np.random.Generator,
                  kinds: tuple[str, ...] = ("blob",)) -> tuple[np.ndarray, np.ndarray]:
    """Lesion-like objects in a real image, each its own label (the ground-truth split).

    Each of 1-2 groups is one of `kinds`: "blob", a single lesion or a chain of 2-4 touching ones
    (intensity the local tissue level plus a contrast of either sign, soft edge, texture);
    "tapering", a small drawn-out lesion with thin, fading tails; "stack", same-size objects parted
    by thin discs. With the default kinds the random draws are those of the blob-only recipe.
    """
    check_lesion_kinds(kinds)
    labels = np.zeros(image.shape, np.int16)
    spread = float(np.percentile(image, 99) - np.percentile(image, 1)) or 1.0
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(image.shape, spacing_zyx)], indexing="ij", sparse=True)
    extent = np.array(image.shape) * np.array(spacing_zyx)
    out = image.copy()
    for _group in range(int(rng.integers(1, 3))):
        kind = kinds[0] if len(kinds) == 1 else str(rng.choice(kinds))
        if kind == "tapering":
            _plant_tapering(out, labels, grid, extent, spread, rng)
            continue
        if kind == "stack":
            _plant_stack(out, labels, grid, extent, spread, rng)
            continue
        centre = extent * rng.uniform(0.25, 0.75, 3)
        radius = float(rng.uniform(3.0, 0.18 * extent[1:].min()))
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        contrast = rng.choice([-1, 1]) * rng.uniform(0.15, 0.6) * spread
        for _ in range(int(rng.integers(1, 5))):
            r = radius * rng.uniform(0.7, 1.2, 3)
            dist = sum(((g - c) / rr) ** 2 for g, c, rr in zip(grid, centre, r))
            dist = dist * np.exp(0.25 * smooth_noise(rng, image.shape, sigma=4.0))
            if ((dist < 1) & (labels == 0)).sum() >= MIN_OBJECT_VOXELS:  # the level is drawn only for a blob that lands
                _paint(out, labels, dist, contrast * (1 + 0.2 * rng.standard_normal()), rng)
            centre = centre + direction * radius * rng.uniform(1.4, 1.9)  # the next one touches this one
    return out, labels


def synthetic_source(maps: list[LabelMap], seed: int, weight: float = 1.0, lesion_kinds: tuple[str, ...] = ("blob",),
                     lesion_share: float = 0.25) -> SourceVolume:
    """One seeded synthetic training volume from one of `maps`: a `lesion_share` of them are real
    images with planted `lesion_kinds`, the others invented images on the map's labels."""
    rng = np.random.default_rng(seed)
    lm = maps[int(rng.integers(len(maps)))]
    labels, image = _crop_around_label(lm, rng)
    if image is not None and rng.random() < lesion_share:  # lesions planted in the real image
        image, labels = plant_lesions(image.astype(np.float32), lm.spacing_zyx, rng, lesion_kinds)
        spacing, style = lm.spacing_zyx, "lesion"
        objects = anatomy_objects(labels, rng, unions=0)  # a chain's lesions stay apart: its split is the truth
    else:
        style = str(rng.choice(STYLES))
        image, labels, spacing = synthesize_image(labels.astype(np.int32), lm.spacing_zyx, style, rng)
        objects = anatomy_objects(labels, rng)
    modality = {"ct": "CT", "mr": "MR", "pet": "PET", "lesion": "MR"}[style]
    return SourceVolume(id=f"synth_{seed}", image=image, spacing_zyx=tuple(float(s) for s in spacing), modality=modality,
                        weight=weight, objects=objects, truth="exact")


class SynthPool:
    """Like PhantomPool: `size` synthetic volumes, a few swapped for new seeds on `refresh`."""

    def __init__(self, maps: list[LabelMap], size: int, first_seed: int, weight: float, state: dict | None = None,
                 lesion_kinds: tuple[str, ...] = ("blob",), lesion_share: float = 0.25):
        self.maps, self.weight = maps, weight
        self.lesions = {"lesion_kinds": tuple(lesion_kinds), "lesion_share": lesion_share}
        self.next_seed = first_seed
        self.sources: list[SourceVolume] = []
        if not maps:
            return
        if state is not None:
            self.sources = [synthetic_source(maps, seed, weight, **self.lesions) for seed in state["seeds"]]
            self.next_seed = state["next_seed"]
        while len(self.sources) < size:
            self._add()

    def _add(self) -> None:
        source = synthetic_source(self.maps, self.next_seed, self.weight, **self.lesions)
        self.next_seed += 1
        if source.objects:
            self.sources.append(source)

    def refresh(self, count: int, rng: np.random.Generator) -> None:
        if not self.sources:
            return
        for _ in range(count):
            self.sources.pop(int(rng.integers(len(self.sources))))
            self._add()

    def state(self) -> dict:
        return {"seeds": [int(s.id.split("_")[1]) for s in self.sources], "next_seed": self.next_seed}


def load_label_maps(data_dir, ids: list[str]) -> list[LabelMap]:
    """The training-split manifest entries named in `ids` (a recipe's `synthesis_maps`)."""
    from pathlib import Path

    from .sources import manifest_entries, read_pair

    entries = {e["id"]: e for e in manifest_entries(Path(data_dir), "train")}
    unknown = sorted(set(ids) - set(entries))
    if unknown:
        raise ValueError(f"synthesis maps not in the training split: {unknown}")
    maps = []
    for i in ids:
        image, labels, spacing = read_pair(entries[i], Path(data_dir))
        maps.append(LabelMap(i, labels.astype(np.int16), spacing, image))
    return maps
