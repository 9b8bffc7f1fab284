"""Corrections of a PropSAM segment in Slicer: re-propagate from an edited or boxed slice, stop, continue.

Qt-free, like logic.py. A CorrectionSession belongs to one finished run (its job and RunResult).
Each correction reads the segment as it is now (so hand edits on other slices are kept), runs
the engine's `apply_correction` in a worker thread, and writes the result into that segment
alone, as one step on the run logic's undo stack: the module's Undo button takes it back, and
the session notices and steps back too. Per-slice confidence comes with every result for the
confidence strip; slices are numbered along the result's propagation axis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from propsam.errors import Cancelled, InputError

from .geometry import check_volume_node, geometry_fingerprint, matrix_to_numpy, node_name, volume_from_node, world_to_ijk
from .prompts import box_prompt_from_roi, view_axis
from .segments import (
    RESULT_TAG, SegmentSnapshot, check_same_space, get_segment, mask_digest, other_segment_ids, segment_array,
    volume_unchanged, write_mask,
)
from .worker import FINISHED, SegmentationJob


@dataclass
class _Step:
    snapshot: SegmentSnapshot  # on the run logic's undo stack
    previous: object  # the engine result before this correction
    correction: object


class CorrectionSession:
    def __init__(self, core, job: SegmentationJob, run):
        """core: PropSAMLogic; job: the finished run's job; run: the RunResult its apply returned."""
        if job.state != FINISHED or job.result is None:
            raise InputError("corrections need a finished PropSAM run")
        self.core = core
        self.request = job.pending.request
        self.volume_node = self.request.volume_node
        self.segmentation_node, self.segment_id = run.segmentation_node, run.segment_id
        self.result = replace(job.result, mask=np.array(run.mask, np.uint8))  # what was written
        self.steps: list[_Step] = []
        self.job: SegmentationJob | None = None

    # --- what the user does ---------------------------------------------------------------------
    @property
    def axis(self) -> int:
        return self.result.axis

    @property
    def corrections(self) -> list:
        self._sync()
        return [s.correction for s in self.steps]

    def edited_slice(self, slice_index: int):
        """'Re-propagate from this slice': the segment's slice as the user left it."""
        from propsam.engine.corrections import Correction

        mask = np.take(self._current_mask(), slice_index, axis=self.axis) > 0
        return Correction("mask", slice_index, self.axis, mask=mask)

    def boxed_slice(self, roi_node, slice_node=None):
        """'Re-propagate from this box': a box drawn on one slice; Box2Mask makes its mask."""
        from propsam.engine.corrections import Correction

        prompt = box_prompt_from_roi(self.volume_node, roi_node, slice_node)
        return Correction("box", prompt.slice_index, prompt.axis, box=prompt.box)

    def stop_here(self, slice_index: int, direction: int | None = None):
        from propsam.engine.corrections import Correction

        return Correction("stop", slice_index, self.axis, direction=direction)

    def continue_past(self, slice_index: int, direction: int | None = None):
        from propsam.engine.corrections import Correction

        return Correction("continue", slice_index, self.axis, direction=direction)

    # --- running (as PropSAMLogic.start/apply) -------------------------------------------------------
    def start(self, correction) -> SegmentationJob:
        """Check the correction and start it in a worker thread; nothing in the scene changes."""
        from propsam.engine.corrections import apply_correction
        from propsam.engine.segmenter import SegmentOptions

        self._sync()
        if (self.job is not None and not self.job.done) or (self.core.job is not None and not self.core.job.done):
            raise InputError("a segmentation or correction is already running; wait for it or cancel it")
        check_volume_node(self.volume_node)
        current = self._current_mask()
        volume = volume_from_node(self.volume_node)
        base = replace(self.result, mask=current)
        correction.validate(volume.shape, base.axis, base.slice_index)
        options = SegmentOptions(propagation=self.request.propagation_options())
        model, device, load = str(self.request.model), self.request.device, self.core.load_segmenter

        def work(status, progress, cancel):
            status(f"Correcting slice {correction.slice_index} ({correction.kind})...")
            return apply_correction(load(model, device), volume, base, correction, options, progress, cancel)

        job = SegmentationJob(work, description=f"correction of '{node_name(self.segmentation_node)}'")
        job.pending = (correction, geometry_fingerprint(self.volume_node), mask_digest(current))
        self.job = job
        return job.start()

    def apply(self, job: SegmentationJob):
        """Write a finished correction into the segment as one undo step (main thread); returns the engine result."""
        if job.cancelled:
            raise Cancelled("correction cancelled; nothing was changed")
        if job.state != FINISHED:
            raise job.error if job.error is not None else InputError("the correction has not finished yet")
        correction, fingerprint, digest = job.pending
        if not volume_unchanged(self.volume_node, fingerprint):
            raise InputError(f"volume '{node_name(self.volume_node)}' was removed or changed its grid while correcting; "
                             "nothing was changed")
        if mask_digest(self._current_mask()) != digest:
            raise InputError("the segment was edited while the correction ran; nothing was changed, correct again")
        mask = np.array(job.result.mask, np.uint8)
        if not self.request.allow_overlap:
            for other in other_segment_ids(self.segmentation_node, self.segment_id):
                mask[segment_array(self.segmentation_node, other, self.volume_node) > 0] = 0
        snapshot = SegmentSnapshot.take(self.segmentation_node, self.segment_id)
        try:
            write_mask(self.segmentation_node, self.segment_id, mask, self.volume_node)
            get_segment(self.segmentation_node, self.segment_id).SetTag(RESULT_TAG, mask_digest(mask))
        except Exception:
            snapshot.restore(self.core.scene)
            raise
        self.core.undo_stack.append(snapshot)
        self.steps.append(_Step(snapshot, self.result, correction))
        self.result = replace(job.result, mask=mask)
        return self.result

    def correct(self, correction):
        """Blocking correction (scripts, tests): start, wait, apply."""
        job = self.start(correction)
        job.wait()
        return self.apply(job)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    # --- confidence and views ----------------------------------------------------------------------
    def confidence(self):
        """Per-slice confidence of the current result (engine.confidence.SliceConfidence)."""
        from propsam.engine.confidence import slice_confidence

        self._sync()
        stats = self.result.stats
        return slice_confidence(self.result.mask, self.axis, stats.presence, stats.agreement)

    def slice_in_view(self, slice_node) -> int:
        """The slice (along the result's axis) a slice view shows; the view must lie on that axis."""
        axis, _ = view_axis(self.volume_node, slice_node)
        if axis != self.axis:
            raise InputError(f"view '{node_name(slice_node)}' shows slices along {'zyx'[axis]}, the segment was "
                             f"propagated along {'zyx'[self.axis]}; correct it in a view of that axis")
        centre = matrix_to_numpy(slice_node.GetSliceToRAS())[:, 3]
        ijk = world_to_ijk(self.volume_node) @ centre
        index = int(np.floor(ijk[2 - axis] + 0.5))
        depth = self.volume_node.GetImageData().GetDimensions()[2 - axis]
        if not 0 <= index < depth:
            raise InputError(f"view '{node_name(slice_node)}' is outside the volume (slice {index}, volume 0..{depth - 1})")
        return index

    def jump_to_slice(self, slice_node, slice_index: int) -> None:
        """Move a view to the slice (e.g. a click on the confidence strip), keeping its orientation."""
        ijk = np.zeros(4)
        ijk[3] = 1.0
        dims = self.volume_node.GetImageData().GetDimensions()
        ijk[:3] = [(d - 1) / 2 for d in dims]
        ijk[2 - self.axis] = slice_index
        world = np.linalg.inv(world_to_ijk(self.volume_node)) @ ijk
        slice_node.JumpSliceByOffsetting(*map(float, world[:3]))

    # --- helpers ------------------------------------------------------------------------------------
    def _current_mask(self) -> np.ndarray:
        if self.segmentation_node.GetScene() is not self.core.scene:
            raise InputError(f"segmentation '{node_name(self.segmentation_node)}' was deleted; run PropSAM again")
        get_segment(self.segmentation_node, self.segment_id)
        check_same_space(self.segmentation_node, self.volume_node)
        return segment_array(self.segmentation_node, self.segment_id, self.volume_node)

    def _sync(self) -> None:
        """Step back over corrections that the module's Undo has taken back."""
        while self.steps and not any(s is self.steps[-1].snapshot for s in self.core.undo_stack):
            self.result = self.steps.pop().previous
