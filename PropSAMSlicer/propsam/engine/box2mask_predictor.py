"""Box -> 2D mask with Box2Mask, with the paper's normalization-window search.

Pass 1 predicts the box crop under a grid of windows (lower bound at the 5th-40th, upper at the
90th-95th percentile of the crop) in one batch and averages the probabilities. The optional
pass 2 (the paper's) re-derives the window from the 0.5/99.5 percentiles of pass 1's foreground
and predicts again.

Default chosen by benchmarks/bench_window_search.py on the evaluation objects (144 boxes,
results/window_search.md): a 3x2 grid without pass 2. Pass 2 lowered mean 2D Dice on tight boxes
with both the first and the shipped lite Box2Mask (0.847 -> 0.825, 0.852 -> 0.841); 3x2 is the
smallest grid reaching the best score (shipped model: 1x1 0.851, 3x2 and 5x3 0.852).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .device import autocast_for
from .intensity import apply_window, window_from_values
from .roi import box_roi, crop_to_model, paste_from_model, roi_grid
from .tta import mean_over, mean_turned_back, stack_turned


@dataclass(frozen=True)
class WindowSearch:
    lower_percentiles: tuple[float, ...] = (5.0, 20.0, 40.0)
    upper_percentiles: tuple[float, ...] = (90.0, 95.0)
    refine: bool = False

    def windows(self, values: np.ndarray) -> list[tuple[float, float]]:
        return [window_from_values(values, lo, hi) for lo in self.lower_percentiles for hi in self.upper_percentiles]


def _predict(net, plane: np.ndarray, roi, windows, size: int, device, orientations: int = 1) -> np.ndarray:
    grid = roi_grid(roi, size, plane.shape)
    raw = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))
    x = torch.stack([crop_to_model(apply_window(raw[None], lo, hi), grid)[0] for lo, hi in windows])[:, None]
    with torch.inference_mode(), autocast_for(device):
        found = net(stack_turned(x, orientations).to(device))
        logits = found["candidates"] if "candidates" in found else found["masks"][0]  # (N, candidates, S, S)
        prob = mean_turned_back(torch.sigmoid(logits.float()), orientations).mean(0)
        if "candidates" in found:  # the candidate whose quality, averaged over windows and turns, is highest
            best = int(mean_over(torch.sigmoid(found["quality"].float()), orientations).mean(0).argmax())
            prob = prob[best : best + 1]
    pasted, (r0, r1, c0, c1) = paste_from_model(prob, roi, plane.shape)
    out = np.zeros(plane.shape, np.float32)
    out[r0:r1, c0:c1] = pasted[0]
    return out


def box_probability(net, plane: np.ndarray, box: tuple[int, int, int, int], size: int, device,
                    search: WindowSearch = WindowSearch(), box_scale: float = 1.1, orientations: int = 1):
    """Pass 1 of box_to_mask: (probability on the plane's pixels, bool mask of the box's pixels)."""
    c0, r0, c1, r1 = box
    inside = np.zeros(plane.shape, bool)
    inside[r0 : r1 + 1, c0 : c1 + 1] = True
    roi = box_roi(box, box_scale)
    br0, br1, bc0, bc1 = roi.bounds(plane.shape)
    return _predict(net, plane, roi, search.windows(plane[br0:br1, bc0:bc1]), size, device, orientations), inside


def box_to_mask(net, plane: np.ndarray, box: tuple[int, int, int, int], size: int, device,
                search: WindowSearch = WindowSearch(), box_scale: float = 1.1, orientations: int = 1) -> np.ndarray:
    """plane (rows, cols) raw intensities; box (c0, r0, c1, r1) inclusive -> bool mask inside the box.
    orientations: average over this many in-plane orientations of each crop (engine/tta.py)."""
    prob, inside = box_probability(net, plane, box, size, device, search, box_scale, orientations)
    first = (prob > 0.5) & inside
    if not first.any():
        raise InputError("Box2Mask found no object in the box; draw the box tightly around the object or sketch a mask")
    if not search.refine:
        return first
    roi = box_roi(box, box_scale)
    refined = (_predict(net, plane, roi, [window_from_values(plane[first], 0.5, 99.5)], size, device, orientations) > 0.5) & inside
    return refined if refined.any() else first
