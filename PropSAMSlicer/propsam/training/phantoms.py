"""Seeded procedural 3D phantoms: objects of many shapes in a textured, noisy background.

Each phantom is a CT-like or MR-like volume with a label map (0 = background, 1..n = objects)
and its voxel spacing. Shapes: deformed ellipsoids, lobulated lesions, tubes, hollow shells,
touching pairs and objects that split across slices; the background holds competing blobs of
similar intensity, a bias field, noise and partial-volume blur. Used for training and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SHAPES = ("ellipsoid", "lobulated", "tube", "hollow", "touching", "split")


@dataclass
class Phantom:
    image: np.ndarray  # (Z, Y, X) float32
    labels: np.ndarray  # (Z, Y, X) uint8
    spacing: tuple[float, float, float]  # x, y, z mm
    modality: str
    shapes: list[str]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (computed coarse, then upsampled)."""
    factor = max(1, int(sigma // 2))
    coarse_shape = tuple(max(2, s // factor) for s in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), sigma / factor)
    field = ndimage.zoom(field, [s / c for s, c in zip(shape, coarse_shape)], order=1)
    field = field[tuple(slice(0, s) for s in shape)]
    return ((field - field.mean()) / (field.std() + 1e-6)).astype(np.float32)


class _Grid:
    """Physical coordinates (mm) of the voxel centres, relative to the volume centre."""

    def __init__(self, shape: tuple[int, int, int], spacing_zyx: np.ndarray):
        self.shape = shape
        axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing_zyx)]
        self.z, self.y, self.x = np.meshgrid(*axes, indexing="ij", sparse=True)
        self.extent = np.array(shape) * spacing_zyx


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _ellipsoid_field(grid: _Grid, centre, radii, rotation, deform: np.ndarray | None) -> np.ndarray:
    """Implicit function < 1 inside a (deformed) ellipsoid."""
    dz, dy, dx = grid.z - centre[0], grid.y - centre[1], grid.x - centre[2]
    r = rotation
    u = (r[0, 0] * dz + r[0, 1] * dy + r[0, 2] * dx) / radii[0]
    v = (r[1, 0] * dz + r[1, 1] * dy + r[1, 2] * dx) / radii[1]
    w = (r[2, 0] * dz + r[2, 1] * dy + r[2, 2] * dx) / radii[2]
    field = u**2 + v**2 + w**2
    # exp keeps the scaling positive: a factor near 0 would plant "inside" voxels far away
    return field if deform is None else field * np.exp(deform)


def _object_mask(kind: str, grid: _Grid, rng: np.random.Generator, centre: np.ndarray, size_mm: float) -> np.ndarray:
    deform = 0.35 * smooth_noise(rng, grid.shape, sigma=rng.uniform(3, 8))
    radii = size_mm / 2 * rng.uniform(0.5, 1.0, size=3)
    rotation = _random_rotation(rng)
    if kind == "ellipsoid":
        return _ellipsoid_field(grid, centre, radii, rotation, deform) < 1
    if kind == "lobulated":
        mask = _ellipsoid_field(grid, centre, radii * 0.7, rotation, deform) < 1
        for _ in range(rng.integers(2, 5)):
            offset = rng.standard_normal(3) * radii * 0.5
            mask |= _ellipsoid_field(grid, centre + offset, radii * rng.uniform(0.35, 0.6), rotation, deform) < 1
        return mask
    if kind == "hollow":
        field = _ellipsoid_field(grid, centre, radii, rotation, deform * 0.5)
        return (field < 1) & (field > rng.uniform(0.3, 0.55))
    if kind == "touching":
        offset = rotation[0] * radii[0] * 0.9
        a = _ellipsoid_field(grid, centre - offset, radii * 0.6, rotation, deform) < 1
        b = _ellipsoid_field(grid, centre + offset, radii * 0.6, rotation, deform) < 1
        return a | b
    if kind == "split":  # one body in the middle slices, two branches towards one end
        mask = _ellipsoid_field(grid, centre, radii * np.array([1.0, 0.45, 0.45]), np.eye(3), deform) < 1
        for side in (-1, 1):
            branch = centre + np.array([radii[0] * 0.9, side * radii[1] * 0.6, 0])
            mask |= _ellipsoid_field(grid, branch, radii * np.array([0.6, 0.25, 0.25]), np.eye(3), deform) < 1
        return mask
    if kind == "tube":  # a curved vessel running mostly along one axis
        t = np.linspace(-0.5, 0.5, 48)
        axis = rng.integers(0, 3)
        path = np.zeros((48, 3))
        path[:, axis] = t * grid.extent[axis] * rng.uniform(0.5, 0.9)
        for other in {0, 1, 2} - {axis}:
            path[:, other] = np.cumsum(rng.standard_normal(48)) * size_mm * 0.03
        path += centre
        radius = size_mm * rng.uniform(0.08, 0.18)
        dist = np.full(grid.shape, np.inf, dtype=np.float32)
        for p in path:
            d = (grid.z - p[0]) ** 2 + (grid.y - p[1]) ** 2 + (grid.x - p[2]) ** 2
            np.minimum(dist, d, out=dist)
        return dist < radius**2
    raise ValueError(kind)


def make_phantom(seed: int, shape: tuple[int, int, int] | None = None, n_objects: int | None = None) -> Phantom:
    rng = np.random.default_rng(seed)
    slice_mm = float(rng.choice([1.0, 1.5, 2.0, 3.0, 5.0, 6.0]))
    inplane_mm = float(rng.uniform(0.6, 1.2))
    if shape is None:
        nz = int(np.clip(rng.uniform(60, 160) / slice_mm, 12, 96))
        n = int(rng.integers(80, 129))
        shape = (nz, n, n)
    spacing_zyx = np.array([slice_mm, inplane_mm, inplane_mm])
    grid = _Grid(shape, spacing_zyx)
    modality = "CT" if rng.random() < 0.5 else "MR"

    background_level, object_levels = (40.0, (-60, 250)) if modality == "CT" else (300.0, (80, 900))
    image = background_level + 25 * smooth_noise(rng, shape, sigma=rng.uniform(2, 6))
    labels = np.zeros(shape, np.uint8)
    shapes: list[str] = []
    count = int(rng.integers(1, 4)) if n_objects is None else n_objects
    for label in range(1, count + 1):
        kind = str(rng.choice(SHAPES))
        size_mm = float(rng.uniform(0.2, 0.6) * grid.extent[1:].min())
        size_mm = min(size_mm, 0.9 * grid.extent[0])
        centre = rng.uniform(-0.25, 0.25, size=3) * grid.extent
        mask = _object_mask(kind, grid, rng, centre, size_mm) & (labels == 0)
        if mask.sum() < 20:
            continue
        level = rng.uniform(*object_levels)
        texture = rng.uniform(0, 0.15) * abs(level - background_level) + 5
        image[mask] = level + texture * smooth_noise(rng, shape, sigma=1.5)[mask]
        labels[mask] = len(shapes) + 1
        shapes.append(kind)
    for _ in range(rng.integers(1, 5)):  # distractors: similar intensity, not labelled
        centre = rng.uniform(-0.4, 0.4, size=3) * grid.extent
        size_mm = float(rng.uniform(0.1, 0.35) * grid.extent[1:].min())
        blob = _object_mask("ellipsoid", grid, rng, centre, size_mm) & (labels == 0)
        image[blob] = rng.uniform(*object_levels)

    image = ndimage.gaussian_filter(image, sigma=[0.6 * min(1.0, inplane_mm / slice_mm), 0.7, 0.7])
    if modality == "MR":
        image *= 1 + 0.25 * smooth_noise(rng, shape, sigma=20)
    image += rng.uniform(3, 20) * rng.standard_normal(shape)
    spacing_xyz = (inplane_mm, inplane_mm, slice_mm)
    return Phantom(image.astype(np.float32), labels, spacing_xyz, modality, shapes)
