"""2.5D input: a slice read together with its neighbours along the propagation axis.

A PropMask built with `in_channels` = 2r + 1 sees each slice (guide, adjacent, memory) as the r
slices behind it, itself and the r slices ahead of it, in the direction of propagation, so that a
faint last slice of a lesion is judged with what lies beyond it, and "ahead" means the same on
both sides of the prompt. At the volume's ends the edge slice repeats. With one channel this is
the slice alone: a 2D network is unchanged.

One function serves numpy indices (tasks.py, the engine) and torch tensors (device_data.py).
"""

from __future__ import annotations

import numpy as np
import torch


def context_slices(index, direction, in_channels: int, length):
    """Slice indices (...) along one axis -> (..., in_channels): index + direction * (-r..r),
    clamped to 0..length-1. direction (+1 / -1) and length broadcast against index; in_channels
    is odd (NetworkConfig.validate checks it)."""
    r = in_channels // 2
    if isinstance(index, torch.Tensor):
        offsets = torch.arange(-r, r + 1, device=index.device)
        direction = torch.as_tensor(direction, device=index.device)[..., None]
        length = torch.as_tensor(length, device=index.device)[..., None]
        return torch.minimum((index[..., None] + direction * offsets).clamp(min=0), length - 1)
    offsets = np.arange(-r, r + 1)
    around = np.asarray(index)[..., None] + np.asarray(direction)[..., None] * offsets
    return np.clip(around, 0, np.asarray(length)[..., None] - 1)
