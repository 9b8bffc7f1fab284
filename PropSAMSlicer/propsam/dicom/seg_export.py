"""Write masks on a DICOM series' grid as one DICOM Segmentation (highdicom, BINARY, overlap allowed).

Every frame is tied to its source instance by physical position (see `series.py`); the SEG
references all instances of the series, including those whose frames are empty and omitted.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom.charset
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .. import __version__
from ..errors import InputError
from ..io.atomic import atomic_path, check_writable
from .codes import DEFAULT_SEGMENT_TYPE, check_text, segment_type_codes
from .grid import mask_on_grid
from .series import SourceSeries, check_written_dicom, load_series

UTF8 = "ISO_IR 192"
SEMIAUTOMATIC = "SEMIAUTOMATIC"
MANUAL = "MANUAL"


@dataclass
class SegmentSpec:
    """One segment. `mask` holds 0/1 either as a (Z, Y, X) array in the order of
    SimpleITK's GetArrayFromImage of the series, or as a SimpleITK image whose voxels
    coincide with the series grid (axes may be flipped or swapped, nothing else)."""

    mask: np.ndarray | sitk.Image
    label: str
    edited: bool = False  # the reader changed PropSAM's result: recorded as MANUAL
    segment_type: str = DEFAULT_SEGMENT_TYPE  # preset in codes.SEGMENT_TYPES
    category: Code | None = None  # overrides the preset's category
    property_type: Code | None = None  # overrides the preset's type

    @property
    def algorithm_type(self) -> str:
        return MANUAL if self.edited else SEMIAUTOMATIC

    def property_codes(self) -> tuple[Code, Code]:
        category, property_type = segment_type_codes(self.segment_type)
        return self.category or category, self.property_type or property_type


def export_dicom_seg(
    segments: list[SegmentSpec],
    dicom_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    model_name: str,
    algorithm_name: str = "PropSAM",
    algorithm_version: str = __version__,
    force: bool = False,
    repair_uids: bool = True,
) -> Path:
    """Write `segments` as a DICOM-SEG referencing the series in `dicom_dir`; returns the path."""
    out_path = check_writable(out_path, force, inputs=[dicom_dir])
    if not segments:
        raise InputError("nothing to export: no segments given")
    texts = [check_text(spec.label, "segment label") for spec in segments]
    texts += [check_text(model_name, "model name (it identifies the algorithm in the SEG)"),
              check_text(algorithm_name, "algorithm name"), check_text(algorithm_version, "algorithm version")]
    texts += [code.meaning for spec in segments for code in spec.property_codes()]
    series = load_series(dicom_dir, repair_uids=repair_uids)
    pixel_array = np.stack([_mask_array(spec, series) for spec in segments], axis=-1)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm_version,
        parameters={"model": model_name},
    )
    descriptions = [_description(number, spec, algorithm) for number, spec in enumerate(segments, start=1)]
    try:
        seg = _segmentation(series, pixel_array, descriptions, algorithm_name, algorithm_version, model_name,
                            _character_set(series, texts))
    except ValueError as exc:
        raise InputError(f"cannot build the DICOM-SEG: {exc}") from None
    with atomic_path(out_path, replace=force, verify=lambda tmp: check_written_dicom(tmp, seg)) as tmp:
        seg.save_as(tmp)
    return out_path


def _segmentation(
    series: SourceSeries,
    pixel_array: np.ndarray,
    descriptions: list[hd.seg.SegmentDescription],
    algorithm_name: str,
    algorithm_version: str,
    model_name: str,
    character_set: str | None,
) -> hd.seg.Segmentation:
    with warnings.catch_warnings():
        # the source's patient name is copied as is; its style is not ours to judge
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        return hd.seg.Segmentation(
            source_images=series.datasets,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=100,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=algorithm_name,
            manufacturer_model_name=model_name,
            software_versions=algorithm_version,
            device_serial_number="none",
            content_label="PROPSAM",
            content_description=_content_description(series),
            series_description=f"{algorithm_name} segmentation",
            specific_character_set=character_set,
        )


def _character_set(series: SourceSeries, texts: list[str]):
    """The source's SpecificCharacterSet if it can hold our text, else UTF-8 (ISO_IR 192).

    pydicom re-encodes the copied patient data in the new set, so nothing is lost; a character
    the set cannot hold would otherwise be written as '?'."""
    source = series.datasets[0].get("SpecificCharacterSet") or None  # blank: default repertoire (ASCII)
    if all(text.isascii() for text in texts):
        return source
    if isinstance(source, str) and source != UTF8:  # one set, no ISO 2022 code extensions
        codec = pydicom.charset.convert_encodings([source])[0]
        try:
            for text in texts:
                text.encode(codec)
            return source
        except UnicodeEncodeError:
            pass
    return UTF8


def _mask_array(spec: SegmentSpec, series: SourceSeries) -> np.ndarray:
    if isinstance(spec.mask, sitk.Image):
        array = mask_on_grid(spec.mask, series.image, name=f"mask of segment {spec.label!r}")
    else:
        array = np.asarray(spec.mask)
        if array.shape != series.shape:
            raise InputError(
                f"mask of segment {spec.label!r} has shape {array.shape} (Z, Y, X) "
                f"but the DICOM series grid is {series.shape}"
            )
    values = np.unique(array)
    if not np.isin(values, (0, 1)).all():
        raise InputError(
            f"mask of segment {spec.label!r} holds values {values[:6].tolist()}; expected 0/1 "
            "(split a label map into one segment per value)"
        )
    if not values.any():
        raise InputError(f"mask of segment {spec.label!r} is empty; nothing to export")
    return array.astype(np.uint8)


def _description(
    number: int, spec: SegmentSpec, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    category, property_type = spec.property_codes()
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=spec.label,
        segmented_property_category=category,
        segmented_property_type=property_type,
        algorithm_type=spec.algorithm_type,
        # kept for MANUAL too: the edited result started from this algorithm's output
        algorithm_identification=algorithm,
    )


def _content_description(series: SourceSeries) -> str:
    if series.repairs:
        return "PropSAM; source UIDs repaired"  # LO: at most 64 characters
    return "PropSAM segmentation"
