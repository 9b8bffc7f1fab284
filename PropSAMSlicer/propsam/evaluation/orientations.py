"""The orientation mode: every object under the 8 in-plane orientations (engine/tta.py's group).

An object is turned as a whole (image, truth, prompts; a transpose swaps the in-plane spacings;
origin and direction are kept, so the engine presents the turned slices to the networks), the
prediction is turned back, and it is scored against the untouched truth. A model whose answer
does not depend on how the axes were stored gives 8 equal Dice values; the spread (max - min)
and the agreement (mean pairwise Dice of the 8 masks) measure how far it is from that.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
from scipy import ndimage

from ..engine.tta import Orientation
from ..io.volume import Volume
from .metrics import dice
from .objects import EvalObject, Prompts

PREFIX = "orient:"


def orientation_setting(orientation: Orientation) -> str:
    return PREFIX + orientation.name


def turn_object(obj: EvalObject, o: Orientation) -> EvalObject:
    v, p = obj.volume, obj.prompts
    sx, sy, sz = v.spacing
    volume = Volume(np.ascontiguousarray(o.apply(v.array)), (sy, sx, sz) if o.transpose else (sx, sy, sz), v.origin, v.direction)
    plane = v.shape[1:]
    prompts = Prompts(p.slice_index, o.box(p.box, plane), o.box(p.jittered_box, plane), np.ascontiguousarray(o.apply(p.mask)))
    return replace(obj, volume=volume, truth=np.ascontiguousarray(o.apply(obj.truth)), prompts=prompts)


def agreement(masks: list[np.ndarray]) -> float:
    """Mean Dice over every pair of masks (all on one grid), computed inside their joint box."""
    union = np.zeros(masks[0].shape, bool)
    for m in masks:
        union |= m > 0
    box = ndimage.find_objects(union.astype(np.uint8))
    if not box:
        return 1.0
    crops = [m[box[0]] for m in masks]
    return float(np.mean([dice(a, b) for a, b in itertools.combinations(crops, 2)]))


def spread_rows(rows: list[dict]) -> list[dict]:
    """Per object x label (model/method) with all 8 orientations: min/mean/max Dice, spread, agreement."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["setting"] == "default" or r["setting"].startswith(PREFIX):
            groups.setdefault((r["label"], r["dataset"], r["volume"], r["object"]), []).append(r)
    out = []
    for (label, dataset, volume, name), group in groups.items():
        if len(group) < 2:
            continue
        d = [g["dice"] for g in group]
        out.append({"label": label, "dataset": dataset, "volume": volume, "object": name, "n": len(d),
                    "min": min(d), "mean": float(np.mean(d)), "max": max(d), "spread": max(d) - min(d),
                    "agreement": float(group[0]["agreement"]) if group[0]["agreement"] != "" else math.nan,
                    "seconds": float(np.mean([g["seconds"] for g in group]))})
    return out


def orientation_markdown(rows: list[dict]) -> str:
    """rows carry "label" (harness.labelled). A pooled table per model/method, then one per object."""
    spreads = spread_rows(rows)
    if not spreads:
        return ""
    out = ["### In-plane orientations (8: flips and transposes of the slice axes)", "",
           "| model / method | objects | mean Dice (min / mean / max over 8) | mean spread | max spread | "
           "objects with spread > 0.02 | mean agreement | s / object |",
           "|---|---:|---|---:|---:|---:|---:|---:|"]
    for label in dict.fromkeys(s["label"] for s in spreads):
        mine = [s for s in spreads if s["label"] == label]
        out.append(
            f"| {label} | {len(mine)} | {np.mean([s['min'] for s in mine]):.3f} / {np.mean([s['mean'] for s in mine]):.3f} / "
            f"{np.mean([s['max'] for s in mine]):.3f} | {np.mean([s['spread'] for s in mine]):.3f} | "
            f"{max(s['spread'] for s in mine):.3f} | {sum(s['spread'] > 0.02 for s in mine)} | "
            f"{np.nanmean([s['agreement'] for s in mine]):.3f} | {np.mean([s['seconds'] for s in mine]):.2f} |")
    out += ["", "Spread: max - min Dice over the 8 orientations of one object; agreement: mean pairwise Dice "
            "of the 8 predicted masks. s / object: mean seconds of one run.", "",
            "| model / method | object | min | mean | max | spread | agreement |", "|---|---|---:|---:|---:|---:|---:|"]
    for s in spreads:
        out.append(f"| {s['label']} | {s['dataset']}/{s['volume']}/{s['object']} | {s['min']:.3f} | {s['mean']:.3f} | "
                   f"{s['max']:.3f} | {s['spread']:.3f} | {s['agreement']:.3f} |")
    return "\n".join(out) + "\n"
