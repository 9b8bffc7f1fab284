"""Qt-free back end of the PropSAMSlicer module: MRML nodes <-> the propsam engine.

Everything here takes the scene and nodes as arguments and never touches widgets, so it runs
headless on the MRML classes of the slicer-core package as well as inside Slicer.
"""

from .logic import (
    ChangedSinceRun, PropSAMLogic, RunResult, SegmentRequest, model_is_loaded, panel_leak_limit, write_policy,
)
from .prompts import (
    box_prompt_from_roi, constrain_roi_to_slice, flatten_box_to_view, mask_prompt_from_array, two_view_prompt_from_roi,
    view_axis,
)
from .worker import POLL_INTERVAL_MS, WAIT_SLICE_S, SegmentationJob

__all__ = [
    "POLL_INTERVAL_MS", "WAIT_SLICE_S", "ChangedSinceRun", "PropSAMLogic", "RunResult", "SegmentRequest",
    "SegmentationJob", "box_prompt_from_roi", "constrain_roi_to_slice", "flatten_box_to_view", "mask_prompt_from_array",
    "model_is_loaded", "panel_leak_limit", "two_view_prompt_from_roi", "view_axis", "write_policy",
]
