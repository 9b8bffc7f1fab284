"""The Slicer module's Qt-free logic, headless on real MRML classes (PyPI slicer-core).

Volumes are loaded with Slicer's own reader (vtkMRMLVolumeArchetypeStorageNode) and results are
checked against the `propsam segment` CLI on the same file, voxel for voxel, and through Slicer's
own labelmap export/writer for the geometry.
"""

from __future__ import annotations

import ast
import hashlib
import py_compile
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, shared_data_path

pytest.importorskip("slicer.util", reason="slicer-core (PyPI) provides the headless MRML classes")
import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

sys.path.insert(0, str(REPO / "PropSAMSlicer"))

from PropSAMSlicerLib import (  # noqa: E402
    PropSAMLogic, SegmentRequest, box_prompt_from_roi, constrain_roi_to_slice, mask_prompt_from_array,
    two_view_prompt_from_roi, view_axis,
)
from PropSAMSlicerLib.export import export_segments, series_folder  # noqa: E402
from PropSAMSlicerLib.segments import (  # noqa: E402
    RESULT_TAG, TERMINOLOGY_TAG, get_tag, reference_geometry, segment_array, terminology_codes,
)
from PropSAMSlicerLib.study import BOX, SKETCH, TWO_VIEW, StudyController  # noqa: E402
from propsam import cli  # noqa: E402
from propsam.engine.prompts import BoxPrompt, MaskPrompt, TwoViewBoxPrompt  # noqa: E402
from propsam.errors import Cancelled, InputError, PropSAMError  # noqa: E402
from propsam.study.records import read_records  # noqa: E402
from propsam.study.session import StudyStateError  # noqa: E402

MODULE_DIR = REPO / "PropSAMSlicer"
# Slicer's default slice orientations (SliceToRAS rotation) and an axial view tilted by 10/30 degrees
AXIAL = np.array([[-1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
SAGITTAL = np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]], float)
CORONAL = np.array([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], float)


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# --- scene and data helpers -------------------------------------------------------------------------
@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    for name, logic in (
        ("Colors", slicer.vtkSlicerColorLogic()),
        ("Volumes", slicer.vtkSlicerVolumesLogic()),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic()),
    ):
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
    slicer.mrmlScene = scene
    yield scene
    slicer.mrmlScene = None


def matrix(node_matrix) -> np.ndarray:
    return np.array([[node_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtk_matrix(array: np.ndarray):
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(array[r, c]))
    return out


def ijk_to_ras(volume_node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return matrix(m)


def load_volume(scene, path: Path, files: list[Path] | None = None):
    """Slicer's own reader, as File > Add Data uses it."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.stem)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if files:
        storage.ResetFileNameList()
        for f in files:
            storage.AddFileName(str(f))
        storage.SetSingleFile(0)
    assert storage.ReadData(node) == 1, path
    return node


def write_image(path: Path, array: np.ndarray, spacing, direction, origin=(10.0, -20.0, 30.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(np.asarray(direction, float).ravel()))
    sitk.WriteImage(image, str(path))
    return path


def phantom(shape, centre, radii, seed=0) -> np.ndarray:
    """An ellipsoid brighter than a noisy background (int16, like CT)."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
    return (rng.normal(0, 20, shape) + 300 * inside).astype(np.int16)


def slice_view(scene, rotation3: np.ndarray, name="Red"):
    node = slicer.vtkMRMLSliceNode()
    node.SetName(name)
    node.SetLayoutName(name)
    scene.AddNode(node)
    m = np.eye(4)
    m[:3, :3] = rotation3
    node.GetSliceToRAS().DeepCopy(vtk_matrix(m))
    node.UpdateMatrices()
    return node


def rotated_to_volume(volume_node, axis: int):
    """A slice view 'rotated to volume plane': its normal is the volume's voxel axis `axis` (numpy)."""
    columns = ijk_to_ras(volume_node)[:3, :3]
    units = columns / np.linalg.norm(columns, axis=0)
    ijk = 2 - axis
    x, y = (units[:, a] for a in range(3) if a != ijk)
    return np.column_stack([x, y, np.cross(x, y)])


def draw_box(scene, volume_node, axis: int, index: int, box, margin=0.3, depth_voxels=0.0):
    """A markups ROI as drawn over voxels `box` (c0, r0, c1, r1) of slice `index` along numpy `axis`,
    with edges `margin` voxels outside the voxel centres (a hand-drawn box never hits them exactly)."""
    ijk = 2 - axis
    col, row = (a for a in range(3) if a != ijk)
    low, high = np.zeros(3), np.zeros(3)
    low[ijk], high[ijk] = index - depth_voxels / 2, index + depth_voxels / 2
    low[col], high[col] = box[0] - margin, box[2] + margin
    low[row], high[row] = box[1] - margin, box[3] + margin
    return roi_over_ijk(scene, volume_node, low, high)


def roi_over_ijk(scene, volume_node, low, high):
    m = ijk_to_ras(volume_node)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    units = m[:3, :3] / spacing
    if np.linalg.det(units) < 0:  # an ROI's axes are a rotation; its box is symmetric anyway
        units[:, 2] *= -1
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = units
    object_to_node[:3, 3] = (m @ np.append((np.asarray(low) + high) / 2, 1))[:3]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetAndObserveObjectToNodeMatrix(vtk_matrix(object_to_node))
    roi.SetSize(*((np.asarray(high) - low) * spacing))
    return roi


def run_cli(image: Path, out: Path, model: Path, *prompt: str) -> np.ndarray:
    code = cli.main(["segment", "--image", str(image), "--out", str(out), "--model", str(model),
                     "--device", "cpu", "--quiet", *prompt])
    assert code == 0
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out)))


def save_volume(scene, volume_node, path: Path) -> Path:
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(volume_node) == 1
    scene.RemoveNode(storage)
    return path


def slicer_export(scene, segmentation_node, segment_id, volume_node, path: Path) -> sitk.Image:
    """The segment as Slicer itself exports and writes it on the volume's grid."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, volume_node)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(labelmap) == 1
    for node in (labelmap, storage):
        scene.RemoveNode(node)
    return sitk.ReadImage(str(path))


def assert_same_grid(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5)


def voxel_digest(volume_node) -> str:
    voxels = hashlib.sha256(slicer.util.arrayFromVolume(volume_node).tobytes()).hexdigest()
    return voxels + str(ijk_to_ras(volume_node).round(9))


def scene_state(scene) -> dict:
    """Every node's id and MRML attributes, and every segment's voxels and properties."""
    state = {}
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        state[node.GetID()] = node.GetClassName()
        if node.IsA("vtkMRMLSegmentationNode"):
            seg = node.GetSegmentation()
            for k in range(seg.GetNumberOfSegments()):
                sid = seg.GetNthSegmentID(k)
                s = seg.GetSegment(sid)
                labelmap = slicer.vtkOrientedImageData()
                node.GetBinaryLabelmapRepresentation(sid, labelmap)
                scalars = labelmap.GetPointData().GetScalars()
                voxels = numpy_support.vtk_to_numpy(scalars).tobytes() if scalars is not None else b""
                state[(node.GetID(), sid)] = (
                    s.GetName(), tuple(s.GetColor()), get_tag(s, TERMINOLOGY_TAG), get_tag(s, RESULT_TAG),
                    hashlib.sha256(voxels).hexdigest(), tuple(labelmap.GetExtent()),
                )
        if node.IsA("vtkMRMLScalarVolumeNode") and node.GetImageData() is not None:
            state[(node.GetID(), "voxels")] = voxel_digest(node)
    return state


def add_segment(scene, volume_node, mask: np.ndarray, name: str, segmentation_node=None):
    """A hand-painted segment, written with Slicer's segmentation logic (not PropSAM's)."""
    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", name)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    image = on_grid(volume_node, mask)
    assert logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_REPLACE)
    return segmentation_node, segment_id


def on_grid(volume_node, mask: np.ndarray):
    """A labelmap image holding `mask` (Z, Y, X) on the volume's grid, built here with plain VTK."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*mask.shape[::-1])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    image.SetImageToWorldMatrix(m)
    return image


class Extruder:
    """A stand-in engine (instant, exact): the prompt's box or mask repeated on +-2 slices."""

    def __init__(self):
        self.calls = 0

    def segment(self, volume, prompt, options=None, progress=None, cancel=None):
        from propsam.engine.propagation import PropagationStats
        from propsam.engine.segmenter import SegmentResult

        self.calls += 1
        if isinstance(prompt, TwoViewBoxPrompt):
            prompt = prompt.axial_prompt()
        plane = np.zeros(np.delete(volume.shape, prompt.axis), bool)
        if isinstance(prompt, BoxPrompt):
            c0, r0, c1, r1 = prompt.box
            plane[r0 : r1 + 1, c0 : c1 + 1] = True
        else:
            plane = prompt.mask
        moved = np.zeros((volume.shape[prompt.axis], *plane.shape), np.uint8)
        lo, hi = max(prompt.slice_index - 2, 0), min(prompt.slice_index + 2, moved.shape[0] - 1)
        moved[lo : hi + 1] = plane
        if progress is not None:
            progress(hi - lo + 1, hi - lo + 1)
        mask = np.ascontiguousarray(np.moveaxis(moved, 0, prompt.axis))
        stats = PropagationStats(1, hi - lo + 1, (lo, hi))
        return SegmentResult(mask, plane, prompt.axis, prompt.slice_index, 0.0, stats)


def fake_logic(scene):
    engine = Extruder()
    return PropSAMLogic(scene, load_segmenter=lambda model, device: engine), engine


@pytest.fixture
def small_volume(scene, tmp_path):
    """An anisotropic, permuted and flipped grid: i runs to anterior, j to inferior, k to right."""
    direction = [[0, 0, -1], [-1, 0, 0], [0, -1, 0]]  # LPS, columns = i, j, k
    image = phantom((8, 20, 24), (4, 10, 12), (3, 6, 7))
    path = write_image(tmp_path / "small.nrrd", image, (1.5, 0.7, 3.0), direction)
    return load_volume(scene, path)


# --- engine agreement (the real engine with seeded random weights) --------------------------------
def test_background_job_on_oblique_anisotropic_volume_matches_cli(scene, tmp_path, random_model):
    direction = rotation(0, 25) @ rotation(2, -15)  # tilted in two planes
    image = phantom((10, 40, 44), (5, 20, 22), (4, 12, 14))
    path = write_image(tmp_path / "oblique.nrrd", image, (0.9, 1.1, 4.0), direction)
    volume_node = load_volume(scene, path)
    before = voxel_digest(volume_node)
    view = slice_view(scene, rotated_to_volume(volume_node, 0))  # axial view rotated to the volume plane
    roi = draw_box(scene, volume_node, 0, 5, (10, 9, 33, 31))
    prompt = box_prompt_from_roi(volume_node, roi, view)
    assert prompt == BoxPrompt(5, (10, 9, 33, 31), 0)

    logic = PropSAMLogic(scene)
    job = logic.start(SegmentRequest(volume_node, prompt, model=str(random_model), device="cpu"))
    assert scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None  # nothing is written while running
    assert job.wait(120)
    events = job.poll()
    kinds = [e[0] for e in events]
    assert kinds[-1] == "finished" and "progress" in kinds
    progress = [e[1:] for e in events if e[0] == "progress"]
    assert all(0 < done <= total for done, total in progress) and progress[-1][0] == progress[-1][1]
    result = logic.apply(job)
    assert set(result.stop_reasons) == {-1, 1}  # both ends say why they are where they are
    assert f"slices {result.slices[0]}..{result.slices[1]} (lower: {result.stop_reasons[-1]}, upper: " in result.status()

    expected = run_cli(path, tmp_path / "cli.nrrd", random_model, "--box", "10,9,33,31", "--slice-index", "5")
    assert expected.any()
    np.testing.assert_array_equal(segment_array(result.segmentation_node, result.segment_id, volume_node), expected)
    exported = slicer_export(scene, result.segmentation_node, result.segment_id, volume_node, tmp_path / "slicer.nrrd")
    assert_same_grid(exported, sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported) > 0, expected > 0)
    internal = result.segmentation_node.GetBinaryLabelmapInternalRepresentation(result.segment_id)
    internal_to_ras = vtk.vtkMatrix4x4()
    internal.GetImageToWorldMatrix(internal_to_ras)
    np.testing.assert_allclose(matrix(internal_to_ras), ijk_to_ras(volume_node), atol=1e-9)
    assert voxel_digest(volume_node) == before


def test_sagittal_view_on_left_handed_volume_matches_cli(scene, tmp_path, random_model):
    from propsam.dicom.grid import mask_on_grid

    direction = np.diag([-1.0, 1.0, 1.0])  # LPS: i runs to the right, a left-handed grid
    image = phantom((12, 36, 40), (6, 18, 20), (4, 10, 12), seed=1)
    path = write_image(tmp_path / "flipped.nii.gz", image, (1.2, 0.8, 3.0), direction)
    volume_node = load_volume(scene, path)
    original = sitk.ReadImage(str(path))
    # Slicer reverses the slice order of a left-handed grid: same voxels, other index order. The
    # engine is not flip-invariant, so the CLI must read the volume as Slicer holds it.
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume_node), sitk.GetArrayFromImage(original)[::-1])
    as_held = save_volume(scene, volume_node, tmp_path / "as_held.nrrd")
    view = slice_view(scene, SAGITTAL, "Yellow")
    assert view_axis(volume_node, view) == (2, 0.0)
    roi = draw_box(scene, volume_node, 2, 20, (9, 3, 27, 9))
    prompt = box_prompt_from_roi(volume_node, roi, view)
    assert prompt == BoxPrompt(20, (9, 3, 27, 9), 2)
    result = PropSAMLogic(scene).segment(SegmentRequest(volume_node, prompt, model=str(random_model), device="cpu"))
    expected = run_cli(as_held, tmp_path / "cli.nrrd", random_model,
                       "--box", "9,3,27,9", "--slice-index", "20", "--slice-axis", "x")
    assert expected.any()
    np.testing.assert_array_equal(result.mask, expected)
    np.testing.assert_array_equal(segment_array(result.segmentation_node, result.segment_id, volume_node), expected)
    exported = slicer_export(scene, result.segmentation_node, result.segment_id, volume_node, tmp_path / "slicer.nrrd")
    # on the input file's physical grid, voxel for voxel (only the index order differs)
    np.testing.assert_array_equal(mask_on_grid(exported, original), expected[::-1])


def test_coronal_sketch_on_real_sagittal_series_matches_cli(scene, tmp_path, random_model):
    from propsam.io.volume import read_image

    series = read_image(shared_data_path("dicom-mr-decubitus", "3_t1_fl2d_sag"))  # slices in position order
    crop = series[100:148, 96:150, :]  # keeps the sagittal directions; smaller so the test is quick
    path = tmp_path / "sagittal.nrrd"
    sitk.WriteImage(crop, str(path))
    volume_node = load_volume(scene, path)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume_node), sitk.GetArrayFromImage(crop))
    view = slice_view(scene, CORONAL, "Green")
    axis, degrees = view_axis(volume_node, view)
    assert (axis, round(degrees, 3)) == (2, 0.0)  # coronal = the series' column axis here

    sketch = np.zeros(slicer.util.arrayFromVolume(volume_node).shape, np.uint8)
    sketch[10:25, 18:36, 24] = 1
    segmentation_node, sketch_id = add_segment(scene, volume_node, sketch, "sketch")
    prompt = mask_prompt_from_array(segment_array(segmentation_node, sketch_id, volume_node), axis)
    assert isinstance(prompt, MaskPrompt) and (prompt.axis, prompt.slice_index) == (2, 24)
    np.testing.assert_array_equal(prompt.mask, sketch[:, :, 24] > 0)
    logic = PropSAMLogic(scene)
    request = SegmentRequest(volume_node, prompt, segmentation_node, sketch_id, model=str(random_model), device="cpu")
    logic.segment(request)
    sketch_image = sitk.GetImageFromArray(sketch)
    sketch_image.CopyInformation(crop)
    sitk.WriteImage(sketch_image, str(tmp_path / "sketch.nrrd"))
    expected = run_cli(path, tmp_path / "cli.nrrd", random_model, "--mask-prompt", str(tmp_path / "sketch.nrrd"))
    np.testing.assert_array_equal(segment_array(segmentation_node, sketch_id, volume_node), expected)
    exported = slicer_export(scene, segmentation_node, sketch_id, volume_node, tmp_path / "slicer.nrrd")
    assert_same_grid(exported, crop)
    logic.undo()  # the sketch was painted in the target segment: Undo brings the sketch back
    np.testing.assert_array_equal(segment_array(segmentation_node, sketch_id, volume_node), sketch)


def test_cancel_stops_within_a_round_and_changes_nothing(scene, tmp_path, random_model):
    image = phantom((60, 24, 24), (30, 12, 12), (28, 8, 8))
    path = write_image(tmp_path / "long.nrrd", image, (1.0, 1.0, 1.0), np.eye(3))
    volume_node = load_volume(scene, path)
    segmentation_node, _ = add_segment(scene, volume_node, np.ones((60, 24, 24), np.uint8), "other")
    before = scene_state(scene)
    logic = PropSAMLogic(scene)
    request = SegmentRequest(volume_node, BoxPrompt(30, (4, 4, 19, 19), 0), segmentation_node=segmentation_node,
                             model=str(random_model), device="cpu", thickness_mm=4,  # 4 slices a round
                             leak_limit=0)  # the random network's masks may outgrow the prompt: no leak limit
    job = logic.start(request)
    rounds_seen = 0
    while not job.done:
        events = job.poll()
        if any(e[0] == "progress" for e in events):
            job.cancel()
            rounds_seen = len([e for e in events if e[0] == "progress"])
            break
        job.wait(0.01)
    assert job.wait(60)
    after_cancel = [e for e in job.poll() if e[0] == "progress"]
    assert job.state == "cancelled" and len(after_cancel) <= 1, (rounds_seen, after_cancel)
    assert job.progress[0] < 59  # it did not run to the end
    with pytest.raises(Cancelled, match="nothing was changed"):
        logic.apply(job)
    assert scene_state(scene) == before and not logic.can_undo


# --- writing, undo, other segments (stand-in engine: exact and instant) --------------------------
def test_undo_restores_shared_layer_segment_exactly_and_others_never_change(scene, small_volume):
    volume_node = small_volume
    shape = slicer.util.arrayFromVolume(volume_node).shape
    target_mask, other_mask = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    target_mask[3:5, 2:6, 2:6] = 1
    other_mask[2:6, 8:14, 10:18] = 1
    segmentation_node, target = add_segment(scene, volume_node, target_mask, "target")
    _, other = add_segment(scene, volume_node, other_mask, "other", segmentation_node)
    segmentation = segmentation_node.GetSegmentation()
    assert segmentation.GetNumberOfLayers() == 1  # the two segments share one labelmap layer
    segmentation.GetSegment(target).SetColor(0.1, 0.2, 0.3)
    before = scene_state(scene)

    logic, _ = fake_logic(scene)
    prompt = BoxPrompt(4, (5, 5, 20, 15), 0)  # overlaps "other"
    result = logic.segment(SegmentRequest(volume_node, prompt, segmentation_node, target, segment_type="organ"))
    written = segment_array(segmentation_node, target, volume_node)
    assert written[4, 5:16, 5:21].all() and written.sum() == result.mask.sum()
    np.testing.assert_array_equal(segment_array(segmentation_node, other, volume_node), other_mask)
    assert scene_state(scene)[(segmentation_node.GetID(), other)] == before[(segmentation_node.GetID(), other)]
    assert terminology_codes(segmentation.GetSegment(target))[1] == ("SCT", "91772007", "Organ")

    logic.undo()
    np.testing.assert_array_equal(segment_array(segmentation_node, target, volume_node), target_mask)
    np.testing.assert_array_equal(segment_array(segmentation_node, other, volume_node), other_mask)
    after = scene_state(scene)
    for key in (other, target):  # name, colour, tags and voxels; a separated layer may differ in extent only
        assert after[(segmentation_node.GetID(), key)][:4] == before[(segmentation_node.GetID(), key)][:4]
    assert {k for k in after} == {k for k in before} and not logic.can_undo
    with pytest.raises(InputError, match="nothing to undo"):
        logic.undo()


def test_new_segmentation_on_demand_and_undo_removes_it(scene, small_volume):
    before = scene_state(scene)
    logic, engine = fake_logic(scene)
    result = logic.segment(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0), segment_name="liver"))
    node = result.segmentation_node
    assert node.GetScene() is scene and node.GetDisplayNode() is not None
    assert node.GetSegmentation().GetSegment(result.segment_id).GetName() == "liver"
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert node.GetNodeReference(role) is small_volume  # reference geometry = the input volume
    second = logic.segment(SegmentRequest(small_volume, BoxPrompt(4, (14, 10, 20, 16), 0), node, segment_name="kidney"))
    assert node.GetSegmentation().GetNumberOfSegments() == 2 and second.segmentation_node is node
    logic.undo()
    logic.undo()
    assert scene_state(scene) == before and engine.calls == 2


def test_no_overlap_option_keeps_result_out_of_other_segments(scene, small_volume):
    shape = slicer.util.arrayFromVolume(small_volume).shape
    other_mask = np.zeros(shape, np.uint8)
    other_mask[:, :, :10] = 1
    segmentation_node, other = add_segment(scene, small_volume, other_mask, "other")
    logic, _ = fake_logic(scene)
    prompt = BoxPrompt(4, (5, 5, 20, 15), 0)
    result = logic.segment(SegmentRequest(small_volume, prompt, segmentation_node, allow_overlap=False))
    written = segment_array(segmentation_node, result.segment_id, small_volume)
    assert written.any() and not (written & other_mask).any()
    np.testing.assert_array_equal(segment_array(segmentation_node, other, small_volume), other_mask)


def test_first_run_says_the_model_is_loading_later_runs_do_not(scene, small_volume):
    logic, _ = fake_logic(scene)
    request = SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0), model="first-run-model", device="cpu")
    statuses = []
    for _ in range(2):
        job = logic.start(request)
        job.wait(10)
        statuses.append([e[1] for e in job.poll() if e[0] == "status"])
    assert "Loading model first-run-model on cpu" in statuses[0][0]
    assert not any("Loading" in text for text in statuses[1])


def test_cancel_after_the_engine_finished_still_changes_nothing(scene, small_volume):
    before = scene_state(scene)
    logic, _ = fake_logic(scene)
    job = logic.start(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0)))
    assert job.wait(10) and job.state == "finished"
    job.cancel()
    with pytest.raises(Cancelled):
        logic.apply(job)
    assert scene_state(scene) == before


def test_volume_regridded_during_run_discards_result(scene, small_volume):
    logic, _ = fake_logic(scene)
    job = logic.start(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0)))
    job.wait(10)
    small_volume.SetSpacing(2, 2, 2)
    before = scene_state(scene)
    with pytest.raises(InputError, match="changed its grid"):
        logic.apply(job)
    assert scene_state(scene) == before


def test_target_deleted_during_run_or_surface_segmentation_is_refused(scene, small_volume):
    shape = slicer.util.arrayFromVolume(small_volume).shape
    segmentation_node, target = add_segment(scene, small_volume, np.ones(shape, np.uint8), "target")
    logic, _ = fake_logic(scene)
    job = logic.start(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0), segmentation_node, target))
    job.wait(10)
    segmentation_node.GetSegmentation().RemoveSegment(target)
    with pytest.raises(InputError, match="has no segment with id"):
        logic.apply(job)
    job = logic.start(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0), segmentation_node))
    job.wait(10)
    scene.RemoveNode(segmentation_node)
    with pytest.raises(InputError, match="not in the scene"):
        logic.apply(job)
    surfaces, _ = add_segment(scene, small_volume, np.ones(shape, np.uint8), "surface")
    surfaces.GetSegmentation().SetSourceRepresentationName(
        slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName())
    with pytest.raises(InputError, match="stores surfaces"):
        logic.start(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0), surfaces))


# --- prompts from views and bad input ------------------------------------------------------------
def test_views_map_to_voxel_axes_including_flips_permutations_and_small_tilts(scene, small_volume):
    columns = ijk_to_ras(small_volume)[:3, :3]
    assert np.allclose(np.abs(columns / np.linalg.norm(columns, axis=0)), [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert view_axis(small_volume, slice_view(scene, AXIAL))[0] == 1  # S is the j axis: numpy axis 1
    assert view_axis(small_volume, slice_view(scene, SAGITTAL, "Yellow"))[0] == 0  # R is k: numpy axis 0
    assert view_axis(small_volume, slice_view(scene, CORONAL, "Green"))[0] == 2  # A is i: numpy axis 2
    axis, degrees = view_axis(small_volume, slice_view(scene, rotation(0, 10) @ AXIAL, "Red2"))
    assert axis == 1 and degrees == pytest.approx(10, abs=1e-6)
    with pytest.raises(InputError, match="oblique.*Rotate to volume plane"):
        view_axis(small_volume, slice_view(scene, rotation(0, 30) @ AXIAL, "Red3"))


def test_box_from_each_view_and_without_view(scene, small_volume):
    shape = slicer.util.arrayFromVolume(small_volume).shape  # (8, 20, 24)
    cases = [(AXIAL, 1, 10, (2, 1, 20, 6)), (SAGITTAL, 0, 4, (3, 2, 21, 17)), (CORONAL, 2, 12, (4, 1, 15, 7))]
    for rotation3, axis, index, box in cases:
        roi = draw_box(scene, small_volume, axis, index, box)
        view = slice_view(scene, rotation3, f"view{axis}")
        assert box_prompt_from_roi(small_volume, roi, view) == BoxPrompt(index, box, axis)
        assert box_prompt_from_roi(small_volume, roi) == BoxPrompt(index, box, axis)  # thinnest extent
        BoxPrompt(index, box, axis).validate(shape)
    # a box given some depth while drawing is flattened onto its view's slice plane, same prompt
    deep = draw_box(scene, small_volume, 2, 12, (4, 1, 15, 7), depth_voxels=3.0)
    view = slice_view(scene, CORONAL, "Green2")
    constrain_roi_to_slice(deep, view)
    assert np.isclose(np.min(deep.GetSize()), 0.0)
    assert box_prompt_from_roi(small_volume, deep, view) == BoxPrompt(12, (4, 1, 15, 7), 2)


def test_two_view_box_prompt(scene, small_volume):
    roi = roi_over_ijk(scene, small_volume, np.array([3.2, 2.6, 1.8]), np.array([15.6, 11.4, 5.3]))
    assert two_view_prompt_from_roi(small_volume, roi) == TwoViewBoxPrompt((4, 3, 2, 15, 11, 5))
    flat = draw_box(scene, small_volume, 0, 4, (3, 3, 12, 9))
    with pytest.raises(InputError, match="flat along K.*orthogonal view"):
        two_view_prompt_from_roi(small_volume, flat)


def test_bad_inputs_give_clear_errors_and_change_nothing(scene, small_volume):
    logic, engine = fake_logic(scene)
    view = slice_view(scene, AXIAL)
    before = scene_state(scene)
    shape = slicer.util.arrayFromVolume(small_volume).shape
    with pytest.raises(InputError, match="no input volume is selected"):
        logic.start(SegmentRequest(None, BoxPrompt(4, (3, 3, 12, 9), 0)))
    with pytest.raises(InputError, match="no input volume is selected"):
        box_prompt_from_roi(None, draw_box(scene, small_volume, 1, 10, (2, 1, 20, 6)), view)
    far = draw_box(scene, small_volume, 1, 10, (40, 1, 60, 6))
    with pytest.raises(InputError, match="lies outside the volume"):
        box_prompt_from_roi(small_volume, far, view)
    off_slice = draw_box(scene, small_volume, 1, 25, (2, 1, 20, 6))
    with pytest.raises(InputError, match="slice 25 .*outside the volume"):
        box_prompt_from_roi(small_volume, off_slice, view)
    clipped = draw_box(scene, small_volume, 1, 10, (-5, 1, 30, 6))  # reaches past both edges: clipped
    assert box_prompt_from_roi(small_volume, clipped, view) == BoxPrompt(10, (0, 1, 23, 6), 1)
    sliver = draw_box(scene, small_volume, 1, 10, (23, 1, 40, 6))
    with pytest.raises(InputError, match="at least 2 x 2 voxels"):
        box_prompt_from_roi(small_volume, sliver, view)
    with pytest.raises(InputError, match="sketch is empty: paint the object"):
        mask_prompt_from_array(np.zeros(shape, np.uint8))
    thick = np.zeros(shape, np.uint8)
    thick[2:5, 4:9, 4:9] = 1
    with pytest.raises(InputError, match="spans several slices"):
        mask_prompt_from_array(thick)
    with pytest.raises(InputError, match="lies outside the slice"):
        logic.start(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 30, 9), 0)))
    with pytest.raises(InputError, match="thickness"):
        logic.start(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0), thickness_mm=0))
    with pytest.raises(InputError, match="leak limit"):
        logic.start(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0), leak_limit=0.5))
    unplaced = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "unplaced")
    with pytest.raises(InputError, match="not placed yet"):
        box_prompt_from_roi(small_volume, unplaced, view)
    for node in (far, off_slice, clipped, sliver, unplaced):
        scene.RemoveNode(node)
    state = scene_state(scene)
    assert {k: v for k, v in state.items() if not str(v).startswith("vtkMRMLMarkups")} == {
        k: v for k, v in before.items() if not str(v).startswith("vtkMRMLMarkups")}
    assert engine.calls == 0


def test_empty_result_and_mismatched_segmentation_are_refused(scene, small_volume, tmp_path):
    class Nothing(Extruder):
        def segment(self, volume, prompt, *args, **kwargs):
            result = super().segment(volume, prompt)
            result.mask[:] = 0
            return result

    logic = PropSAMLogic(scene, load_segmenter=lambda m, d: Nothing())
    before = scene_state(scene)
    with pytest.raises(InputError, match="no object.*nothing was changed"):
        logic.segment(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0)))
    assert scene_state(scene) == before

    image = phantom((8, 10, 10), (4, 5, 5), (2, 3, 3))
    other_path = write_image(tmp_path / "other.nrrd", image, (2.0, 2.0, 2.0), np.eye(3))
    other_volume = load_volume(scene, other_path)
    segmentation_node, _ = add_segment(scene, other_volume, np.ones((8, 10, 10), np.uint8), "drawn elsewhere")
    logic, _ = fake_logic(scene)
    before = scene_state(scene)
    with pytest.raises(InputError, match="another volume's grid"):
        logic.segment(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0), segmentation_node))
    assert scene_state(scene) == before
    # a segmentation made on a crop of the same voxel lattice is fine, and its geometry is kept
    crop_path = tmp_path / "crop.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "small.nrrd"))[3:15, 2:12, 1:6], str(crop_path))
    crop = load_volume(scene, crop_path)
    cropped_segmentation, _ = add_segment(scene, crop, np.ones((5, 10, 12), np.uint8), "drawn on the crop")
    geometry = reference_geometry(cropped_segmentation)
    result = logic.segment(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0), cropped_segmentation))
    assert reference_geometry(cropped_segmentation) == geometry
    written = segment_array(cropped_segmentation, result.segment_id, small_volume)
    np.testing.assert_array_equal(written, result.mask)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[0, 3] = 5.0
    transform.SetMatrixTransformToParent(vtk_matrix(shift))
    segmentation_node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputError, match="different transforms"):
        logic.start(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0), segmentation_node))


# --- DICOM-SEG export and study mode -----------------------------------------------------------------
def test_dicom_seg_export_from_segmentation_node_round_trips(scene, tmp_path):
    import highdicom as hd
    import pydicom

    folder = next(shared_data_path("lidc-idri-subsets", "LIDC-IDRI-0001").glob("*/*"))
    headers = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in folder.iterdir()}
    normal = np.cross(*np.reshape(np.array(headers[next(iter(headers))].ImageOrientationPatient, float), (2, 3)))
    # files in slice order, as Slicer's DICOM plugin hands them to the reader
    files = sorted(headers, key=lambda f: float(normal @ np.array(headers[f].ImagePositionPatient, float)))
    volume_node = load_volume(scene, files[0], files)
    shape = slicer.util.arrayFromVolume(volume_node).shape
    hand = np.zeros(shape, np.uint8)
    hand[3:9, 200:260, 150:230] = 1
    segmentation_node, hand_id = add_segment(scene, volume_node, hand, "nodule (hand)")
    logic, _ = fake_logic(scene)
    auto = logic.segment(SegmentRequest(volume_node, BoxPrompt(7, (300, 240, 340, 290), 0), segmentation_node,
                                        segment_name="nodule (PropSAM)", segment_type="lesion"))
    out = export_segments(segmentation_node, [hand_id, auto.segment_id], volume_node, folder, tmp_path / "seg.dcm",
                          model_name="lite")
    seg = hd.seg.segread(out)
    # slice k of the volume <-> the instance at that position, found here from the headers alone
    m = ijk_to_ras(volume_node)
    positions = [(np.diag([-1, -1, 1]) @ (m @ [0, 0, k, 1])[:3]) for k in range(shape[0])]
    def nearest(position):
        return min(headers.values(), key=lambda h: np.linalg.norm(np.array(h.ImagePositionPatient, float) - position))

    uids = [nearest(p).SOPInstanceUID for p in positions]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2])
    np.testing.assert_array_equal(pixels[..., 0], hand)
    np.testing.assert_array_equal(pixels[..., 1], auto.mask)
    first, second = seg.SegmentSequence
    assert (first.SegmentLabel, first.SegmentAlgorithmType) == ("nodule (hand)", "MANUAL")
    assert (second.SegmentLabel, second.SegmentAlgorithmType) == ("nodule (PropSAM)", "SEMIAUTOMATIC")
    assert second.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"
    # a PropSAM result edited afterwards is MANUAL
    edited = segment_array(segmentation_node, auto.segment_id, volume_node)
    edited[7, 240:245, 300:305] = 0
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    image = on_grid(volume_node, edited)
    logic.SetBinaryLabelmapToSegment(image, segmentation_node, auto.segment_id, logic.MODE_REPLACE)
    again = hd.seg.segread(export_segments(segmentation_node, [auto.segment_id], volume_node, folder,
                                           tmp_path / "edited.dcm", model_name="lite"))
    assert again.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    with pytest.raises(PropSAMError, match="already exists"):
        export_segments(segmentation_node, [hand_id], volume_node, folder, out, model_name="lite")


def test_series_folder_isolates_one_series(tmp_path):
    mixed = tmp_path / "db"
    mixed.mkdir()
    for name in ("a1.dcm", "a2.dcm", "b1.dcm"):
        (mixed / name).write_bytes(b"x")
    assert series_folder([str(mixed / "a1.dcm"), str(mixed / "a2.dcm"), str(mixed / "b1.dcm")], tmp_path / "s") == mixed
    isolated = series_folder([str(mixed / "a1.dcm"), str(mixed / "a2.dcm")], tmp_path / "s")
    assert isolated != mixed and len(list(isolated.iterdir())) == 2
    with pytest.raises(InputError, match="loaded from DICOM"):
        series_folder([], tmp_path / "s")


def test_study_mode_writes_one_row_per_completed_prompt(scene, small_volume, tmp_path):
    shape = slicer.util.arrayFromVolume(small_volume).shape
    reference = np.zeros(shape, np.uint8)
    reference[2:7, 3:10, 3:16] = 1
    ticks = iter(np.arange(0.0, 100.0, 1.5))
    study = StudyController(tmp_path / "study.sqlite", "S1", "reader-1", randomised=True, seed=3,
                            model_version="random", clock=lambda: float(next(ticks)))
    order = study.start_case("case-7", "liver", reference)
    assert sorted(order) == ["one_view_box", "one_view_sketch", "two_view_box"]
    wrong = next(t for t in (BOX, SKETCH, TWO_VIEW) if t != study.next_tool())
    with pytest.raises(StudyStateError, match="randomised order asks for"):
        study.arm(wrong)
    logic, _ = fake_logic(scene)
    tool = study.next_tool()
    study.arm(tool)
    study.correction()
    study.submit()
    result = logic.segment(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0)))
    record = study.finish(segment_array(result.segmentation_node, result.segment_id, small_volume))
    assert record.corrections == 1 and record.prompt_seconds == pytest.approx(1.5) and 0 < record.dice < 1
    study.arm(study.next_tool())
    study.submit()
    study.abandon()  # cancelled or failed run: no row
    study.close()
    rows = read_records(tmp_path / "study.sqlite")
    assert len(rows) == 1
    assert (rows[0].case_id, rows[0].object_name, rows[0].reader_id) == ("case-7", "liver", "reader-1")
    assert rows[0].prompt_type == {"box": "one_view_box", "sketch": "one_view_sketch", "two_view": "two_view_box"}[tool]


# --- the Slicer-only files ---------------------------------------------------------------------------
def test_module_file_compiles_and_ui_binds_parameter_node_fields(tmp_path):
    source = MODULE_DIR / "PropSAMSlicer.py"
    py_compile.compile(str(source), cfile=str(tmp_path / "m.pyc"), doraise=True)
    tree = ast.parse(source.read_text())
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PropSAMSlicerParameterNode")
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "PropSAMSlicer.ui")
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound and bound <= fields, bound - fields
    names = {w.get("name") for w in ui.iter("widget")}
    for button in ("segmentButton", "cancelButton", "undoButton", "boxButton", "sketchButton", "twoViewButton",
                   "progressBar", "openEditorButton", "exportButton", "studyCollapsibleButton"):
        assert button in names, button


def test_thickness_and_context_defaults_are_the_engines_everywhere():
    """The CLI, the logic's request and the panel repeat the engine's 20 mm / 1.5x as literals (the
    CLI must not import torch for --help); they were tuned once (results/window_context_tuning/)
    and must move together."""
    from PropSAMSlicerLib import SegmentRequest

    import argparse

    from propsam.engine.cli import add_engine_options
    from propsam.engine.propagation import PropagationOptions

    engine = PropagationOptions()
    cli = argparse.ArgumentParser()
    add_engine_options(cli)  # `segment` and `segment-batch` alike
    assert (cli.get_default("thickness_mm"), cli.get_default("context")) == (engine.thickness_mm, engine.context)
    assert (SegmentRequest.thickness_mm, SegmentRequest.context) == (engine.thickness_mm, engine.context)
    tree = ast.parse((MODULE_DIR / "PropSAMSlicer.py").read_text())
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PropSAMSlicerParameterNode")
    panel = {n.target.id: ast.literal_eval(n.value) for n in wrapper.body
             if isinstance(n, ast.AnnAssign) and n.target.id in ("thicknessMm", "context")}
    assert (panel["thicknessMm"], panel["context"]) == (engine.thickness_mm, engine.context)


def test_the_panels_leak_limit_matches_the_engine_and_reads_off_at_its_minimum():
    """The Advanced section's leak limit: its default is the engine's, its minimum (shown as "off")
    turns the limit off, every value in its range passes the logic's check, and Segment sends it."""
    from PropSAMSlicerLib import panel_leak_limit

    from propsam.engine.propagation import PropagationOptions, check_leak_limit

    tree = ast.parse((MODULE_DIR / "PropSAMSlicer.py").read_text())
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PropSAMSlicerParameterNode")
    field = next(n for n in wrapper.body if isinstance(n, ast.AnnAssign) and n.target.id == "leakLimit")
    low, high = (ast.literal_eval(a) for a in field.annotation.slice.elts[1].args)
    assert ast.literal_eval(field.value) == PropagationOptions().max_area_ratio
    assert panel_leak_limit(low) == 0 and panel_leak_limit(2.5) == 2.5
    for value in np.arange(low, high + 0.25, 0.5):  # the spin box's steps from its minimum
        check_leak_limit(panel_leak_limit(float(value)))
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "PropSAMSlicer.ui")
    box = next(w for w in ui.iter("widget") if w.get("name") == "leakLimitSpinBox")
    props = {p.get("name"): p[0].text for p in box.iter("property")}
    assert props["SlicerParameterName"] == "leakLimit" and props["specialValueText"] == "off"
    assert "leak_limit=panel_leak_limit(p.leakLimit)" in (MODULE_DIR / "PropSAMSlicer.py").read_text()
    from PropSAMSlicerLib import RunResult

    from propsam.engine.propagation import FADED, LEAK

    mask = np.ones((2, 3, 3), np.uint8)
    stopped = RunResult(None, "s", mask, 1.23, (4, 15), 0, {-1: FADED, 1: LEAK})
    assert stopped.status() == ("Done in 1.2 s: 18 voxels on slices 4..15 (lower: faded out, upper: leak limit). "
                                "If the object goes on, raise Advanced > Leak limit, or correct with Continue.")
    assert "Leak limit" not in RunResult(None, "s", mask, 1.0, (4, 15), 0, {-1: FADED, 1: FADED}).status()
