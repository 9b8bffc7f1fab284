"""A 3D image with its physical grid, read and written with SimpleITK.

Arrays are in SimpleITK's numpy order (Z, Y, X); spacing/origin/direction are in ITK order
(x, y, z). Outputs are always written on the exact grid of the image they came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, ResourceError
from .atomic import atomic_path

# bytes per voxel the engine holds at most while segmenting: the image as read, a float32
# copy, the uint8 output and per-slice probability planes.
ENGINE_BYTES_PER_VOXEL = 4 + 4 + 1 + 4
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Volume:
    array: np.ndarray  # (Z, Y, X)
    spacing: tuple[float, float, float]  # x, y, z in mm
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, ITK convention

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise InputError(f"expected a 3D image, got {self.array.ndim}D with shape {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    def axis_spacing(self, axis: int) -> float:
        """Spacing along numpy axis 0 (z), 1 (y) or 2 (x)."""
        return float(self.spacing[2 - axis])

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        check_sitk_image(image)
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=tuple(image.GetSpacing()),
            origin=tuple(image.GetOrigin()),
            direction=tuple(image.GetDirection()),
        )

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """An image on this volume's grid holding `array` (default: the volume's own)."""
        data = self.array if array is None else array
        if data.shape != self.array.shape:
            raise InputError(f"array shape {data.shape} differs from the volume's {self.array.shape}")
        image = sitk.GetImageFromArray(data)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def same_grid(self, other: "Volume", tol: float = 1e-4) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol * 10)
            and np.allclose(self.direction, other.direction, atol=tol)
        )


def check_sitk_image(image: sitk.Image) -> None:
    if image.GetDimension() != 3:
        raise InputError(f"expected a 3D image, got a {image.GetDimension()}D image of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(vector, RGB or 4D data); extract one channel first"
        )


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def check_fits_in_memory(size_xyz: tuple[int, ...], available: int | None = None) -> None:
    voxels = int(np.prod(size_xyz))
    need = voxels * ENGINE_BYTES_PER_VOXEL
    have = available_memory_bytes() if available is None else available
    if need > 0.8 * have:
        raise ResourceError(
            f"image of {size_xyz} voxels needs about {need / 2**30:.1f} GiB but only "
            f"{have / 2**30:.1f} GiB is available; crop the volume (e.g. Slicer's Crop Volume) first"
        )


def _series_files(folder: Path) -> list[str]:
    reader = sitk.ImageSeriesReader
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"no DICOM series found in folder {folder}")
    if len(series) > 1:
        raise InputError(f"folder {folder} holds {len(series)} DICOM series; point to one series' folder")
    return list(reader.GetGDCMSeriesFileNames(str(folder), series[0]))


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder, refusing what the engine cannot use."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"image {path} does not exist")
    try:
        if path.is_dir():
            files = _series_files(path)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            info = sitk.ImageFileReader()
            info.SetFileName(files[0])
            info.ReadImageInformation()
            size = (*info.GetSize()[:2], len(files))
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            size = reader.GetSize()
            if reader.GetDimension() != 3:
                raise InputError(f"expected a 3D image, {path.name} is {reader.GetDimension()}D of size {size}")
            if reader.GetNumberOfComponents() != 1:
                raise InputError(
                    f"expected a scalar image, {path.name} has {reader.GetNumberOfComponents()} components per voxel"
                )
        check_fits_in_memory(size)
        image = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reader error"
        raise InputError(f"cannot read image {path}: {first}") from None
    check_sitk_image(image)
    return image


def read_volume(path: str | os.PathLike) -> Volume:
    volume = Volume.from_sitk(read_image(path))
    check_finite(volume.array, str(path))
    return volume


def check_finite(array: np.ndarray, name: str) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"image {name} has {bad} NaN or infinite voxels; fill them before segmenting")


def write_mask(volume: Volume, mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 mask on `volume`'s grid atomically (never a partial file)."""
    path = Path(path)
    if not path.name.endswith(VOLUME_SUFFIXES):
        raise InputError(f"output {path.name} must end with one of {', '.join(VOLUME_SUFFIXES)}")
    image = volume.to_sitk(mask.astype(np.uint8))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
