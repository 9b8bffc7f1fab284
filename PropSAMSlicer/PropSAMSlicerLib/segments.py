"""Reading and writing one segment on a volume's grid, its terminology, and exact snapshots for Undo.

Writing moves the target segment to a labelmap layer of its own first, so neither a shared layer
nor overlap can alter another segment; its labelmap then has the volume's exact geometry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from propsam.errors import InputError

from .geometry import (
    geometry_fingerprint, ijk_to_ras, image_to_array, matrix_to_numpy, node_name, oriented_image, parent_to_world,
)

RESULT_TAG = "PropSAM.ResultSHA256"  # digest of the mask PropSAM wrote: later edits are detectable
MODEL_TAG = "PropSAM.Model"
PROMPT_TAG = "PropSAM.Prompt"  # set on PropSAM's own prompt segments (the sketch): never an object of their own
TERMINOLOGY_TAG = "TerminologyEntry"
OWN_TAGS = (TERMINOLOGY_TAG, RESULT_TAG, MODEL_TAG)
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"


def segmentation_logic():
    import slicer

    return slicer.vtkSlicerSegmentationsModuleLogic


def mask_digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(mask) > 0).tobytes()).hexdigest()


def get_segment(segmentation_node, segment_id: str):
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id) if segment_id else None
    if segment is None:
        raise InputError(f"segmentation '{node_name(segmentation_node)}' has no segment with id {segment_id!r}")
    return segment


def check_same_space(segmentation_node, volume_node) -> None:
    """Both nodes must sit in the same coordinate system, else voxels would not line up."""
    if not np.allclose(parent_to_world(segmentation_node), parent_to_world(volume_node), atol=1e-6):
        raise InputError(
            f"segmentation '{node_name(segmentation_node)}' and volume '{node_name(volume_node)}' are under "
            "different transforms; put both under the same transform (or none)"
        )


def check_labelmap_source(segmentation_node) -> None:
    """PropSAM reads and writes voxels: the segmentation must store binary labelmaps."""
    segmentation = segmentation_node.GetSegmentation()
    # "master" is the name before Slicer 5.4
    is_image = getattr(segmentation, "IsSourceRepresentationImageData", None)
    is_image = is_image() if is_image is not None else segmentation.IsMasterRepresentationImageData()
    if segmentation.GetNumberOfSegments() and not is_image:
        raise InputError(
            f"segmentation '{node_name(segmentation_node)}' stores surfaces, not voxels; make binary labelmap its "
            "source representation (Segmentations module) or choose another segmentation"
        )


def segment_array(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment as a 0/1 uint8 array (Z, Y, X) on the volume's grid (nearest neighbour if it lies elsewhere)."""
    import slicer

    get_segment(segmentation_node, segment_id)
    check_same_space(segmentation_node, volume_node)
    check_labelmap_source(segmentation_node)
    labelmap = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    reference = oriented_image(volume_node)
    extent = labelmap.GetExtent()
    if labelmap.GetPointData().GetScalars() is None or extent[1] < extent[0]:
        return np.zeros(tuple(reversed(reference.GetDimensions())), np.uint8)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled, False, False
    ):
        raise InputError(f"cannot resample segment {segment_id!r} onto volume '{node_name(volume_node)}'")
    return (image_to_array(resampled) > 0).astype(np.uint8)


def other_segment_ids(segmentation_node, segment_id: str | None) -> list[str]:
    ids = [segmentation_node.GetSegmentation().GetNthSegmentID(i)
           for i in range(segmentation_node.GetSegmentation().GetNumberOfSegments())]
    return [i for i in ids if i != segment_id]


def is_prompt_segment(segmentation_node, segment_id: str) -> bool:
    return bool(get_tag(get_segment(segmentation_node, segment_id), PROMPT_TAG))


def other_object_ids(segmentation_node, segment_id: str | None) -> list[str]:
    """The other segments that hold objects: PropSAM's prompt segments (the sketch) are not objects."""
    return [i for i in other_segment_ids(segmentation_node, segment_id) if not is_prompt_segment(segmentation_node, i)]


def reference_geometry(segmentation_node) -> str:
    import slicer

    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    return segmentation_node.GetSegmentation().GetConversionParameter(name) or ""


def on_volume_lattice(geometry: str, volume_node, tol: float = 1e-3) -> bool:
    """True if a serialized reference geometry has the volume's voxels (same axes and spacing,
    origin a whole number of voxels away); its extent may differ."""
    import slicer

    image = slicer.vtkOrientedImageData()
    if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image, False):
        return False
    matrix = image_to_world(image)
    volume = ijk_to_ras(volume_node)
    if not np.allclose(matrix[:3, :3], volume[:3, :3], atol=tol * np.abs(volume[:3, :3]).max()):
        return False
    offset = np.linalg.solve(volume[:3, :3], matrix[:3, 3] - volume[:3, 3])
    return bool(np.allclose(offset, np.round(offset), atol=tol))


def image_to_world(image) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return matrix_to_numpy(matrix)


def is_empty(segmentation_node, segment_id: str) -> bool:
    import slicer

    labelmap = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    if labelmap.GetPointData().GetScalars() is None:
        return True
    return not image_to_array(labelmap).any()


def check_reference_geometry(segmentation_node, volume_node, segment_id: str | None) -> bool:
    """True if the segmentation's reference geometry must be (re)set to the volume's; refuses a
    segmentation whose other, non-empty segments were drawn on another grid."""
    current = reference_geometry(segmentation_node)
    if not current:
        return True
    if on_volume_lattice(current, volume_node):
        return False
    drawn = [i for i in other_segment_ids(segmentation_node, segment_id) if not is_empty(segmentation_node, i)]
    if drawn:
        raise InputError(
            f"segmentation '{node_name(segmentation_node)}' holds segments drawn on another volume's grid; "
            f"choose a segmentation made on '{node_name(volume_node)}' or create a new one"
        )
    return True


def terminology_entry(segment_type: str = "tissue") -> str:
    """Serialized terminology entry (category, type) from the DICOM-SEG presets, e.g. tissue, organ, lesion."""
    import slicer

    from propsam.dicom.codes import segment_type_codes

    category, property_type = segment_type_codes(segment_type)
    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(TERMINOLOGY_CONTEXT)
    set_region_context = getattr(entry, "SetRegionContextName", None) or entry.SetAnatomicContextName  # renamed in 5.8
    set_region_context(REGION_CONTEXT)
    for target, code in ((entry.GetCategoryObject(), category), (entry.GetTypeObject(), property_type)):
        target.SetCodingSchemeDesignator(code.scheme_designator)
        target.SetCodeValue(code.value)
        target.SetCodeMeaning(code.meaning)
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)


def terminology_codes(segment) -> tuple[tuple[str, str, str], tuple[str, str, str]] | None:
    """((scheme, value, meaning) of the category, same of the type) from the segment's entry, if any."""
    import slicer

    text = get_tag(segment, TERMINOLOGY_TAG)
    if not text:
        return None
    entry = slicer.vtkSlicerTerminologyEntry()
    if not slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(text, entry):
        return None
    codes = []
    for item in (entry.GetCategoryObject(), entry.GetTypeObject()):
        code = (item.GetCodingSchemeDesignator() or "", item.GetCodeValue() or "", item.GetCodeMeaning() or "")
        if not all(code):
            return None
        codes.append(code)
    return codes[0], codes[1]


def get_tag(segment, name: str) -> str | None:
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def shares_layer(segmentation, segment_id: str) -> bool:
    """True if other segments live in the same labelmap layer (then writing could touch them)."""
    return len(segmentation.GetSegmentIDsForLayer(segmentation.GetLayerIndex(segment_id))) > 1


def write_mask(segmentation_node, segment_id: str, mask: np.ndarray, volume_node) -> None:
    """Replace the segment's voxels by `mask` (Z, Y, X) on the volume's grid; other segments keep theirs."""
    segmentation = segmentation_node.GetSegmentation()
    get_segment(segmentation_node, segment_id)
    if shares_layer(segmentation, segment_id):
        segmentation.SeparateSegmentLabelmap(segment_id)
    logic = segmentation_logic()
    image = oriented_image(volume_node, mask)
    if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_REPLACE):
        raise InputError(f"Slicer refused to write segment {segment_id!r} of '{node_name(segmentation_node)}'")


@dataclass
class SegmentSnapshot:
    """Everything a run may change in one segmentation, to put back exactly."""

    segmentation_node_id: str
    segment_id: str
    existed: bool
    created_node: bool = False
    name: str = ""
    color: tuple = (0.0, 0.0, 0.0)
    tags: dict = field(default_factory=dict)  # OWN_TAGS -> value or None
    labelmap: object = None  # vtkOrientedImageData copy, None when the segment was empty
    reference_geometry: str = ""
    reference_volume_id: str | None = None
    volume_node_id: str | None = None  # the volume the run segmented (its grid reads the segment back)
    written_digest: str | None = None  # mask_digest of what the run wrote: later edits are detectable

    @classmethod
    def take(cls, segmentation_node, segment_id: str, created_node: bool = False) -> "SegmentSnapshot":
        import slicer

        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        snapshot = cls(
            segmentation_node.GetID(), segment_id, existed=False, created_node=created_node,
            reference_geometry=reference_geometry(segmentation_node),
            reference_volume_id=segmentation_node.GetNodeReferenceID(role),
        )
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id) if segment_id else None
        if segment is None:
            return snapshot
        snapshot.existed = True
        snapshot.name, snapshot.color = segment.GetName(), tuple(segment.GetColor())
        snapshot.tags = {tag: get_tag(segment, tag) for tag in OWN_TAGS}
        if not is_empty(segmentation_node, segment_id):
            labelmap = slicer.vtkOrientedImageData()
            segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
            snapshot.labelmap = labelmap
        return snapshot

    def restore(self, scene) -> None:
        import slicer

        node = scene.GetNodeByID(self.segmentation_node_id)
        if node is None:
            raise InputError("the segmentation of the last run was deleted; nothing to undo")
        if self.existed and node.GetSegmentation().GetSegment(self.segment_id) is None:
            raise InputError("the segment of the last run was deleted; nothing to undo")
        segmentation = node.GetSegmentation()
        if not self.existed:
            if self.segment_id and segmentation.GetSegment(self.segment_id) is not None:
                segmentation.RemoveSegment(self.segment_id)
        else:
            segment = get_segment(node, self.segment_id)
            logic = segmentation_logic()
            if self.labelmap is None:
                logic.ClearSegment(node, self.segment_id)
            else:
                if shares_layer(segmentation, self.segment_id):
                    segmentation.SeparateSegmentLabelmap(self.segment_id)
                logic.SetBinaryLabelmapToSegment(self.labelmap, node, self.segment_id, logic.MODE_REPLACE)
            segment.SetName(self.name)
            segment.SetColor(*self.color)
            for tag, value in self.tags.items():
                if value is None:
                    segment.RemoveTag(tag)
                else:
                    segment.SetTag(tag, value)
        name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        segmentation.SetConversionParameter(name, self.reference_geometry)
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        node.SetNodeReferenceID(role, self.reference_volume_id)
        if self.created_node and segmentation.GetNumberOfSegments() == 0:
            remove_node(scene, node)


    def changes_since_run(self, scene) -> str | None:
        """What happened to the run's result since it was written (None: it is exactly as written)."""
        node = scene.GetNodeByID(self.segmentation_node_id)
        if node is None:
            return "its segmentation was deleted"
        if node.GetSegmentation().GetSegment(self.segment_id) is None:
            return "its segment was deleted"
        volume = scene.GetNodeByID(self.volume_node_id) if self.volume_node_id else None
        if volume is None or volume.GetImageData() is None or self.written_digest is None:
            return None  # nothing to compare against: Undo restores the snapshot as before
        if mask_digest(segment_array(node, self.segment_id, volume)) != self.written_digest:
            name = node.GetSegmentation().GetSegment(self.segment_id).GetName()
            return f"segment '{name}' was edited after the run"
        return None


def remove_node(scene, node) -> None:
    """Remove a displayable node with its display nodes (the scene alone would leave them behind)."""
    display_ids = [node.GetNthDisplayNodeID(i) for i in range(node.GetNumberOfDisplayNodes())]
    scene.RemoveNode(node)
    for display_id in display_ids:
        display = scene.GetNodeByID(display_id)
        if display is not None:
            scene.RemoveNode(display)


def volume_unchanged(volume_node, fingerprint: tuple) -> bool:
    if volume_node is None or volume_node.GetScene() is None or volume_node.GetImageData() is None:
        return False
    return geometry_fingerprint(volume_node) == fingerprint
