"""Cross-attention that carries the guiding mask to adjacent slices.

Q = adjacent-slice image features, K = guiding-slice image features, V = guiding-mask features.
All K adjacent slices of one guide share one key/value set, so their queries are concatenated
along the token axis instead of repeating keys and values per slice. Several guiding slices (a
memory) are concatenated the same way: their tokens form one key/value set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_position_2d(channels: int, height: int, width: int, device, dtype) -> torch.Tensor:
    """(H*W, C) fixed 2D sine/cosine code; half the channels encode rows, half columns."""
    quarter = max(1, channels // 4)
    freq = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freq
    xs = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freq
    row = torch.cat([ys.sin(), ys.cos()], dim=1)[:, None, :].expand(height, width, -1)
    col = torch.cat([xs.sin(), xs.cos()], dim=1)[None, :, :].expand(height, width, -1)
    code = torch.cat([row, col], dim=2).reshape(height * width, -1)
    code = F.pad(code, (0, channels - code.shape[1]))
    return code.to(dtype)


class MaskCrossAttention(nn.Module):
    def __init__(self, channels: int, head_dim: int, positional_encoding: bool, positional_channels: int | None = None):
        """positional_channels: the sinusoidal code's width (default: all channels); the channels
        past it get no code (a widened network keeps its source's code: config.positional_channels)."""
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.q_proj = nn.Linear(channels, channels)
        self.k_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.out_proj = nn.Linear(channels, channels)
        self.positional_encoding = positional_encoding
        self.positional_channels = positional_channels or channels

    def forward(self, adjacent: torch.Tensor, guide: torch.Tensor, guide_mask: torch.Tensor) -> torch.Tensor:
        """adjacent (B, K, C, h, w); guide, guide_mask (B, C, h, w), or (B, M, C, h, w) for M
        guiding slices -> (B, K, C, h, w)."""
        b, k, c, h, w = adjacent.shape
        if guide.dim() == 4:
            guide, guide_mask = guide[:, None], guide_mask[:, None]
        m = guide.shape[1]
        q = adjacent.permute(0, 1, 3, 4, 2).reshape(b, k, h * w, c)
        kv = guide.permute(0, 1, 3, 4, 2).reshape(b, m, h * w, c)
        v = guide_mask.permute(0, 1, 3, 4, 2).reshape(b, m * h * w, c)
        if self.positional_encoding:
            pos = F.pad(sinusoidal_position_2d(self.positional_channels, h, w, adjacent.device, adjacent.dtype),
                        (0, c - self.positional_channels))
            q = q + pos
            kv = kv + pos
        kv = kv.reshape(b, m * h * w, c)
        q = self.q_proj(q.reshape(b, k * h * w, c))
        key = self.k_proj(kv)
        value = self.v_proj(v)
        split = lambda t: t.reshape(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(q), split(key), split(value))
        out = self.out_proj(out.transpose(1, 2).reshape(b, k * h * w, c))
        return out.reshape(b, k, h, w, c).permute(0, 1, 4, 2, 3)
