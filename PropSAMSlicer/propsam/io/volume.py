"""A 3D image with its physical grid, read and written with SimpleITK.

Arrays are in SimpleITK's numpy order (Z, Y, X); spacing/origin/direction are in ITK order
(x, y, z). Outputs are always written on the exact grid of the image they came from.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import resource
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, ResourceError
from .atomic import AtomicOutputs, atomic_outputs, check_writable

# bytes per voxel the engine holds at most while segmenting: the image as read, a float32
# copy, the uint8 output and per-slice probability planes.
ENGINE_BYTES_PER_VOXEL = 4 + 4 + 1 + 4
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# masks are written as one file: a detached header (.nhdr/.mhd) names its data file, which cannot
# be renamed atomically together with it
OUTPUT_SUFFIXES = (".nrrd", ".mha", ".nii.gz", ".nii")
# NIfTI stores spacing, origin and direction as float32: what a written grid may differ by
NIFTI_GEOMETRY_RTOL = 1e-6
# a DICOM slice further than this (fraction of the slice spacing, at least 0.001 mm) from its
# place on the regular grid means a missing slice, uneven spacing or gantry tilt
SLICE_POSITION_TOL = 0.01


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
    """Memory this process may still allocate: the least of the machine's available memory,
    its cgroup's remaining limit (containers, batch jobs) and its own rlimits (ulimit -v/-d)."""
    limits = [_meminfo_available()]
    status = _proc_status()
    for limit, used in ((resource.RLIMIT_AS, status.get("VmSize")), (resource.RLIMIT_DATA, status.get("VmData"))):
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(max(0, soft - (used or 0)))
    cgroup = _cgroup_remaining()
    if cgroup is not None:
        limits.append(cgroup)
    return int(min(limits))


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def _proc_status() -> dict[str, int]:
    """VmSize/VmData of this process in bytes (empty where /proc is absent)."""
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmSize", "VmData"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values


def _cgroup_remaining() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, else v1); None when unlimited."""
    try:
        with open("/proc/self/cgroup") as f:
            entries = [line.strip().split(":", 2) for line in f if line.strip()]
    except OSError:
        return None
    candidates = []
    for _, controllers, group in entries:
        group = group.lstrip("/")
        if controllers == "":
            candidates.append((Path("/sys/fs/cgroup") / group, "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):
            candidates.append((Path("/sys/fs/cgroup/memory") / group, "memory.limit_in_bytes", "memory.usage_in_bytes"))
    remaining = []
    for folder, limit_name, usage_name in candidates:
        # a process in a nested group is bound by every ancestor's limit too
        for level in (folder, *folder.parents):
            try:
                limit_text = (level / limit_name).read_text().strip()
                usage = int((level / usage_name).read_text().strip())
            except (OSError, ValueError):
                continue
            if limit_text.isdigit() and int(limit_text) < 2**60:
                remaining.append(max(0, int(limit_text) - usage))
            if level == Path("/sys/fs/cgroup") or level == Path("/sys/fs/cgroup/memory"):
                break
    return min(remaining) if remaining else None


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


@contextlib.contextmanager
def quiet_library_output():
    """Hold back what C libraries (GDCM, nifticlib, ITK) print to stderr themselves: every problem
    they can report is turned into our own one-line error, which must not follow their noise."""
    sys.stderr.flush()
    try:
        sink = tempfile.TemporaryFile()
        saved = os.dup(2)
    except OSError:  # no room even for that: let the libraries print
        yield
        return
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        sink.close()


def read_image(path: str | os.PathLike, what: str = "image", *, allow_2d: bool = False,
               allow_folder: bool = True) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder, refusing what the engine cannot use:
    the one reader check for every input (image, mask prompt, --seg). Truncated or corrupt files,
    NaN/Inf voxels, and DICOM series whose slices are not evenly spaced are refused."""
    if path is None or not str(path).strip():
        raise InputError(f"{what} path is empty")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if path.is_dir() and not allow_folder:
        raise InputError(f"{what} {path} is a folder, expected an image file")
    dims = (2, 3) if allow_2d else (3,)
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # what ITK would warn about is checked below, in one line
    try:
        if path.is_dir():
            files = _series_files(path)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            info = sitk.ImageFileReader()
            info.SetFileName(files[0])
            info.ReadImageInformation()
            size = (*info.GetSize()[:2], len(files))
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            size = reader.GetSize()
            if reader.GetDimension() not in dims:
                raise InputError(f"expected a 3D {what}, {path.name} is {reader.GetDimension()}D of size {size}")
            if reader.GetNumberOfComponents() != 1:
                raise InputError(
                    f"expected a scalar {what}, {path.name} has {reader.GetNumberOfComponents()} components per voxel"
                )
        check_fits_in_memory(size)
        with quiet_library_output():
            image = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reader error"
        raise InputError(f"cannot read {what} {path}: {first}") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    if path.is_dir():
        check_even_slices(image, [reader.GetMetaData(k, "0020|0032") if reader.HasMetaDataKey(k, "0020|0032") else ""
                                  for k in range(len(files))], path)
    elif path.name.lower().endswith((".nii", ".nii.gz")):
        check_nifti_data(path, what)
    if image.GetDimension() == 3:
        check_sitk_image(image)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        check_finite(sitk.GetArrayViewFromImage(image), f"{what} {path}")
    return image


def check_even_slices(image: sitk.Image, positions: list[str], folder: Path) -> None:
    """Refuse a DICOM series whose slices do not lie on one regular grid (ITK would silently average
    the spacing): the same rule for segmenting and for DICOM-SEG export."""
    spacing = image.GetSpacing()[2]
    tol = max(0.001, SLICE_POSITION_TOL * spacing)
    worst, worst_k = 0.0, 0
    for k, text in enumerate(positions):
        try:
            point = np.array([float(v) for v in text.strip().split("\\")])
        except ValueError:
            point = np.array([])
        if point.shape != (3,):
            raise InputError(f"DICOM series {folder}: slice {k} has no usable ImagePositionPatient; its grid is unknown")
        distance = float(np.linalg.norm(point - np.array(image.TransformIndexToPhysicalPoint((0, 0, k)))))
        if distance > worst:
            worst, worst_k = distance, k
    if worst > tol:
        gaps = np.diff([image.TransformPhysicalPointToContinuousIndex([float(v) for v in t.strip().split("\\")])[2]
                        for t in positions]) * spacing
        raise InputError(
            f"DICOM series {folder} is not evenly spaced: slice {worst_k} lies {worst:.3f} mm off a regular grid "
            f"(gaps {np.min(gaps):.3f}..{np.max(gaps):.3f} mm: a missing slice, uneven spacing or gantry tilt); "
            "PropSAM needs evenly spaced slices"
        )


NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                1280: "u8", 32: "c8", 1792: "c16", 128: "u1", 2304: "u1"}


def check_nifti_data(path: Path, what: str = "image") -> None:
    """ITK reads a truncated NIfTI without complaint (the missing voxels come back as zeros or
    garbage) and returns NaN as 0: check the stored data bytes ourselves, in one pass."""
    try:
        with _open_maybe_gzip(path) as f:
            header = f.read(540)
            layout = _nifti_layout(header)
            if layout is None:
                raise InputError(f"{what} {path} is not a valid NIfTI file (bad header)")
            offset, count, dtype = layout
            f.read(max(0, offset - len(header)))  # header extensions
            data_start = header[offset:] if offset < len(header) else b""
            need = count * dtype.itemsize
            got, finite, carry = 0, True, b""
            chunk = data_start
            while True:
                if chunk:
                    take = chunk[: max(0, need - got)]
                    got += len(take)
                    if dtype.kind in "fc" and finite:
                        buf = carry + take
                        usable = len(buf) - len(buf) % dtype.itemsize
                        finite = bool(np.isfinite(np.frombuffer(buf[:usable], dtype)).all())
                        carry = buf[usable:]
                if got >= need:
                    break
                chunk = f.read(1 << 24)
                if not chunk:
                    break
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{what} {path} is truncated or corrupt ({exc})") from None
    if got < need:
        raise InputError(f"{what} {path} is truncated: {got} of {need} data bytes present")
    if not finite:
        raise InputError(f"{what} {path} has NaN or infinite voxels; fill them before segmenting")


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _nifti_layout(header: bytes) -> tuple[int, int, np.dtype] | None:
    """(data offset, voxel count, stored dtype) from a NIfTI-1 or NIfTI-2 header."""
    for endian in "<>":
        size = struct.unpack(endian + "i", header[:4])[0] if len(header) >= 4 else 0
        if size == 348 and len(header) >= 348:
            dim = struct.unpack(endian + "8h", header[40:56])
            datatype = struct.unpack(endian + "h", header[70:72])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if size == 540 and len(header) >= 540:
            datatype = struct.unpack(endian + "h", header[12:14])[0]
            dim = struct.unpack(endian + "8q", header[16:80])
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
            break
    else:
        return None
    if datatype not in NIFTI_DTYPES or not 1 <= dim[0] <= 7 or offset < size:
        return None
    count = int(np.prod([max(1, d) for d in dim[1 : dim[0] + 1]], dtype=np.int64))
    itemsize = {128: 3, 2304: 4}.get(datatype)  # RGB24/RGBA32: only the byte count matters
    dtype = np.dtype(endian + NIFTI_DTYPES[datatype])
    if itemsize:
        count *= itemsize
    return offset, count, dtype


def read_volume(path: str | os.PathLike, what: str = "image") -> Volume:
    return Volume.from_sitk(read_image(path, what))


def check_finite(array: np.ndarray, name: str) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{name} has {bad} NaN or infinite voxels; fill them before segmenting")


def geometry_rtol(path: str | os.PathLike) -> float:
    """How closely a file of this format keeps a grid: NIfTI rounds it to float32, NRRD/MHA are exact."""
    return NIFTI_GEOMETRY_RTOL if str(path).lower().endswith((".nii", ".nii.gz")) else 1e-12


def check_written_image(written: sitk.Image, meant: sitk.Image, path: str | os.PathLike) -> None:
    """Verify a read-back image against what was written, to the format's precision."""
    if written.GetSize() != meant.GetSize() or written.GetPixelID() != meant.GetPixelID():
        raise ResourceError(f"read back as {written.GetSize()} {written.GetPixelIDTypeAsString()}, "
                            f"not {meant.GetSize()} {meant.GetPixelIDTypeAsString()}")
    if not np.array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(meant)):
        raise ResourceError("the voxels read back differ from those written")
    rtol = geometry_rtol(path)
    for name, got, want in (("spacing", written.GetSpacing(), meant.GetSpacing()),
                            ("origin", written.GetOrigin(), meant.GetOrigin()),
                            ("direction", written.GetDirection(), meant.GetDirection())):
        got, want = np.asarray(got), np.asarray(want)
        if (np.abs(got - want) > rtol * np.maximum(1.0, np.abs(want))).any():
            raise ResourceError(f"the {name} read back {got.tolist()} differs from {want.tolist()}")


def write_mask(volume: Volume, mask: np.ndarray, path: str | os.PathLike, *, force: bool = True,
               outputs: AtomicOutputs | None = None) -> None:
    """Write a uint8 mask on `volume`'s grid atomically, verified by reading it back (voxels, and the
    grid to the format's precision: see `geometry_rtol`). Without `force` an existing file is never
    replaced. With `outputs` the mask joins that group and is committed with it."""
    path = check_writable(path, True, suffixes=OUTPUT_SUFFIXES)
    image = volume.to_sitk(mask.astype(np.uint8))

    def verify(tmp: Path) -> None:
        try:
            written = read_image(tmp, "the mask")
        except InputError as exc:  # said of the temporary name: say it of the output
            raise ResourceError(str(exc).replace(f" {tmp}", "")) from None
        check_written_image(written, image, path)

    with contextlib.nullcontext(outputs) if outputs is not None else atomic_outputs(replace=force) as group:
        tmp = group.add(path, verify)
        try:
            with quiet_library_output():
                sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as exc:
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "writer error"
            raise ResourceError(f"cannot write {path}: {last}") from None
