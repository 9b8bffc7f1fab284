"""Box2Mask: the box's ROI crop in, foreground logits at every decoder stage out.

Input is one grayscale channel (the windowed CT/MR intensities of the crop): medical slices
have no colour, and a single channel keeps the first conv a third of an RGB one.

With `mask_candidates` C > 1 (issue 9.4; as segment-anything's multimask output), a box that
frames several structures (a core inside a tumour, a dark cavity in a bright wall) may be read
C ways: the main mask plus C - 1 alternatives from a 1x1 head on the last decoder features, and
for each a predicted quality (the Dice it expects against the object), read from the features
pooled inside and outside that mask. The engine keeps the candidate of highest quality.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import NetworkConfig
from .unet import Decoder, Encoder


class Box2Mask(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config.validate()
        self.encoder = Encoder(config.in_channels, config.channels)
        self.decoder = Decoder(config.channels)
        self.alternatives = None
        if config.mask_candidates > 1:
            width = config.channels[0]
            self.alternatives = nn.Conv2d(width, config.mask_candidates - 1, 1)
            self.quality = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU(inplace=True), nn.Linear(width, 1))

    def forward(self, image: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """image (B, 1, S, S) in [0, 1] -> {"masks": [logits (B, 1, s, s) per stage, full res first]};
        with candidates also "candidates": logits (B, C, S, S), the main mask first, and
        "quality": (B, C) logits of each candidate's expected Dice."""
        features, logits = self.decoder(self.encoder(image))
        out = {"masks": logits}
        if self.alternatives is not None:
            candidates = torch.cat([logits[0], self.alternatives(features)], dim=1)
            weight = torch.sigmoid(candidates.float()).to(features.dtype)  # (B, C, S, S)
            inside = torch.einsum("bfhw,bchw->bcf", features, weight) / (weight.sum((2, 3))[..., None] + 1.0)
            outside = torch.einsum("bfhw,bchw->bcf", features, 1 - weight) / ((1 - weight).sum((2, 3))[..., None] + 1.0)
            out["candidates"] = candidates
            out["quality"] = self.quality(torch.cat([inside, outside], dim=2))[..., 0]
        return out
