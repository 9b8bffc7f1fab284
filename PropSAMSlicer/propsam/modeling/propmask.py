"""PropMask: carry a guiding slice's mask to K adjacent slices in one pass.

One image encoder serves the guide and the adjacent slices; a separate mask encoder reads the
guiding mask. At the lowest `attention_stages` stages cross-attention (Q adjacent, K guide,
V guide mask) is added to the adjacent slice's skip; higher skips pass through unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import NetworkConfig
from .attention import MaskCrossAttention
from .unet import Decoder, Encoder


class PropMask(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config.validate()
        channels = config.channels
        self.image_encoder = Encoder(config.in_channels, channels)
        self.mask_encoder = Encoder(1, channels)
        self.first_attention_stage = config.stages - config.attention_stages
        self.attention = nn.ModuleList(
            MaskCrossAttention(c, config.attention_head_dim, config.positional_encoding)
            for c in channels[self.first_attention_stage :]
        )
        self.decoder = Decoder(channels)
        bottleneck = channels[-1]
        self.presence = nn.Linear(2 * bottleneck, 1) if config.presence_head else None
        self.position = nn.Linear(bottleneck, 1) if config.position_head else None
        if config.boundary_head:
            self.boundary = nn.Conv2d(channels[0], 1, 1)
            self.fuse = nn.Conv2d(2, 1, 1)
            with torch.no_grad():  # start as "mask logits unchanged"
                self.fuse.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
                self.fuse.bias.zero_()
        else:
            self.boundary = None

    def forward(self, guide_image: torch.Tensor, guide_mask: torch.Tensor, adjacent: torch.Tensor) -> dict:
        """guide_image, guide_mask (B, 1, S, S); adjacent (B, K, 1, S, S), all in [0, 1].

        Returns "masks": logits (B, K, 1, s, s) per decoder stage (full resolution first), and
        where configured "presence" (B, K) logits, "boundary" (B, K, 1, S, S) logits and
        "position" (B, K) signed offsets.
        """
        b, k = adjacent.shape[:2]
        images = torch.cat([guide_image, adjacent.flatten(0, 1)], dim=0)
        image_features = self.image_encoder(images)
        mask_features = self.mask_encoder(guide_mask)
        skips = []
        lowest_attended = None
        for i, feat in enumerate(image_features):
            guide_feat, adj_feat = feat[:b], feat[b:]
            if i >= self.first_attention_stage:
                adj5 = adj_feat.unflatten(0, (b, k))
                attended = self.attention[i - self.first_attention_stage](adj5, guide_feat, mask_features[i])
                adj_feat = (adj5 + attended).flatten(0, 1)
                lowest_attended = attended
            skips.append(adj_feat)
        features, logits = self.decoder(skips)
        out: dict = {}
        if self.boundary is not None:
            boundary = self.boundary(features)
            logits[0] = self.fuse(torch.cat([logits[0], boundary], dim=1))
            out["boundary"] = boundary.unflatten(0, (b, k))
        out["masks"] = [logit.unflatten(0, (b, k)) for logit in logits]
        bottleneck = skips[-1]
        if self.presence is not None:
            pooled = torch.cat([bottleneck.mean((2, 3)), bottleneck.amax((2, 3))], dim=1)
            out["presence"] = self.presence(pooled).view(b, k)
        if self.position is not None:
            out["position"] = self.position(lowest_attended.mean((3, 4))).view(b, k)
        return out
