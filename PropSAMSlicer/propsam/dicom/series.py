"""A classic single-frame DICOM series: its grid and its instances in grid order.

The grid is what `propsam.io.volume.read_image` (SimpleITK/GDCM) makes of the folder, so a mask
array taken from that image (Z, Y, X) lines up with `SourceSeries.datasets`: instance k is the one
whose ImagePositionPatient is the physical position of slice k, never simply the k-th file.

UID repair (done unless `repair_uids=False`, and always reported as a `UIDRepairWarning`):
- a blank SOPInstanceUID/SOPClassUID is taken from the file meta header
  (MediaStorageSOPInstanceUID/MediaStorageSOPClassUID), which names the same instance;
- a blank StudyInstanceUID/SeriesInstanceUID is replaced by a UID derived from the series'
  SOPInstanceUIDs, so repeated exports of one series agree. Such a UID exists in no archive:
  the SEG then links to its images by SOPInstanceUID only.
A blank FrameOfReferenceUID cannot be repaired (positions would be unanchored) and is an error.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from ..errors import InputError, ResourceError
from ..io.volume import SLICE_POSITION_TOL, read_image

GEOMETRY_TOL = 1e-3  # direction cosines and pixel spacing, relative


class UIDRepairWarning(UserWarning):
    """The source series had blank UIDs that were filled in (see module docstring)."""


@dataclass
class SourceSeries:
    datasets: list[pydicom.Dataset]  # headers only, datasets[k] is slice k of `image`
    image: sitk.Image  # the series as read by SimpleITK: its grid is the mask grid
    repairs: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = self.image.GetSize()
        return (z, y, x)

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]


def load_series(folder: str | os.PathLike, *, repair_uids: bool = True) -> SourceSeries:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM series folder {folder} does not exist or is not a folder")
    image = read_image(folder)  # refuses empty folders and folders with several series
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    datasets = [_read_header(Path(f)) for f in files]
    for path, ds in zip(files, datasets):
        _check_geometry(Path(path).name, ds, image)
    repairs = _repair_uids(datasets) if repair_uids else []
    _check_uids(datasets, folder)
    ordered = _order_by_position(datasets, image)
    if repairs:
        warnings.warn(f"series {folder}: " + "; ".join(repairs), UIDRepairWarning, stacklevel=2)
    return SourceSeries(datasets=ordered, image=image, repairs=repairs)


def _read_header(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise InputError(f"cannot read DICOM header of {path}: {exc}") from None


def _check_geometry(name: str, ds: pydicom.Dataset, image: sitk.Image) -> None:
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise InputError(f"{name} is a multi-frame image; only classic single-frame series are supported")
    for keyword in ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient"):
        if not ds.get(keyword):
            raise InputError(f"{name} has no {keyword}; the series' physical grid is unknown, cannot export")
    size = image.GetSize()
    if (int(ds.Columns), int(ds.Rows)) != size[:2]:
        raise InputError(f"{name} is {ds.Columns}x{ds.Rows} pixels, the series is {size[0]}x{size[1]}")
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    if not np.allclose((column_spacing, row_spacing), image.GetSpacing()[:2], rtol=GEOMETRY_TOL):
        raise InputError(f"{name} pixel spacing {list(ds.PixelSpacing)} differs from the series grid")
    direction = np.reshape(image.GetDirection(), (3, 3))
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    if not np.allclose(orientation, np.concatenate([direction[:, 0], direction[:, 1]]), atol=GEOMETRY_TOL):
        raise InputError(f"{name} orientation {list(orientation)} differs from the series grid")


def _order_by_position(datasets: list[pydicom.Dataset], image: sitk.Image) -> list[pydicom.Dataset]:
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    n_slices = image.GetSize()[2]
    if len(datasets) != n_slices:
        raise InputError(f"series has {len(datasets)} instances but its grid has {n_slices} slices")
    # the reader's rule (io.volume.check_even_slices): farther than this from every instance means
    # uneven spacing or a missing slice
    tol = max(0.001, SLICE_POSITION_TOL * image.GetSpacing()[2])
    ordered = []
    for k in range(n_slices):
        point = np.array(image.TransformIndexToPhysicalPoint((0, 0, k)))
        distances = np.linalg.norm(positions - point, axis=1)
        nearest = int(np.argmin(distances))
        if distances[nearest] > tol:
            raise InputError(
                f"no instance lies at slice {k} ({np.round(point, 3).tolist()} mm): "
                "the series has missing slices or uneven spacing"
            )
        ordered.append(datasets[nearest])
    if len({id(ds) for ds in ordered}) != n_slices:
        raise InputError("two slices of the series map to the same instance (duplicate positions)")
    return ordered


def _repair_uids(datasets: list[pydicom.Dataset]) -> list[str]:
    repairs = []
    for keyword, meta_keyword in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                                  ("SOPClassUID", "MediaStorageSOPClassUID")):
        blank = [ds for ds in datasets if not str(ds.get(keyword, "")).strip()]
        for ds in blank:
            meta_uid = str(getattr(ds.get("file_meta"), meta_keyword, "") or "").strip()
            if not meta_uid:
                raise InputError(f"an instance has a blank {keyword} and no {meta_keyword} to repair it from")
            setattr(ds, keyword, meta_uid)
        if blank:
            repairs.append(f"{len(blank)} blank {keyword} filled from {meta_keyword}")
    sop_uids = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        values = {str(ds.get(keyword, "")).strip() for ds in datasets}
        if values == {""}:
            uid = generate_uid(entropy_srcs=[f"propsam repaired {keyword}", *sop_uids])
            for ds in datasets:
                setattr(ds, keyword, uid)
            repairs.append(f"blank {keyword} replaced by derived UID {uid} (not known to any archive)")
    return repairs


def _check_uids(datasets: list[pydicom.Dataset], folder: Path) -> None:
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID",
                    "FrameOfReferenceUID"):
        values = {str(ds.get(keyword, "")).strip() for ds in datasets}
        if "" in values:
            hint = "" if keyword == "FrameOfReferenceUID" else " (UID repair is off)"
            raise InputError(f"series {folder} has instances with a blank {keyword}{hint}")
        if keyword not in ("SOPInstanceUID", "SOPClassUID") and len(values) > 1:
            raise InputError(f"series {folder} mixes {len(values)} different {keyword} values")
    if len({str(ds.SOPInstanceUID) for ds in datasets}) != len(datasets):
        raise InputError(f"series {folder} has duplicate SOPInstanceUIDs")


def check_written_dicom(path: str | os.PathLike, meant: pydicom.Dataset) -> None:
    """A written DICOM file reads back whole: same instance, same pixel data length."""
    try:
        written = pydicom.dcmread(path)
        complete = (str(written.SOPInstanceUID) == str(meant.SOPInstanceUID)
                    and len(written.PixelData) == len(meant.PixelData))
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ResourceError(f"the DICOM file does not read back ({type(exc).__name__}: {exc})") from None
    if not complete:
        raise ResourceError("the DICOM file read back is incomplete")
