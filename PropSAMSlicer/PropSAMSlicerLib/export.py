"""DICOM-SEG export of segments of a segmentation node, on the grid of the DICOM series they were drawn on.

Each segment is taken on the volume's grid and handed to propsam.dicom.seg_export with that
grid (LPS), which ties every frame to its source instance by position. A segment PropSAM wrote
and nobody changed since is SEMIAUTOMATIC; any other (edited or hand-drawn) is MANUAL.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from propsam.errors import InputError

from .geometry import check_volume_node, node_name, volume_from_node
from .segments import RESULT_TAG, get_segment, get_tag, mask_digest, segment_array, terminology_codes


def segment_specs(segmentation_node, segment_ids: list[str], volume_node) -> list:
    from pydicom.sr.coding import Code

    from propsam.dicom.seg_export import SegmentSpec

    check_volume_node(volume_node)
    if segmentation_node is None:
        raise InputError("no segmentation is selected: nothing to export")
    if not segment_ids:
        raise InputError(f"segmentation '{node_name(segmentation_node)}' has no segment to export")
    specs = []
    for segment_id in segment_ids:
        segment = get_segment(segmentation_node, segment_id)
        mask = segment_array(segmentation_node, segment_id, volume_node)
        written = get_tag(segment, RESULT_TAG)
        codes = terminology_codes(segment)
        category, property_type = (
            (Code(value=c[1], scheme_designator=c[0], meaning=c[2]) for c in codes) if codes else (None, None)
        )
        specs.append(SegmentSpec(
            mask=volume_from_node(volume_node, mask).to_sitk(),
            label=segment.GetName(),
            edited=written is None or written != mask_digest(mask),
            category=category,
            property_type=property_type,
        ))
    return specs


def export_segments(
    segmentation_node, segment_ids: list[str], volume_node, dicom_dir: str | os.PathLike, out_path: str | os.PathLike,
    *, model_name: str, force: bool = False,
) -> Path:
    """Write the segments as one DICOM-SEG referencing the series in `dicom_dir`; returns its path."""
    from propsam.dicom.seg_export import export_dicom_seg

    specs = segment_specs(segmentation_node, segment_ids, volume_node)
    return export_dicom_seg(specs, dicom_dir, out_path, model_name=model_name, force=force)


def series_folder(files: list[str], scratch: str | os.PathLike) -> Path:
    """A folder holding exactly the series' files: their own folder if it holds nothing else,
    else links (or copies) in `scratch` (Slicer's database may keep several series together)."""
    if not files:
        raise InputError("the volume has no DICOM files (was it loaded from DICOM?)")
    paths = [Path(f) for f in files]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} DICOM file(s) of the series are missing, e.g. {missing[0]}")
    parent = paths[0].parent
    in_parent = {p.name for p in parent.iterdir() if p.is_file()}
    if all(p.parent == parent for p in paths) and in_parent == {p.name for p in paths}:
        return parent
    folder = Path(scratch)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for number, path in enumerate(paths):
        target = folder / f"{number:05d}.dcm"
        try:
            target.symlink_to(path)
        except OSError:  # e.g. Windows without the symlink privilege
            shutil.copy2(path, target)
    return folder
