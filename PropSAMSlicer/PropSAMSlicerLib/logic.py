"""PropSAMLogic: segment a volume node from a prompt into a segment, in the background, with Undo.

Qt-free and widget-free: it takes the scene and nodes as arguments. Everything that reads MRML
(the voxel copy, the prompt's checks) happens in `start` on the caller's thread, and everything
that writes MRML happens in `apply`, also on the caller's thread; the engine runs in between in
a worker thread. So a cancelled or failed run leaves the scene exactly as it was.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from propsam.errors import Cancelled, InputError

from .geometry import check_volume_node, geometry_fingerprint, node_name, volume_from_node
from .segments import (
    MODEL_TAG, RESULT_TAG, TERMINOLOGY_TAG, SegmentSnapshot, check_labelmap_source, check_reference_geometry,
    check_same_space, get_segment, mask_digest, other_object_ids, segment_array, terminology_entry, volume_unchanged,
    write_mask,
)
from .worker import FINISHED, SegmentationJob

_loaded_models: set[tuple[str, str]] = set()
_load_lock = threading.Lock()


def load_cached_segmenter(model: str, device: str):
    """The engine's process-wide cache: the networks are read once per (model, device)."""
    from propsam.engine.segmenter import cached_segmenter

    with _load_lock:
        return cached_segmenter(model, device)


def model_is_loaded(model: str, device: str) -> bool:
    return (model, device) in _loaded_models


class ChangedSinceRun(InputError):
    """Undo was asked for a result that was edited after the run (the panel asks the user)."""


@dataclass
class SegmentRequest:
    volume_node: object
    prompt: object  # propsam.engine.prompts BoxPrompt / MaskPrompt / TwoViewBoxPrompt
    segmentation_node: object = None  # None: a new segmentation node is created
    segment_id: str | None = None  # None: a new segment named segment_name
    segment_name: str = "PropSAM"
    segment_type: str = "tissue"  # terminology preset (tissue, organ, lesion, tumor, mass)
    model: str = "lite"  # lite, paper, or a model folder / manifest.json
    device: str = "auto"
    thickness_mm: float = 20.0
    context: float = 1.5
    allow_overlap: bool = True  # False: voxels already in another segment are left out of the result
    leak_limit: float | None = None  # a slice larger than this x the prompt's ends the object; 0: off; None: the engine's

    def propagation_options(self):
        """The engine's propagation options for this request (runs and corrections alike)."""
        from propsam.engine.propagation import user_options

        return user_options(self.thickness_mm, self.context, self.leak_limit)


def panel_leak_limit(value: float) -> float:
    """The panel's leak-limit spin box shows its minimum, 1, as "off" (a limit of 1x would end
    any object larger than its prompt slice): 1 -> 0 (off), anything above -> that ratio."""
    return 0.0 if value <= 1.0 else float(value)


def write_policy(allow_overlap: bool) -> str:
    """What a run overwrites, in the panel's words (PropSAM writes only its target segment)."""
    if allow_overlap:
        return ("Writes only the target segment; other segments are never changed, and the result may overlap "
                "them. The Segment Editor's masking and overwrite settings are not applied.")
    return ("Writes only the target segment; other segments are never changed, and voxels they already hold are "
            "left out of the result. The Segment Editor's masking and overwrite settings are not applied.")


@dataclass
class RunResult:
    segmentation_node: object
    segment_id: str
    mask: np.ndarray  # what was written, (Z, Y, X) on the volume's grid
    seconds: float
    slices: tuple[int, int]  # first and last slice of the result along the prompt's axis
    axis: int
    stop_reasons: dict = field(default_factory=dict)  # direction (-1 lower, +1 upper) -> why that end is there

    def status(self) -> str:
        """The panel's line after a run: time, size, slices, and why each end is where it is."""
        from propsam.engine.propagation import LEAK, ends_text

        lo, hi = self.slices
        text = f"Done in {self.seconds:.1f} s: {int(self.mask.sum())} voxels on slices {lo}..{hi} ({ends_text(self.stop_reasons)})."
        if LEAK in self.stop_reasons.values():
            text += " If the object goes on, raise Advanced > Leak limit, or correct with Continue."
        return text


@dataclass
class _Pending:
    """What `apply` needs besides the engine's result."""

    request: SegmentRequest
    fingerprint: tuple  # the volume's grid when its voxels were copied


class PropSAMLogic:
    def __init__(self, scene, load_segmenter: Callable | None = None):
        self.scene = scene
        self.load_segmenter = load_segmenter or load_cached_segmenter
        self.undo_stack: list[SegmentSnapshot] = []
        self.job: SegmentationJob | None = None

    # --- running ----------------------------------------------------------------------------
    def start(self, request: SegmentRequest) -> SegmentationJob:
        """Check the request and start the engine in a worker thread; nothing in the scene changes."""
        from propsam.engine.propagation import check_leak_limit
        from propsam.engine.segmenter import SegmentOptions

        if self.job is not None and not self.job.done:
            raise InputError("a segmentation is already running; wait for it or cancel it")
        check_volume_node(request.volume_node)
        if not 0 < request.thickness_mm <= 200:
            raise InputError(f"propagation thickness must be within (0, 200] mm, got {request.thickness_mm}")
        if not 1.0 <= request.context <= 4.0:
            raise InputError(f"context must be within 1..4, got {request.context}")
        check_leak_limit(request.leak_limit)
        self._check_target(request)
        volume = volume_from_node(request.volume_node)
        request.prompt.validate(volume.shape)
        options = SegmentOptions(propagation=request.propagation_options())
        model, device = str(request.model), request.device

        def work(status, progress, cancel):
            if not model_is_loaded(model, device):
                status(f"Loading model {model} on {device} (first run; later runs reuse it)...")
            segmenter = self.load_segmenter(model, device)
            _loaded_models.add((model, device))
            cancel.raise_if_cancelled()
            status("Segmenting...")
            return segmenter.segment(volume, request.prompt, options, progress=progress, cancel=cancel)

        job = SegmentationJob(work, description=f"segmentation of '{node_name(request.volume_node)}'")
        job.pending = _Pending(request, geometry_fingerprint(request.volume_node))
        self.job = job
        return job.start()

    def apply(self, job: SegmentationJob) -> RunResult:
        """Write a finished job's result into its segment (main thread); raise its error otherwise."""
        if job.cancelled:
            raise Cancelled("segmentation cancelled; nothing was changed")
        if job.state != FINISHED:
            raise job.error if job.error is not None else InputError("the segmentation has not finished yet")
        request = job.pending.request
        if not volume_unchanged(request.volume_node, job.pending.fingerprint):
            raise InputError(
                f"volume '{node_name(request.volume_node)}' was removed or changed its grid while segmenting; "
                "the result was discarded and nothing was changed"
            )
        self._check_target(request)
        result = job.result
        mask = np.array(result.mask, np.uint8)  # a copy: the job's result stays as the engine gave it
        if request.segmentation_node is not None and not request.allow_overlap:
            for other in other_object_ids(request.segmentation_node, request.segment_id):
                mask[segment_array(request.segmentation_node, other, request.volume_node) > 0] = 0
        if not mask.any():
            raise InputError(
                "PropSAM found no object for this prompt (the result is empty); nothing was changed. "
                "Draw the box tightly around the object, or sketch it"
            )
        segmentation_node, created = request.segmentation_node, False
        if segmentation_node is None:
            segmentation_node, created = self._new_segmentation(request.volume_node), True
        segment_id = request.segment_id
        snapshot = SegmentSnapshot.take(segmentation_node, segment_id, created_node=created)
        snapshot.volume_node_id, snapshot.written_digest = request.volume_node.GetID(), mask_digest(mask)
        set_reference = check_reference_geometry(segmentation_node, request.volume_node, segment_id)
        try:
            if set_reference:
                segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(request.volume_node)
            if segment_id is None:
                segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", request.segment_name)
                snapshot.segment_id = segment_id
            write_mask(segmentation_node, segment_id, mask, request.volume_node)
            segment = get_segment(segmentation_node, segment_id)
            segment.SetTag(TERMINOLOGY_TAG, terminology_entry(request.segment_type))
            segment.SetTag(RESULT_TAG, mask_digest(mask))
            segment.SetTag(MODEL_TAG, str(request.model))
        except Exception:
            snapshot.restore(self.scene)
            raise
        self.undo_stack.append(snapshot)
        stats = result.stats
        return RunResult(segmentation_node, segment_id, mask, result.seconds, tuple(stats.extent), result.axis,
                         dict(stats.stop_reasons))

    def segment(self, request: SegmentRequest, progress: Callable | None = None) -> RunResult:
        """Blocking run (scripts, tests): start, wait, apply."""
        job = self.start(request)
        job.wait()
        if progress is not None:
            for event in job.poll():
                if event[0] == "progress":
                    progress(event[1], event[2])
        return self.apply(job)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    # --- undo -------------------------------------------------------------------------------
    @property
    def can_undo(self) -> bool:
        return bool(self.undo_stack)

    def changed_since_run(self) -> str | None:
        """What was done to the last run's result since it was written (None when untouched, or
        nothing to undo); Undo would throw that away, so the panel asks first."""
        return self.undo_stack[-1].changes_since_run(self.scene) if self.undo_stack else None

    def undo(self, discard_changes: bool = False) -> None:
        """Put the last run's segment (and reference geometry) back exactly as it was. If the result
        was changed since the run, refuse unless `discard_changes` (the user confirmed)."""
        if not self.undo_stack:
            raise InputError("nothing to undo")
        changed = self.changed_since_run()
        if changed is not None and not discard_changes:
            raise ChangedSinceRun(f"{changed}; Undo would discard that and restore the segment as it was before the run")
        self.undo_stack.pop().restore(self.scene)

    # --- helpers ----------------------------------------------------------------------------
    def _check_target(self, request: SegmentRequest) -> None:
        node = request.segmentation_node
        if node is None:
            if request.segment_id is not None:
                raise InputError("a target segment was given without its segmentation")
            return
        if node.GetScene() is not self.scene:
            raise InputError(f"segmentation '{node_name(node)}' is not in the scene (was it deleted?)")
        if request.segment_id is not None:
            get_segment(node, request.segment_id)
        check_same_space(node, request.volume_node)
        check_labelmap_source(node)
        check_reference_geometry(node, request.volume_node, request.segment_id)

    def _new_segmentation(self, volume_node):
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{node_name(volume_node)} PropSAM")
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        return node
