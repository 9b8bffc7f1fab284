"""Small synthetic volumes with exact truth, built in physical space so any grid can be used."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from propsam.io.volume import Volume


def sphere_volume(shape=(40, 64, 64), spacing=(1.0, 1.0, 2.0), centre_index=None, radius_mm=14.0,
                  direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), origin=(0.0, 0.0, 0.0), seed=0) -> tuple[Volume, np.ndarray]:
    """A bright ellipsoid (sphere in mm) on a dark noisy background; returns (volume, truth)."""
    rng = np.random.default_rng(seed)
    centre = np.array(centre_index if centre_index is not None else [(s - 1) / 2 for s in shape], float)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    sp_zyx = np.array(spacing[::-1])
    d2 = ((zz - centre[0]) * sp_zyx[0]) ** 2 + ((yy - centre[1]) * sp_zyx[1]) ** 2 + ((xx - centre[2]) * sp_zyx[2]) ** 2
    truth = (d2 <= radius_mm**2).astype(np.uint8)
    image = np.where(truth > 0, 200.0, 0.0) + rng.normal(0, 5, shape)
    return Volume(image.astype(np.float32), tuple(map(float, spacing)), tuple(map(float, origin)), tuple(map(float, direction))), truth


def oblique_direction(angle_deg: float = 30.0) -> tuple[float, ...]:
    a = np.radians(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    return tuple((rot @ tilt).ravel())


def write_volume(volume: Volume, path) -> None:
    sitk.WriteImage(volume.to_sitk(), str(path))


