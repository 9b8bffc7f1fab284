"""Warm-start a wider network from a trained narrower one, so that it begins as the narrow one did.

The networks normalise per channel (InstanceNorm), add features channel by channel and split
attention into heads of a fixed width, so extra channels can be bolted on without touching what
the old ones compute: every old output keeps its weights and reads nothing (zero weights) from
the new inputs, while the new outputs start as the wide network's own random initialisation.
The new channels are then live from the first step (their activations are not zero, so the
zero weights that would read them get gradients), unlike a zero-started input channel, which
the mask-hint and 2.5D arms found the network never took up (results/mask_hint_cpu/).

Two layers read concatenated features and are widened half by half: a decoder stage's first
convolution (upsampled features, then the skip) and the presence head (mean, then max pooling).
A transposed convolution stores (in, out) instead of (out, in).
"""

from __future__ import annotations

import re

import torch

from ..config import NetworkConfig
from ..errors import InputError

# tensors whose input is two equal blocks of features, concatenated
_CONCATENATED_INPUT = (re.compile(r"decoder\.stages\.\d+\.convs\.0\.0\.weight$"), re.compile(r"presence\.weight$"))
_TRANSPOSED = re.compile(r"decoder\.stages\.\d+\.up\.weight$")


def _blocks(old: int, new: int, halves: bool) -> list[tuple[slice, slice]]:
    """(old slice, new slice) pairs along one axis: leading channels, or each of two halves."""
    if not halves:
        return [(slice(0, old), slice(0, old))]
    if old % 2 or new % 2:
        raise InputError(f"a concatenated input must have an even width, got {old} -> {new}")
    o, n = old // 2, new // 2
    return [(slice(0, o), slice(0, o)), (slice(o, old), slice(n, n + o))]


def widen_tensor(name: str, old: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """`old` (a trained tensor) placed in a tensor of `fresh`'s shape, starting from `fresh` (the
    wide network's initialisation): old outputs read their old inputs only."""
    if old.shape == fresh.shape:
        return old.clone()
    if old.dim() == fresh.dim() and old.shape[2:] != fresh.shape[2:]:
        raise InputError(f"{name}: kernel {tuple(old.shape[2:])} differs from {tuple(fresh.shape[2:])}")
    if old.dim() != fresh.dim() or any(o > f for o, f in zip(old.shape, fresh.shape)):
        raise InputError(f"{name}: {tuple(old.shape)} cannot be widened to {tuple(fresh.shape)}")
    out = fresh.clone()
    if old.dim() == 1:  # bias, norm scale or shift: per output channel
        out[: old.shape[0]] = old
        return out
    out_axis, in_axis = (1, 0) if _TRANSPOSED.search(name) else (0, 1)
    halves = any(p.search(name) for p in _CONCATENATED_INPUT)
    rows = slice(0, old.shape[out_axis])
    index = [slice(None)] * old.dim()
    index[out_axis] = rows
    out[tuple(index)] = 0  # the old outputs read nothing from the new inputs ...
    for old_in, new_in in _blocks(old.shape[in_axis], fresh.shape[in_axis], halves):
        src, dst = [slice(None)] * old.dim(), [slice(None)] * old.dim()
        src[in_axis], dst[in_axis] = old_in, new_in
        dst[out_axis] = rows
        out[tuple(dst)] = old[tuple(src)]  # ... and what they read before, where it now lies
    return out


def widen_state(trained: dict, fresh: dict) -> tuple[dict, int]:
    """A state dict for the wide network (`fresh`: its own initial state) from a narrower trained
    one, and how many tensors were widened. Tensors only the wide network has are left to the
    caller (its load reports them as missing)."""
    state, widened = {}, 0
    for name, tensor in trained.items():
        if name not in fresh:
            state[name] = tensor
            continue
        state[name] = widen_tensor(name, tensor, fresh[name].to(tensor.dtype))
        widened += tensor.shape != fresh[name].shape
    return state, widened


def _head_width(channels: int, head_dim: int) -> int:
    return channels // max(1, channels // head_dim)  # as MaskCrossAttention splits its channels


def check_widening(source: NetworkConfig, wide: NetworkConfig) -> None:
    """Refuse a widening that would change what the old channels compute: attention heads of
    another width (widen attention stages by multiples of attention_head_dim) or other
    positional codes (keep the source's with positional_channels)."""
    for stage, (old, new) in enumerate(zip(source.attention_channels, wide.attention_channels)):
        if _head_width(old, source.attention_head_dim) != _head_width(new, wide.attention_head_dim):
            raise InputError(f"attention stage {stage}: {old} -> {new} channels changes the heads' width; "
                             f"widen it by multiples of attention_head_dim ({wide.attention_head_dim})")
    if source.positional_encoding:
        codes = list(source.positional_channels or source.attention_channels)
        if list(wide.positional_channels or wide.attention_channels) != codes:
            raise InputError(f"the widened network would read other positional codes: set positional_channels to {codes}")
