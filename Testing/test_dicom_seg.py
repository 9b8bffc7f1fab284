"""DICOM-SEG export: voxel-exact round trips on real series, geometry vs dcmqi's liver.dcm, bad input."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import propsam
from propsam import cli
from propsam.dicom.codes import parse_code
from propsam.dicom.grid import mask_on_grid
from propsam.dicom.seg_export import SegmentSpec, export_dicom_seg
from propsam.dicom.series import UIDRepairWarning
from propsam.errors import InputError
from propsam.io.volume import read_image

from conftest import shared_data_path

LIDC = "lidc-idri-subsets"
CT3 = ("dcmqi-ct3slice", "ct-3slice")


def lidc_series(n: int) -> Path:
    folders = sorted(shared_data_path(LIDC, f"LIDC-IDRI-000{n}").glob("*/*"))
    assert len(folders) == 1, folders
    return folders[0]


def physical_order(folder: Path) -> list[pydicom.Dataset]:
    """Instances sorted along the slice normal, computed here independently of the exporter."""
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]
    row, col = np.reshape([float(v) for v in datasets[0].ImageOrientationPatient], (2, 3))
    normal = np.cross(row, col)
    return sorted(datasets, key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))


def sop_uid(ds: pydicom.Dataset) -> str:
    return str(ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID)


def read_back(path: Path, ordered_uids: list[str]) -> tuple[hd.seg.Segmentation, np.ndarray]:
    """(segmentation, array (Z, Y, X, segments)) with Z in the given instance order."""
    seg = hd.seg.segread(path)
    array = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=ordered_uids, segment_numbers=list(seg.segment_numbers)
    )
    return seg, array


def referenced_uids(seg: pydicom.Dataset) -> set[str]:
    return {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}


def frame_geometry(seg: pydicom.Dataset) -> dict[str, list[float]]:
    """source SOPInstanceUID -> ImagePositionPatient of its frame (first segment's frames)."""
    out = {}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out.setdefault(str(source), [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
    return out


def blob(image: sitk.Image, centre_zyx, radii_zyx) -> np.ndarray:
    """An ellipsoid clipped to voxels above -500 HU: irregular, z-asymmetric, on a few slices."""
    array = sitk.GetArrayFromImage(image)
    z, y, x = np.ogrid[: array.shape[0], : array.shape[1], : array.shape[2]]
    inside = sum(((c - m) / r) ** 2 for c, m, r in zip((z, y, x), centre_zyx, radii_zyx)) <= 1
    return (inside & (array > -500)).astype(np.uint8)


def test_lidc_round_trip_maps_slices_by_position(tmp_path):
    folder = lidc_series(1)
    ordered = physical_order(folder)
    file_order = [sop_uid(pydicom.dcmread(f, stop_before_pixels=True)) for f in sorted(folder.iterdir())]
    ordered_uids = [sop_uid(ds) for ds in ordered]
    assert file_order != ordered_uids, "file order equals physical order: this test would not catch a mix-up"
    image = read_image(folder)
    mask = blob(image, (4, 300, 180), (3, 60, 80))
    assert mask.sum() > 0 and mask[0].sum() == 0 and mask[-1].sum() == 0

    out = export_dicom_seg([SegmentSpec(mask, "nodule")], folder, tmp_path / "seg.dcm", model_name="test-model")

    seg, back = read_back(out, ordered_uids)
    assert back.shape == (*mask.shape, 1)
    assert int((back[..., 0] != mask).sum()) == 0
    assert referenced_uids(seg) == set(ordered_uids)
    assert seg.NumberOfFrames == int((mask.reshape(len(mask), -1).any(axis=1)).sum())
    positions = {sop_uid(ds): [float(v) for v in ds.ImagePositionPatient] for ds in ordered}
    for uid, position in frame_geometry(seg).items():
        np.testing.assert_allclose(position, positions[uid], atol=1e-4)
    description = seg.SegmentSequence[0]
    assert description.SegmentLabel == "nodule"
    assert description.SegmentAlgorithmType == "SEMIAUTOMATIC"
    algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("PropSAM", propsam.__version__)
    assert "test-model" in algorithm.AlgorithmParameters


def test_multiple_overlapping_segments_with_codes_and_manual_edit(tmp_path):
    folder = lidc_series(3)
    ordered_uids = [sop_uid(ds) for ds in physical_order(folder)]
    image = read_image(folder)
    first = blob(image, (5, 256, 200), (3, 70, 70))
    second = blob(image, (6, 256, 240), (4, 70, 70))
    assert (first & second).any(), "segments must overlap for this test"
    liver = parse_code("SCT:10200004:Liver")
    segments = [
        SegmentSpec(first, "lesion A", segment_type="lesion"),
        SegmentSpec(second, "organ B", edited=True, property_type=liver, segment_type="organ"),
    ]
    out = export_dicom_seg(segments, folder, tmp_path / "two.dcm", model_name="m")

    seg, back = read_back(out, ordered_uids)
    assert seg.SegmentsOverlap == "YES"
    assert int((back[..., 0] != first).sum()) == 0 and int((back[..., 1] != second).sum()) == 0
    a, b = seg.SegmentSequence
    assert (a.SegmentLabel, a.SegmentAlgorithmType) == ("lesion A", "SEMIAUTOMATIC")
    assert (b.SegmentLabel, b.SegmentAlgorithmType) == ("organ B", "MANUAL")
    assert a.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # Lesion
    assert b.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert b.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # Anatomical Structure


def test_dcmqi_liver_matches_reference_seg(tmp_path):
    folder = shared_data_path(*CT3)
    reference = hd.seg.segread(shared_data_path("dcmqi-ct3slice", "liver.dcm"))
    mask = sitk.ReadImage(str(shared_data_path("dcmqi-ct3slice", "liver_seg.nrrd")))
    ordered_uids = [sop_uid(ds) for ds in physical_order(folder)]

    out = export_dicom_seg([SegmentSpec(mask, "Liver", segment_type="organ")], folder, tmp_path / "liver.dcm",
                           model_name="m")
    seg, back = read_back(out, ordered_uids)
    assert int((back[..., 0] != sitk.GetArrayFromImage(mask)).sum()) == 0
    # dcmqi does not state SpatialLocationsPreserved; positions are compared below instead
    expected = reference.get_pixels_by_source_instance(
        source_sop_instance_uids=ordered_uids, segment_numbers=[1], ignore_spatial_locations=True
    )
    assert int((back != expected).sum()) == 0
    assert referenced_uids(seg) == referenced_uids(reference) == set(ordered_uids)
    assert seg.NumberOfFrames == reference.NumberOfFrames == 3
    ours, theirs = frame_geometry(seg), frame_geometry(reference)
    assert ours.keys() == theirs.keys()
    for uid in ours:
        np.testing.assert_allclose(ours[uid], theirs[uid], atol=1e-4)
    shared, ref_shared = seg.SharedFunctionalGroupsSequence[0], reference.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
                               [float(v) for v in ref_shared.PixelMeasuresSequence[0].PixelSpacing], atol=1e-6)
    np.testing.assert_allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
        [float(v) for v in ref_shared.PlaneOrientationSequence[0].ImageOrientationPatient], atol=1e-6)
    assert (seg.Rows, seg.Columns) == (reference.Rows, reference.Columns)
    assert seg.FrameOfReferenceUID == reference.FrameOfReferenceUID
    assert seg.StudyInstanceUID == reference.StudyInstanceUID


def test_jpeg2000_series_with_blank_uids_is_repaired_with_warning(tmp_path):
    folder = shared_data_path("totalseg-examples", "example_ct_dicom")
    labels = sitk.ReadImage(str(shared_data_path("totalseg-examples", "example_seg_dicom.nii.gz")))
    liver = sitk.Cast(labels == 5, sitk.sitkUInt8)  # the NIfTI stores y flipped
    ordered_uids = [sop_uid(ds) for ds in physical_order(folder)]

    with pytest.warns(UIDRepairWarning, match="blank StudyInstanceUID"):
        out = export_dicom_seg([SegmentSpec(liver, "liver")], folder, tmp_path / "a.dcm", model_name="m")
    with pytest.warns(UIDRepairWarning):
        again = export_dicom_seg([SegmentSpec(liver, "liver")], folder, tmp_path / "b.dcm", model_name="m")
    seg, back = read_back(out, ordered_uids)
    series_grid = read_image(folder)
    expected = sitk.GetArrayFromImage(sitk.Resample(liver, series_grid, sitk.Transform(), sitk.sitkNearestNeighbor))
    assert int((back[..., 0] != expected).sum()) == 0
    assert referenced_uids(seg) == set(ordered_uids)
    assert seg.StudyInstanceUID == pydicom.dcmread(again).StudyInstanceUID  # derived, hence stable
    assert "repaired" in seg.ContentDescription

    with pytest.raises(InputError, match="blank SOPInstanceUID"):
        export_dicom_seg([SegmentSpec(liver, "liver")], folder, tmp_path / "c.dcm", model_name="m",
                         repair_uids=False)
    assert not (tmp_path / "c.dcm").exists()


def test_mask_on_grid_undoes_flips_and_swaps_only():
    rng = np.random.default_rng(0)
    grid = sitk.GetImageFromArray(rng.integers(0, 2, (4, 5, 6)).astype(np.uint8))
    grid.SetSpacing((0.5, 0.7, 2.0))
    grid.SetOrigin((1.0, 2.0, 3.0))
    swapped = sitk.Flip(sitk.PermuteAxes(grid, (2, 0, 1)), (True, False, True))
    assert np.array_equal(mask_on_grid(swapped, grid), sitk.GetArrayFromImage(grid))
    shifted = sitk.Image(grid)
    shifted.SetOrigin((1.2, 2.0, 3.0))
    with pytest.raises(InputError, match="not on the grid"):
        mask_on_grid(shifted, grid)
    with pytest.raises(InputError, match="different extent"):
        mask_on_grid(grid[:, :, 1:], grid)


# --- bad input -----------------------------------------------------------------------------------


@pytest.fixture
def ct3_copy(tmp_path):
    folder = tmp_path / "ct"
    shutil.copytree(shared_data_path(*CT3), folder)
    return folder


def liver_array() -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data_path("dcmqi-ct3slice", "liver_seg.nrrd"))))


def test_mask_on_another_grid_is_refused(tmp_path):
    folder = shared_data_path(*CT3)
    shifted = sitk.ReadImage(str(shared_data_path("dcmqi-ct3slice", "liver_seg.nrrd")))
    shifted.SetOrigin(np.add(shifted.GetOrigin(), (0.4, 0, 0)).tolist())
    with pytest.raises(InputError, match="not on the grid of the DICOM series"):
        export_dicom_seg([SegmentSpec(shifted, "x")], folder, tmp_path / "o.dcm", model_name="m")
    with pytest.raises(InputError, match=r"shape \(2, 512, 512\)"):
        export_dicom_seg([SegmentSpec(liver_array()[:2], "x")], folder, tmp_path / "o.dcm", model_name="m")
    sparse = sitk.ReadImage(str(shared_data_path("dcmqi-ct3slice", "sparse_labelmap_ppv5_seg.nrrd")))
    with pytest.raises(InputError, match="not on the grid"):
        export_dicom_seg([SegmentSpec(sitk.Cast(sparse == 1, sitk.sitkUInt8), "x")], folder, tmp_path / "o.dcm",
                         model_name="m")
    assert list(tmp_path.iterdir()) == []


def test_folder_with_two_series_is_refused(tmp_path):
    (tmp_path / "two").mkdir()
    for n in (1, 2):
        for f in sorted(lidc_series(n).iterdir())[:2]:
            shutil.copy(f, tmp_path / "two" / f"{n}_{f.name}")
    with pytest.raises(InputError, match="holds 2 DICOM series"):
        export_dicom_seg([SegmentSpec(np.ones((4, 512, 512), np.uint8), "x")], tmp_path / "two", tmp_path / "o.dcm",
                         model_name="m")


def test_missing_pixel_spacing_is_refused(ct3_copy, tmp_path):
    path = ct3_copy / "02.dcm"
    ds = pydicom.dcmread(path)
    del ds.PixelSpacing
    ds.save_as(path)
    with pytest.raises(InputError, match="02.dcm has no PixelSpacing"):
        export_dicom_seg([SegmentSpec(liver_array(), "x")], ct3_copy, tmp_path / "o.dcm", model_name="m")


def test_blank_frame_of_reference_is_refused(ct3_copy, tmp_path):
    for path in ct3_copy.iterdir():
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = ""
        ds.save_as(path)
    with pytest.raises(InputError, match="blank FrameOfReferenceUID"):
        export_dicom_seg([SegmentSpec(liver_array(), "x")], ct3_copy, tmp_path / "o.dcm", model_name="m")


def test_empty_or_non_binary_masks_are_refused(tmp_path):
    folder = shared_data_path(*CT3)
    with pytest.raises(InputError, match="'blank' is empty"):
        export_dicom_seg([SegmentSpec(np.zeros((3, 512, 512), np.uint8), "blank")], folder, tmp_path / "o.dcm",
                         model_name="m")
    with pytest.raises(InputError, match="expected 0/1"):
        export_dicom_seg([SegmentSpec(liver_array() * 3, "x")], folder, tmp_path / "o.dcm", model_name="m")
    with pytest.raises(InputError, match="no segments"):
        export_dicom_seg([], folder, tmp_path / "o.dcm", model_name="m")


def test_existing_output_is_kept_without_force(tmp_path):
    folder = shared_data_path(*CT3)
    out = tmp_path / "o.dcm"
    out.write_bytes(b"keep me")
    with pytest.raises(InputError, match="already exists"):
        export_dicom_seg([SegmentSpec(liver_array(), "x")], folder, out, model_name="m")
    assert out.read_bytes() == b"keep me"
    export_dicom_seg([SegmentSpec(liver_array(), "x")], folder, out, model_name="m", force=True)
    assert hd.seg.segread(out).NumberOfFrames == 3


# --- command line --------------------------------------------------------------------------------


@pytest.fixture
def propsam_main(monkeypatch):
    # only this feature's subcommands: the test must not depend on other features being present
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["propsam.dicom.cli"])
    return cli.main


def test_cli_label_map_gives_one_segment_per_value(propsam_main, tmp_path, capsys):
    folder = shared_data_path(*CT3)
    labels = shared_data_path("dcmqi-ct3slice", "liver_spine_seg.nrrd")
    out = tmp_path / "ls.dcm"
    argv = ["export-dicom-seg", "--seg", str(labels), "--dicom", str(folder), "--out", str(out),
            "--label", "Liver", "--label", "Spine", "--segment-type", "organ", "--edited",
            "--type", "SCT:10200004:Liver"]
    assert propsam_main(argv) == 0
    seg, back = read_back(out, [sop_uid(ds) for ds in physical_order(folder)])
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver", "Spine"]
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"MANUAL"}
    assert {s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in seg.SegmentSequence} == {"Liver"}
    assert int((back[..., 0] != (array == 1)).sum()) == 0 and int((back[..., 1] != (array == 2)).sum()) == 0

    assert propsam_main(argv) == 2  # exists, no --force
    assert "already exists" in capsys.readouterr().err
    assert propsam_main(argv[:-7] + ["--force"]) == 2  # two values, one label
    err = capsys.readouterr().err.strip()
    assert err.startswith("propsam: error:") and "one --label per value" in err and "\n" not in err


def test_cli_empty_mask_exits_2(propsam_main, tmp_path, capsys):
    folder = shared_data_path(*CT3)
    empty = sitk.ReadImage(str(shared_data_path("dcmqi-ct3slice", "liver_seg.nrrd"))) * 0
    sitk.WriteImage(empty, str(tmp_path / "empty.nrrd"))
    rc = propsam_main(["export-dicom-seg", "--seg", str(tmp_path / "empty.nrrd"), "--dicom", str(folder),
                       "--out", str(tmp_path / "o.dcm")])
    assert rc == 2 and "is empty" in capsys.readouterr().err
    assert not (tmp_path / "o.dcm").exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects a malformed code itself
        propsam_main(["export-dicom-seg", "--seg", "m.nrrd", "--dicom", str(folder), "--out", "o.dcm",
                      "--type", "Liver"])
    assert exit_info.value.code == 2 and "SCHEME:VALUE:MEANING" in capsys.readouterr().err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
