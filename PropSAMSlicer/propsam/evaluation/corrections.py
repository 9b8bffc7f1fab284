"""A simulated user correcting PropSAM, against the same budget spent on hand-editing.

After each pass the user looks for the worst slice along the prompt's axis (most voxels wrong
against the truth) and gives the correction a person would:

- the worst slice lies where the object is absent (the result runs on past an end, or into a
  gap): "stop" at the last slice of the object before it, seen from the prompt;
- the worst slice is empty in the result (it stopped short): the true mask on the first missing
  slice seen from the prompt (a later one would leave a gap that re-propagation never fills);
- otherwise: the true mask on the worst slice.

Hand-editing gets the same number of touched slices: each copies the true mask onto the slice
with the most wrong voxels (greedy, the best a person can do slice by slice). We also count how
many hand-edited slices it takes to match PropSAM's Dice after all its corrections.
The prompt is the tight box on the largest slice (evaluation/objects.py), as in `propsam-box`.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Iterable, TextIO

import numpy as np

from ..engine.confidence import slice_confidence
from ..engine.corrections import Correction, apply_correction
from ..engine.prompts import BoxPrompt
from ..engine.propagation import PropagationStats
from ..engine.segmenter import SegmentResult
from ..errors import InputError
from ..io.atomic import atomic_path
from .harness import csv_text
from .metrics import dice
from .objects import PHANTOM_DATASET, EvalObject

OUTPUTS = ("corrections.csv", "corrections.md")
SIZE_CLASSES = ((0, 10, "small (< 10 slices)"), (10, 40, "medium (10-39 slices)"), (40, math.inf, "large (>= 40 slices)"))


def eval_modalities(data_dir: Path) -> dict[str, str]:
    """dataset -> modality of the eval split (phantoms: 'phantom')."""
    from ..training.sources import manifest_entries

    found = {e["dataset"]: e["modality"] for e in manifest_entries(data_dir, "eval")} if Path(data_dir).is_dir() else {}
    return {**found, PHANTOM_DATASET: PHANTOM_DATASET}


def size_class(slices: int) -> str:
    return next(name for lo, hi, name in SIZE_CLASSES if lo <= slices < hi)


def slice_errors(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Wrong voxels per slice along axis 0."""
    return ((prediction > 0) != (truth > 0)).reshape(truth.shape[0], -1).sum(1)


def next_correction(prediction: np.ndarray, truth: np.ndarray, prompt_index: int) -> Correction | None:
    """The correction a person gives on the worst slice (None when nothing is wrong)."""
    errors = slice_errors(prediction, truth)
    if not errors.any():
        return None
    worst = int(errors.argmax())  # ties: the lowest index
    side = int(np.sign(worst - prompt_index)) or 1
    has_truth = truth.reshape(truth.shape[0], -1).any(1)
    has_pred = prediction.reshape(prediction.shape[0], -1).any(1)
    if not has_truth[worst]:  # runs on past an end (or into a gap): stop where the object last was
        end = worst
        while not has_truth[end]:
            end -= side
        return Correction("stop", end, direction=side if end == prompt_index else None)
    if not has_pred[worst]:  # stopped short: the first missing slice seen from the prompt
        k = prompt_index
        while has_pred[k] or not has_truth[k]:
            k += side
        return Correction("mask", k, mask=truth[k] > 0, direction=side if k == prompt_index else None)
    return Correction("mask", worst, mask=truth[worst] > 0)


def hand_edit(prediction: np.ndarray, truth: np.ndarray, budget: int) -> list[float]:
    """Dice after copying the true mask onto 0..budget slices, each time the worst slice."""
    edited = np.array(prediction > 0)
    dices = [dice(edited, truth)]
    for _ in range(budget):
        errors = slice_errors(edited, truth)
        if errors.any():
            worst = int(errors.argmax())
            edited[worst] = truth[worst] > 0
        dices.append(dice(edited, truth))
    return dices


def hand_slices_to_reach(prediction: np.ndarray, truth: np.ndarray, target: float) -> int:
    """Hand-edited slices (greedy) until Dice >= target."""
    edited = np.array(prediction > 0)
    count = 0
    while dice(edited, truth) < target - 1e-9:
        errors = slice_errors(edited, truth)
        worst = int(errors.argmax())
        edited[worst] = truth[worst] > 0
        count += 1
    return count


def simulate(obj: EvalObject, segmenter, budget: int, modality: str = "") -> dict:
    p, truth = obj.prompts, obj.truth
    try:
        result = segmenter.segment(obj.volume, BoxPrompt(p.slice_index, p.box))
        suspects = slice_confidence(result.mask, result.axis, result.stats.presence, result.stats.agreement).suspects()
    except InputError:  # Box2Mask found nothing: the user paints the prompt slice first
        result = SegmentResult(np.zeros_like(truth), p.mask, 0, p.slice_index, 0.0, PropagationStats())
        suspects = []
    first = result.mask
    dices, seconds, kinds = [dice(first, truth)], [], []
    for _ in range(budget):
        correction = next_correction(result.mask, truth, p.slice_index)
        if correction is not None:
            if not kinds:
                first_slice = correction.slice_index
            start = time.perf_counter()
            result = apply_correction(segmenter, obj.volume, result, correction)
            seconds.append(time.perf_counter() - start)
            kinds.append(correction.kind)
        dices.append(dice(result.mask, truth))
    hand = hand_edit(first, truth, budget)
    return {
        "dataset": obj.dataset, "modality": modality, "volume": obj.volume_id, "object": obj.name,
        "headline": obj.headline, "true_slices": obj.slices, "size_class": size_class(obj.slices),
        **{f"propsam_dice_{k}": d for k, d in enumerate(dices)},
        **{f"hand_dice_{k}": d for k, d in enumerate(hand)},
        "hand_slices_to_match": hand_slices_to_reach(first, truth, dices[-1]),
        "corrections": "+".join(kinds), "seconds_per_correction": float(np.mean(seconds)) if seconds else "",
        "max_seconds_per_correction": float(np.max(seconds)) if seconds else "",
        # was the first slice the user had to correct among the slices the engine named?
        "first_fix_named": any(abs(first_slice - s) <= 1 for s in suspects) if kinds else "",
    }


def _mean(values) -> str:
    values = [v for v in values if v != ""]
    return f"{np.mean(values):.3f}" if values else "-"


def markdown_table(rows: list[dict], budget: int) -> str:
    used = [r for r in rows if r["headline"]]
    groups: dict[str, list[dict]] = {"all objects": used}
    for key in ("modality", "size_class"):
        for value in sorted({r[key] for r in used}):
            groups[f"{key.replace('_', ' ')}: {value}"] = [r for r in used if r[key] == value]
    ks = range(budget + 1)
    out = [f"Mean Dice after k corrections (PropSAM: re-propagate from the corrected slice; hand: copy the true "
           f"mask onto k slices), box prompt on the largest slice; objects >= 5 slices.", "",
           "| objects | n | " + " | ".join(f"PropSAM k={k}" for k in ks) + " | " + " | ".join(f"hand k={k}" for k in ks[1:])
           + f" | hand slices to match PropSAM k={budget} | s / correction (mean, max) | first fix named |",
           "|---|---:|" + "---:|" * (len(ks) + len(ks) - 1) + "---:|---:|---:|"]
    for name, group in groups.items():
        if not group:
            continue
        secs = [r["seconds_per_correction"] for r in group if r["seconds_per_correction"] != ""]
        worst = [r["max_seconds_per_correction"] for r in group if r["max_seconds_per_correction"] != ""]
        named = [r["first_fix_named"] for r in group if r["first_fix_named"] != ""]
        out.append(
            f"| {name} | {len(group)} | " + " | ".join(_mean([r[f'propsam_dice_{k}'] for r in group]) for k in ks) + " | "
            + " | ".join(_mean([r[f'hand_dice_{k}'] for r in group]) for k in ks[1:])
            + f" | {np.mean([r['hand_slices_to_match'] for r in group]):.1f}"
            + (f" | {np.mean(secs):.2f}, {np.max(worst):.2f}" if secs else " | -")
            + (f" | {sum(named)}/{len(named)} |" if named else " | - |")
        )
    out += ["", "first fix named: the first slice the simulated user corrected was within one slice of one of the "
            "engine's 3 least confident slices."]
    return "\n".join(out) + "\n"


def run_corrections(objects: Iterable[EvalObject], segmenter, out_dir: Path, budget: int, modalities: dict,
                    max_objects: int | None = None, log: TextIO | None = None) -> list[dict]:
    """Simulate the user on each object (a line per object on `log`), then write OUTPUTS to out_dir."""
    rows = []
    for i, obj in enumerate(objects, start=1):
        if max_objects is not None and i > max_objects:
            break
        start = time.perf_counter()
        row = simulate(obj, segmenter, budget, modalities.get(obj.dataset, ""))
        rows.append(row)
        print(f"[{i}] {obj.key} ({obj.slices} slices): Dice {row['propsam_dice_0']:.3f} -> {row[f'propsam_dice_{budget}']:.3f} "
              f"with {row['corrections'] or 'no'} corrections; hand {row[f'hand_dice_{budget}']:.3f} "
              f"({time.perf_counter() - start:.1f} s)", file=log or sys.stderr, flush=True)
    if not rows:
        raise InputError("no evaluation object was found: nothing to write")
    for name, text in zip(OUTPUTS, (csv_text(rows), markdown_table(rows, budget))):
        with atomic_path(Path(out_dir) / name) as tmp:
            tmp.write_text(text)
    return rows
