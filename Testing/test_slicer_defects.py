"""Slicer module defects found by review (issue 10, items 2-9; issue 12, item 12), each shown on real
MRML (slicer-core): sketch painting, Close Scene, overlap with the sketch, boxes from two clicks,
the minimum Slicer, guarded installs, shortcuts, and Undo after manual corrections."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import REPO

pytest.importorskip("slicer.util", reason="slicer-core (PyPI) provides the headless MRML classes")
import slicer  # noqa: E402

from test_slicer_logic import (  # noqa: E402,F401
    AXIAL, CORONAL, SAGITTAL, add_segment, draw_box, fake_logic, on_grid, rotated_to_volume, scene, scene_state,
    slice_view, small_volume,
)

from PropSAMSlicerLib import (  # noqa: E402
    ChangedSinceRun, SegmentRequest, box_prompt_from_roi, flatten_box_to_view, mask_prompt_from_array,
    two_view_prompt_from_roi, write_policy,
)
from PropSAMSlicerLib import dependencies, shortcuts  # noqa: E402
from PropSAMSlicerLib.segments import PROMPT_TAG, get_tag, segment_array  # noqa: E402
from PropSAMSlicerLib.sketch import EDITOR_SINGLETON_TAG, SKETCH_EFFECTS, sketch_editor_node, start_sketch  # noqa: E402
from propsam.engine.prompts import BoxPrompt  # noqa: E402
from propsam.errors import InputError  # noqa: E402

MODULE = REPO / "PropSAMSlicer" / "PropSAMSlicer.py"
UI = REPO / "PropSAMSlicer" / "Resources" / "UI" / "PropSAMSlicer.ui"


def paint(scene, editor_node, segmentation_node, segment_id, volume_node, stroke, erase=False):
    """One brush stroke as Slicer's Paint/Erase effects apply it: through the Segment Editor logic,
    which honours the editor node's overwrite and masking settings."""
    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(scene)
    logic.SetSegmentEditorNode(editor_node)
    logic.SetSegmentationNode(segmentation_node)
    logic.SetSourceVolumeNode(volume_node)
    logic.SetCurrentSegmentID(segment_id)
    mode = logic.ModificationModeRemove if erase else logic.ModificationModeAdd
    logic.ModifySegmentByLabelmap(segmentation_node, segment_id, on_grid(volume_node, stroke), mode, False, False)


# --- 2: painting the sketch never changes another segment ------------------------------------------
def test_sketch_paint_and_erase_never_touch_other_segments(scene, small_volume):
    shape = slicer.util.arrayFromVolume(small_volume).shape
    liver = np.zeros(shape, np.uint8)
    liver[2:6, 5:15, 5:15] = 1
    segmentation_node, liver_id = add_segment(scene, small_volume, liver, "liver")
    sketch_id = start_sketch(segmentation_node, None)
    stroke = np.zeros(shape, np.uint8)
    stroke[4, 8:12, 8:20] = 1  # half of it over the liver

    # what the old panel did: a plain editor node, Slicer's default "overwrite all segments"
    default_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    paint(scene, default_node, segmentation_node, sketch_id, small_volume, stroke)
    assert segment_array(segmentation_node, liver_id, small_volume).sum() < liver.sum()  # the liver lost voxels

    segmentation_node, liver_id = add_segment(scene, small_volume, liver, "liver again")
    sketch_id = start_sketch(segmentation_node, None)
    node = sketch_editor_node(scene)
    assert node.GetOverwriteMode() == slicer.vtkMRMLSegmentEditorNode.OverwriteNone
    assert node.GetMaskMode() == slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere
    paint(scene, node, segmentation_node, sketch_id, small_volume, stroke)
    np.testing.assert_array_equal(segment_array(segmentation_node, sketch_id, small_volume), stroke)
    np.testing.assert_array_equal(segment_array(segmentation_node, liver_id, small_volume), liver)
    erase = np.zeros(shape, np.uint8)
    erase[4, 8:12, 8:12] = 1  # erasing over the liver removes only sketch voxels
    paint(scene, node, segmentation_node, sketch_id, small_volume, erase, erase=True)
    np.testing.assert_array_equal(segment_array(segmentation_node, sketch_id, small_volume), stroke & (1 - erase))
    np.testing.assert_array_equal(segment_array(segmentation_node, liver_id, small_volume), liver)
    assert SKETCH_EFFECTS == ["Paint", "Erase"]
    assert "setEffectNameOrder(SKETCH_EFFECTS)" in MODULE.read_text()


# --- 3: the sketch tool after File > Close Scene ---------------------------------------------------
def test_sketch_editor_node_is_found_again_after_close_scene(scene):
    old_panels_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "PropSAM sketch editor")  # made once
    first = sketch_editor_node(scene)
    assert scene.IsNodePresent(first) and first.GetSingletonTag() == EDITOR_SINGLETON_TAG
    assert sketch_editor_node(scene) is first  # one node per scene
    first.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)  # e.g. from a saved scene
    assert sketch_editor_node(scene).GetOverwriteMode() == slicer.vtkMRMLSegmentEditorNode.OverwriteNone
    first.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
    scene.Clear(0)  # File > Close Scene: ordinary nodes go, singletons stay (reset)
    assert not scene.IsNodePresent(old_panels_node)  # the old panel kept painting through a node gone from the scene
    again = sketch_editor_node(scene)
    assert scene.IsNodePresent(again) and again.GetSingletonTag() == EDITOR_SINGLETON_TAG
    assert again.GetOverwriteMode() == slicer.vtkMRMLSegmentEditorNode.OverwriteNone
    assert scene.GetNodesByClass("vtkMRMLSegmentEditorNode").GetNumberOfItems() == 1
    # the panel looks the node up each time a sketch starts, never keeps one from setup
    source = MODULE.read_text()
    assert "setMRMLSegmentEditorNode(sketch_editor_node(slicer.mrmlScene))" in source
    assert 'AddNewNodeByClass("vtkMRMLSegmentEditorNode"' not in source


# --- 4: with overlap off, the sketch is not "another segment" ---------------------------------------
def test_overlap_off_keeps_the_sketch_slice_and_old_sketches_do_not_cut_later_runs(scene, small_volume):
    shape = slicer.util.arrayFromVolume(small_volume).shape
    kidney = np.zeros(shape, np.uint8)
    kidney[3, 2:6, 2:6] = 1
    segmentation_node, kidney_id = add_segment(scene, small_volume, kidney, "kidney")
    sketch_id = start_sketch(segmentation_node, None)
    assert get_tag(segmentation_node.GetSegmentation().GetSegment(sketch_id), PROMPT_TAG) == "sketch"
    sketch = np.zeros(shape, np.uint8)
    sketch[4, 4:14, 6:18] = 1
    paint(scene, sketch_editor_node(scene), segmentation_node, sketch_id, small_volume, sketch)
    logic, _ = fake_logic(scene)  # the stand-in engine repeats the prompt on slices 2..6
    prompt = mask_prompt_from_array(segment_array(segmentation_node, sketch_id, small_volume), 0)
    result = logic.segment(SegmentRequest(small_volume, prompt, segmentation_node, allow_overlap=False))
    written = segment_array(segmentation_node, result.segment_id, small_volume)
    np.testing.assert_array_equal(written[4], sketch[4])  # the prompt slice is kept whole (old: emptied)
    # a later box run into the same segment: the old sketch does not cut it, the kidney still does
    box = BoxPrompt(4, (2, 2, 20, 16), 0)
    logic.segment(SegmentRequest(small_volume, box, segmentation_node, result.segment_id, allow_overlap=False))
    written = segment_array(segmentation_node, result.segment_id, small_volume)
    assert written[4, 2:17, 2:21].all()
    assert not (written & kidney).any() and written[3].sum() == 15 * 19 - 16
    np.testing.assert_array_equal(segment_array(segmentation_node, kidney_id, small_volume), kidney)


# --- 5 / item 3: a box from two clicks is a flat box on its view's slice ---------------------------
@pytest.mark.parametrize("rotation3, axis, index, box", [
    (AXIAL, 1, 10, (2, 1, 20, 6)), (SAGITTAL, 0, 4, (3, 2, 21, 17)), (CORONAL, 2, 12, (4, 1, 15, 7)),
])
def test_box_from_two_clicks_is_flat_in_its_view_and_the_view_decides_the_axis(
        scene, small_volume, rotation3, axis, index, box):
    # Slicer places a two-click ROI as a 3D box whose depth equals its shorter side
    c0, r0, c1, r1 = box
    shorter = min(c1 - c0, r1 - r0) + 0.6
    roi = draw_box(scene, small_volume, axis, index, box, depth_voxels=shorter)
    roi.CreateDefaultDisplayNodes()
    with pytest.raises(InputError, match="thick along every axis"):
        box_prompt_from_roi(small_volume, roi)  # without the view the old panel had to guess
    deep = two_view_prompt_from_roi(small_volume, roi)  # and a two-view box passed, silently clipped
    ijk = 2 - axis
    assert deep.box3d[3 + ijk] > deep.box3d[ijk]
    view = slice_view(scene, rotation3, f"view{axis}")
    flatten_box_to_view(roi, view)
    assert box_prompt_from_roi(small_volume, roi, view) == BoxPrompt(index, box, axis)
    assert box_prompt_from_roi(small_volume, roi) == BoxPrompt(index, box, axis)  # flat: no guessing left
    display = roi.GetDisplayNode()
    assert [display.GetNthViewNodeID(i) for i in range(display.GetNumberOfViewNodeIDs())] == [view.GetID()]
    with pytest.raises(InputError, match="flat along .*orthogonal view"):
        two_view_prompt_from_roi(small_volume, roi)  # until its depth is dragged in another view
    flatten_box_to_view(roi, view, only_in_view=False)  # the two-view box stays visible everywhere
    assert display.GetNumberOfViewNodeIDs() == 0


def test_two_click_two_view_box_was_clipped_to_its_placement_depth(scene, small_volume):
    roi = draw_box(scene, small_volume, 0, 4, (3, 3, 12, 9), depth_voxels=3.0)  # as placed, never dragged
    assert two_view_prompt_from_roi(small_volume, roi).box3d[2:6:3] == (3, 5)  # old: a 3-slice box, no warning
    flatten_box_to_view(roi, slice_view(scene, rotated_to_volume(small_volume, 0)), only_in_view=False)
    with pytest.raises(InputError, match="flat along"):
        two_view_prompt_from_roi(small_volume, roi)
    source = MODULE.read_text()
    assert "flatten_box_to_view(p.boxRoi, self.boxView" in source and "GetCursorPositionXYZ" not in source


# --- 6: the minimum Slicer is 5.10 -------------------------------------------------------------------
def test_minimum_slicer_is_5_10_everywhere():
    reason = dependencies.unsupported_reason((3, 9, 10))  # Slicer 5.8 ships Python 3.9
    assert reason is not None and "Slicer 5.10 or later" in reason and "3.9.10" in reason
    assert dependencies.unsupported_reason((3, 12, 4)) is None
    assert "unsupported_reason(" in MODULE.read_text() and "5.8 or later" not in MODULE.read_text()
    docs = (REPO / "docs" / "USING_IN_SLICER.md").read_text()
    assert "Slicer 5.10 or later" in docs and "5.8 or later" not in docs


# --- 7: a declined or failed install is a message, never a traceback --------------------------------
def test_failed_or_declined_install_gives_a_message():
    def broken():
        raise OSError("no route to host")

    ok, message = dependencies.run_install(broken, "PyTorch", {"surely_not_installed_pkg": "x"})
    assert not ok and "Installing PyTorch failed (OSError: no route to host)" in message
    ok, message = dependencies.run_install(lambda: False, "PyTorch", {"surely_not_installed_pkg": "x>=1"})
    assert not ok and message.startswith("PyTorch is not installed (x>=1); nothing was run")
    ok, message = dependencies.run_install(lambda: False, "NumPy", {"numpy": "numpy"})
    assert not ok and "(declined)" in message  # the dialog was declined
    ok, _ = dependencies.run_install(lambda: None, "NumPy", {"numpy": "numpy"})
    assert ok
    source = MODULE.read_text()
    assert source.count("dependencies.run_install(") == 2  # pip (all routes) and the PyTorch extension
    assert "installTorch" in source.split("def install():", 2)[2].split("def ")[0]


# --- 8: no shortcut Slicer already uses ----------------------------------------------------------------
def test_shortcuts_do_not_clash_with_slicer_and_match_the_panel():
    assert shortcuts.clashes() == {}
    assert shortcuts.normalized("ctrl+shift+t") == "Ctrl+Shift+T" and "Ctrl+Shift+T" in shortcuts.SLICER_SHORTCUTS
    shown = set(re.findall(r"\((Ctrl\+[^)]+)\)", UI.read_text()))
    assert shown == set(shortcuts.SHORTCUTS.values()), shown
    assert "SHORTCUTS = {" not in MODULE.read_text()  # one table, in the lib


# --- 9 / issue 12 item 12: Undo after manual corrections asks first -----------------------------------
def test_undo_after_manual_edit_reports_changed_since_run_and_needs_confirmation(scene, small_volume):
    shape = slicer.util.arrayFromVolume(small_volume).shape
    before_mask = np.zeros(shape, np.uint8)
    before_mask[4, 1:3, 1:3] = 1
    segmentation_node, target = add_segment(scene, small_volume, before_mask, "target")
    logic, _ = fake_logic(scene)
    logic.segment(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0), segmentation_node, target))
    assert logic.changed_since_run() is None  # untouched: Undo needs no question
    corrected = segment_array(segmentation_node, target, small_volume)
    corrected[4, 3:6, 3:6] = 0  # a manual correction in the Segment Editor
    edit = slicer.vtkSlicerSegmentationsModuleLogic
    edit.SetBinaryLabelmapToSegment(on_grid(small_volume, corrected), segmentation_node, target, edit.MODE_REPLACE)
    assert logic.changed_since_run() == "segment 'target' was edited after the run"
    state = scene_state(scene)
    with pytest.raises(ChangedSinceRun, match="edited after the run; Undo would discard that"):
        logic.undo()
    assert scene_state(scene) == state and logic.can_undo  # refused: nothing changed
    logic.undo(discard_changes=True)  # the user confirmed
    np.testing.assert_array_equal(segment_array(segmentation_node, target, small_volume), before_mask)
    source = MODULE.read_text()
    assert "changed_since_run()" in source and "confirmOkCancelDisplay" in source.split("def onUndo")[1][:600]


def test_undo_of_untouched_result_and_of_a_deleted_segment(scene, small_volume):
    logic, _ = fake_logic(scene)
    result = logic.segment(SegmentRequest(small_volume, BoxPrompt(4, (3, 3, 12, 9), 0)))
    node = result.segmentation_node
    node.GetSegmentation().RemoveSegment(result.segment_id)
    assert logic.changed_since_run() == "its segment was deleted"
    with pytest.raises(ChangedSinceRun):
        logic.undo()


# --- item 5: what a run overwrites is stated in the panel ----------------------------------------------
def test_write_policy_is_stated_in_the_panel():
    for overlap in (True, False):
        text = write_policy(overlap)
        assert "only the target segment" in text and "never changed" in text
    assert "left out" in write_policy(False) and "may overlap" in write_policy(True)
    names = {w.get("name") for w in ET.parse(UI).iter("widget")}
    assert "writePolicyLabel" in names and "writePolicyLabel.text = write_policy(" in MODULE.read_text()
