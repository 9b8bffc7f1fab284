"""Box2Mask: the box's ROI crop in, foreground logits at every decoder stage out.

Input is one grayscale channel (the windowed CT/MR intensities of the crop): medical slices
have no colour, and a single channel keeps the first conv a third of an RGB one.
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

    def forward(self, image: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """image (B, 1, S, S) in [0, 1] -> {"masks": [logits (B, 1, s, s) per stage, full res first]}."""
        _, logits = self.decoder(self.encoder(image))
        return {"masks": logits}
