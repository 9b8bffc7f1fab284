"""PropMask: carry a guiding slice's mask to K adjacent slices in one pass.

One image encoder serves the guide and the adjacent slices; a separate mask encoder reads the
guiding mask. At the lowest `attention_stages` stages cross-attention (Q adjacent, K guide,
V guide mask) is added to the adjacent slice's skip; higher skips pass through unchanged.

With `prompt_memory`, a second cross-attention at the same stages reads the user's prompt slice
(Q adjacent, K prompt image, V prompt mask), so every round is compared with what the user marked
and not only with the last, possibly drifted, guide (as SAM2-style memories do). Its output
projection starts at zero: a network warm-started from one without memory begins unchanged.
With `memory_slices` M > 1 the memory also holds the side's M - 1 previous guides (recent
accepted slices): one key/value set of M slices' tokens, so no new parameters.

With `in_channels` C > 1 (2.5D) every image is C slices: the slice with its neighbours behind and
ahead of it along the propagation (engine/slice_context.py); masks stay one slice.

With `mask_hint` the image encoder reads one more channel, the nearest known mask: the guide's for
each adjacent slice, their own for the guide and memory slices. Next to the guide a slice looks
much like it (copying the guide scores as well as v2.1's PropMask there), and this gives the
decoder its outline at full resolution. A warm start begins its weights at zero (training/train.py
_widened) or, with the recipe's hint_init, at a share of the slice's (results/mask_hint_cpu/).
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
        self.image_encoder = Encoder(config.in_channels + int(config.mask_hint), channels)
        self.mask_encoder = Encoder(1, channels)
        self.first_attention_stage = config.stages - config.attention_stages
        codes = config.positional_channels or [None] * config.attention_stages

        def attention_blocks() -> nn.ModuleList:
            return nn.ModuleList(MaskCrossAttention(c, config.attention_head_dim, config.positional_encoding, code)
                                 for c, code in zip(config.attention_channels, codes))

        self.attention = attention_blocks()
        self.memory_attention = None
        if config.prompt_memory:
            self.memory_attention = attention_blocks()
            with torch.no_grad():
                for block in self.memory_attention:
                    block.out_proj.weight.zero_()
                    block.out_proj.bias.zero_()
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

    def forward(self, guide_image: torch.Tensor, guide_mask: torch.Tensor, adjacent: torch.Tensor,
                memory_image: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None) -> dict:
        """guide_image (B, C, S, S), guide_mask (B, 1, S, S); adjacent (B, K, C, S, S), all in
        [0, 1]; memory_image (B, M, C, S, S), memory_mask (B, M, S, S): the prompt slice, then the
        previous guides, in the same crop (optional; used only by a network built with
        prompt_memory, and left out to switch the memory off). C is in_channels (1 for 2D).

        Returns "masks": logits (B, K, 1, s, s) per decoder stage (full resolution first), and
        where configured "presence" (B, K) logits, "boundary" (B, K, 1, S, S) logits and
        "position" (B, K) signed offsets.
        """
        b, k = adjacent.shape[:2]
        use_memory = self.memory_attention is not None and memory_image is not None and memory_mask is not None
        m = memory_image.shape[1] if use_memory else 0
        leading = [guide_image, memory_image.flatten(0, 1)] if use_memory else [guide_image]
        images = torch.cat(leading + [adjacent.flatten(0, 1)], dim=0)
        if self.config.mask_hint:
            hints = [guide_mask] + ([memory_mask.flatten(0, 1)[:, None]] if use_memory else [])
            hints.append(guide_mask[:, None].expand(-1, k, -1, -1, -1).flatten(0, 1))
            images = torch.cat([images, torch.cat(hints).to(images.dtype)], dim=1)
        image_features = self.image_encoder(images)
        mask_features = self.mask_encoder(torch.cat([guide_mask, memory_mask.flatten(0, 1)[:, None]]) if use_memory else guide_mask)
        first_adjacent = (1 + m) * b
        skips = []
        lowest_attended = None
        for i, feat in enumerate(image_features):
            guide_feat, adj_feat = feat[:b], feat[first_adjacent:]
            if i >= self.first_attention_stage:
                adj5 = adj_feat.unflatten(0, (b, k))
                stage = i - self.first_attention_stage
                attended = self.attention[stage](adj5, guide_feat, mask_features[i][:b])
                if use_memory:
                    memory_feat = feat[b:first_adjacent].unflatten(0, (b, m))
                    attended = attended + self.memory_attention[stage](adj5, memory_feat, mask_features[i][b:].unflatten(0, (b, m)))
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
