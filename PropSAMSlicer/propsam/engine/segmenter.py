"""The predictor: owns the loaded networks and turns (volume, prompt) into a 3D mask.

Like segment-anything's predictor it holds the preprocessing and the device; the networks in
`propsam.modeling` know nothing of volumes or prompts.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import InputError
from ..io.volume import Volume, check_finite
from ..weights import load_bundle
from .box2mask_predictor import WindowSearch, box_to_mask
from .content_view import box_region, content_orientation, turn_spacing
from .control import CancelToken, ProgressCallback
from .device import default_threads, pick_device
from .orientation import canonical_flips, flip_array, flip_plane, flip_prompt
from .prompts import BoxPrompt, MaskPrompt, Prompt, TwoViewBoxPrompt
from .propagation import PropagationOptions, PropagationStats, propagate
from .roi import mask_bbox
from .tta import ORIENTATIONS, TestTimeAugmentation, propmask_orientations


@dataclass(frozen=True)
class SegmentOptions:
    propagation: PropagationOptions = PropagationOptions()
    window_search: WindowSearch = WindowSearch()
    box_scale: float = 1.1
    tta: TestTimeAugmentation = TestTimeAugmentation()  # in-plane orientations averaged per network


@dataclass
class SegmentResult:
    mask: np.ndarray  # uint8 (Z, Y, X) on the input grid
    prompt_mask: np.ndarray  # 2D bool mask used as the first guide
    axis: int
    slice_index: int
    seconds: float
    stats: PropagationStats = field(default_factory=PropagationStats)


def check_volume(volume: Volume) -> None:
    if volume.array.ndim != 3 or min(volume.shape) < 1:
        raise InputError(f"expected a 3D image, got shape {volume.array.shape}")
    check_finite(volume.array, "volume")
    if float(volume.array.max()) == float(volume.array.min()):
        raise InputError("image is constant (every voxel has the same value); there is nothing to segment")
    if min(volume.spacing) <= 0:
        raise InputError(f"image spacing {volume.spacing} must be positive")


class Segmenter:
    def __init__(self, config: ModelConfig, nets: dict, device: torch.device, manifest: dict | None = None):
        self.config = config
        self.box2mask = nets["box2mask"]
        self.propmask = nets["propmask"]
        self.device = device
        self.manifest = manifest or {}

    @classmethod
    def load(cls, model: str = "lite", device: str = "auto", threads: int | None = None) -> "Segmenter":
        """threads: CPU threads for torch (default: device.default_threads; Slicer may keep one for its GUI)."""
        dev = pick_device(device)
        if dev.type == "cpu":
            torch.set_num_threads(threads or default_threads())
        config, manifest, nets = load_bundle(model, str(dev))
        return cls(config, nets, dev, manifest)

    def segment(
        self, volume: Volume, prompt: Prompt, options: SegmentOptions = SegmentOptions(),
        progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
    ) -> SegmentResult:
        start = time.perf_counter()
        check_volume(volume)
        prompt.validate(volume.shape)
        flips = canonical_flips(volume.direction)
        result = self._segment_canonical(flip_array(volume.array, flips), volume.spacing,
                                         flip_prompt(prompt, flips, volume.shape), options, progress, cancel)
        result.mask = np.ascontiguousarray(flip_array(result.mask, flips))
        result.prompt_mask = np.ascontiguousarray(flip_plane(result.prompt_mask, result.axis, flips))
        if flips[result.axis]:
            last = volume.shape[result.axis] - 1
            result.slice_index = last - result.slice_index
            result.stats.mirror(last)
        result.seconds = time.perf_counter() - start
        return result

    def _segment_canonical(self, array: np.ndarray, spacing_xyz, prompt: Prompt, options: SegmentOptions,
                           progress: ProgressCallback | None, cancel: CancelToken | None) -> SegmentResult:
        bounds = None
        if isinstance(prompt, TwoViewBoxPrompt):
            x0, y0, z0, x1, y1, z1 = prompt.box3d
            bounds = (z0, z1)
            prompt = prompt.axial_prompt()
        axis = prompt.axis
        moved = np.moveaxis(array, axis, 0)
        spacing_zyx = tuple(spacing_xyz[::-1])
        spacing = (spacing_zyx[axis],) + tuple(spacing_zyx[a] for a in range(3) if a != axis)
        plane = np.asarray(moved[prompt.slice_index], dtype=np.float32)
        if not isinstance(prompt, (BoxPrompt, MaskPrompt)):
            raise InputError(f"unknown prompt type {type(prompt).__name__}")
        region = box_region(prompt.box) if isinstance(prompt, BoxPrompt) else mask_bbox(np.asarray(prompt.mask) > 0)
        view = content_orientation(plane, region) if options.tta.content_view else ORIENTATIONS[0]
        turned, plane = view.apply(moved), view.apply(plane)
        if isinstance(prompt, BoxPrompt):
            if cancel is not None:
                cancel.raise_if_cancelled()
            guide = box_to_mask(self.box2mask, plane, view.box(prompt.box, moved.shape[1:]), self.config.box2mask.image_size,
                                self.device, options.window_search, options.box_scale, options.tta.box2mask)
        else:
            guide = view.apply(np.asarray(prompt.mask) > 0)
        mask, stats = propagate(
            self.propmask, self.config.propmask.image_size, turned, turn_spacing(view, spacing), prompt.slice_index, guide,
            self.device, options.propagation, bounds=bounds, progress=progress, cancel=cancel,
            orientations=propmask_orientations(options.tta, self.device),
        )
        mask, guide = view.invert(mask), view.invert(guide)
        mask = np.moveaxis(mask, 0, axis)
        if bounds is not None:  # the two-view box bounds the object in every direction
            box_only = np.zeros_like(mask)
            box_only[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1] = 1
            mask &= box_only
        return SegmentResult(mask, guide, axis, prompt.slice_index, 0.0, stats)


@functools.lru_cache(maxsize=2)
def cached_segmenter(model: str = "lite", device: str = "auto") -> Segmenter:
    """Load once per (model, device); Slicer keeps the networks between runs this way."""
    return Segmenter.load(model, device)
