"""Losses: soft Dice (+BCE) averaged over deep-supervision outputs (PropSAM eq. 1), plus the
optional presence, boundary (BD) and slice-position (SRPP) objectives and a per-slice Dice."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Dice over each sample's whole stack, so empty target slices still count via their neighbours."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


def deep_supervision_loss(logits: list[torch.Tensor], target: torch.Tensor, bce: bool) -> torch.Tensor:
    """logits: full resolution first, each (..., 1, s, s); target (..., 1, S, S) binary."""
    weights = torch.tensor([0.5**i for i in range(len(logits))])
    weights = weights / weights.sum()
    shape = target.shape
    flat_target = target.reshape(-1, 1, shape[-2], shape[-1])
    total = logits[0].new_zeros(())
    for w, logit in zip(weights, logits):
        logit = logit.reshape(-1, 1, logit.shape[-2], logit.shape[-1])
        t = flat_target if logit.shape[-1] == shape[-1] else F.adaptive_avg_pool2d(flat_target, logit.shape[-2:])
        t = (t > 0.5).float() if logit.shape[-1] != shape[-1] else t
        per = soft_dice_loss(logit.reshape(shape[0], -1), t.reshape(shape[0], -1))
        if bce:
            per = per + F.binary_cross_entropy_with_logits(logit, t)
        total = total + w * per
    return total


def boundary_target(mask: torch.Tensor) -> torch.Tensor:
    """1 on the mask's inner boundary (mask minus its 3x3 erosion)."""
    flat = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    eroded = -F.max_pool2d(-flat, 3, stride=1, padding=1)
    return (flat - eroded).reshape(mask.shape)


def slice_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice of each target slice that holds the object, averaged over those slices: a small
    slice (an object tapering to its end) counts as much as a large one, where the stack's Dice
    weighs slices by their pixels. logits, target (B, K, 1, S, S); 0 when no slice holds the object."""
    prob, target = torch.sigmoid(logits).flatten(2), target.flatten(2)
    per_slice = 1 - (2 * (prob * target).sum(2) + eps) / (prob.sum(2) + target.sum(2) + eps)
    present = target.sum(2) > 0
    return (per_slice * present).sum() / present.sum().clamp(min=1)


def propmask_loss(out: dict, batch: dict, bce: bool = True, slice_dice: float = 0.0) -> dict[str, torch.Tensor]:
    losses = {"mask": deep_supervision_loss(out["masks"], batch["target"], bce)}
    if slice_dice:
        losses["slice_dice"] = slice_dice * slice_dice_loss(out["masks"][0], batch["target"])
    if "presence" in out:
        losses["presence"] = 0.5 * F.binary_cross_entropy_with_logits(out["presence"], batch["presence"])
    if "boundary" in out:
        target = boundary_target(batch["target"])
        pos_weight = torch.tensor(4.0, device=target.device)
        losses["boundary"] = 0.5 * F.binary_cross_entropy_with_logits(out["boundary"], target, pos_weight=pos_weight)
    if "position" in out:
        losses["position"] = 0.5 * F.smooth_l1_loss(out["position"], batch["position"])
    return losses


def box2mask_loss(out: dict, batch: dict, bce: bool = True) -> dict[str, torch.Tensor]:
    losses = {"mask": deep_supervision_loss(out["masks"], batch["target"], bce)}
    if "candidates" in out:
        losses.update(candidate_losses(out["candidates"], out["quality"], batch["target"]))
    return losses


def candidate_losses(candidates: torch.Tensor, quality: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """candidates (B, C, S, S) logits, the main mask first; quality (B, C) logits; target (B, 1, S, S).

    Only the best alternative of each sample learns its mask (as segment-anything's multimask
    loss), so the alternatives are free to take the other readings of an ambiguous box; the
    main mask keeps its own deep-supervised loss. Quality learns every candidate's hard Dice."""
    prob = torch.sigmoid(candidates)
    flat_t = target.flatten(2)  # (B, 1, N)
    inter = (prob.flatten(2) * flat_t).sum(2)
    soft = 1 - (2 * inter + 1) / (prob.flatten(2).sum(2) + flat_t.sum(2) + 1)  # (B, C)
    bce = F.binary_cross_entropy_with_logits(candidates, target.expand_as(candidates), reduction="none").mean((2, 3))
    per = (soft + bce)[:, 1:]
    alternatives = per.min(1).values.mean()
    hard = (candidates > 0).float().flatten(2)
    dice = (2 * (hard * flat_t).sum(2) + 1) / (hard.sum(2) + flat_t.sum(2) + 1)
    return {"alternatives": alternatives, "quality": F.mse_loss(torch.sigmoid(quality), dice.detach())}
