"""The sketch prompt: a segment painted on one slice with Paint/Erase, never touching other segments.

The panel shows a Segment Editor reduced to Paint and Erase. Its editor node is PropSAM's own,
found by singleton tag in whatever scene is current (so it survives File > Close Scene, as
Slicer's own Segment Editor node does), and set to overwrite nothing with editing allowed
everywhere: a stroke only ever adds to (or erases from) the sketch segment itself.
"""

from __future__ import annotations

from .segments import PROMPT_TAG, get_segment

EDITOR_SINGLETON_TAG = "PropSAMSketch"
SKETCH_SEGMENT_NAME = "PropSAM sketch"
SKETCH_COLOR = (1.0, 0.85, 0.0)
SKETCH_EFFECTS = ["Paint", "Erase"]


def sketch_editor_node(scene):
    """PropSAM's segment editor node in `scene`, created on first use and configured every time
    (a node saved in a scene by another version may carry other settings)."""
    import slicer

    node = scene.GetSingletonNode(EDITOR_SINGLETON_TAG, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = slicer.vtkMRMLSegmentEditorNode()
        node.SetName("PropSAM sketch editor")
        node.SetSingletonTag(EDITOR_SINGLETON_TAG)
        node.SetHideFromEditors(True)
        node = scene.AddNode(node)
    node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
    node.SetSourceVolumeIntensityMask(False)
    return node


def start_sketch(segmentation_node, sketch_id: str | None) -> str:
    """An empty sketch segment (the previous one cleared, or a new one), tagged as a prompt so that
    runs never treat it as another object. Returns its id."""
    import slicer

    segmentation = segmentation_node.GetSegmentation()
    if sketch_id and segmentation.GetSegment(sketch_id) is not None:
        slicer.vtkSlicerSegmentationsModuleLogic.ClearSegment(segmentation_node, sketch_id)
    else:
        sketch_id = segmentation.AddEmptySegment("", SKETCH_SEGMENT_NAME, list(SKETCH_COLOR))
    get_segment(segmentation_node, sketch_id).SetTag(PROMPT_TAG, "sketch")
    return sketch_id
