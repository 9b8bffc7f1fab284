"""Test doubles with the networks' interfaces whose answers are known exactly.

ThresholdPropMask marks every windowed voxel above a level as object, so on a bright phantom on
a dark background the engine's own work (ROI crop and paste-back, both directions, stopping,
axis handling, geometry) can be checked against the true shape.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class ThresholdPropMask(nn.Module):
    def __init__(self, level: float = 0.02, with_presence: bool = True, in_channels: int = 1, reads: int = 0):
        super().__init__()
        self.level = level
        self.with_presence = with_presence
        self.calls = 0
        self.config = SimpleNamespace(in_channels=in_channels)  # the engine reads the input layout here
        self.reads = reads  # of a 2.5D input's channels (behind, the slice, ahead), the one thresholded

    def forward(self, guide_image, guide_mask, adjacent):
        self.calls += 1
        adjacent = adjacent[:, :, self.reads : self.reads + 1]
        logits = 40 * (adjacent - self.level)
        out = {"masks": [logits]}
        if self.with_presence:
            out["presence"] = torch.where((adjacent > self.level).flatten(2).any(2), 5.0, -5.0)
        return out


class NearSightedPropMask(ThresholdPropMask):
    """ThresholdPropMask that sees the object only in the slice next to its guide: farther slices
    come back empty and absent, as a faint tail may look from a far guide."""

    def forward(self, guide_image, guide_mask, adjacent):
        out = super().forward(guide_image, guide_mask, adjacent)
        out["masks"][0][:, 1:] = -40.0
        out["presence"][:, 1:] = -5.0
        return out


class ThresholdBox2Mask(nn.Module):
    def __init__(self, level: float = 0.3):
        super().__init__()
        self.level = level

    def forward(self, image):
        return {"masks": [40 * (image - self.level)]}
