"""Per-slice confidence of a result along its propagation axis, and the slices most likely wrong.

Two signals come with every propagation (PropagationStats): the network's per-slice *presence*
output and the *agreement* of each kept slice's averaged probability with its final mask (soft
Dice: 1 when the predictions of the slice are sharp and coincide). A slice's score is the lower
of the two, with presence turned into how firmly it backs the decision taken: 2p - 1 for a kept
slice, 1 - 2p for a predicted slice left out (the one that ended a side), clipped to [0, 1]. So a
kept slice with p = 0.55 and a stop at p = 0.45 (or a stop on the area rule while p said
"present") are named. Slices the user gave (prompt, corrections) have no record and score 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUSPECT_COUNT = 3


@dataclass
class SliceConfidence:
    score: np.ndarray  # (P,) in [0, 1]; NaN where the result has nothing and no side ended
    in_result: np.ndarray  # (P,) bool: the slice holds part of the result

    def suspects(self, count: int = SUSPECT_COUNT) -> list[int]:
        """The `count` slices most likely wrong, least confident first (ties: lower index)."""
        known = np.flatnonzero(np.isfinite(self.score) & (self.score < 1.0))
        order = sorted(known, key=lambda k: (self.score[k], k))
        return [int(k) for k in order[:count]]

    def as_dict(self) -> dict:
        return {int(k): round(float(v), 4) for k, v in enumerate(self.score) if np.isfinite(v)}


def slice_confidence(mask: np.ndarray, axis: int, presence: dict, agreement: dict) -> SliceConfidence:
    """mask: the 3D result; presence/agreement: slice -> value along `axis` (PropagationStats)."""
    depth = mask.shape[axis]
    in_result = np.moveaxis(mask > 0, axis, 0).reshape(depth, -1).any(1)
    score = np.where(in_result, 1.0, np.nan)
    for k, p in presence.items():
        if not 0 <= k < depth:
            continue
        if in_result[k]:
            score[k] = min(float(np.clip(2.0 * p - 1.0, 0.0, 1.0)), agreement.get(k, 1.0))
        else:  # e.g. the slice that ended a side: how sure was the stop?
            score[k] = float(np.clip(1.0 - 2.0 * p, 0.0, 1.0))
    return SliceConfidence(score, in_result)
