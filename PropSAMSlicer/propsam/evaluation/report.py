"""The evaluation report of issue 9.7, from the harness rows at the default setting.

Mean Dice with a bootstrap 95 % interval (objects resampled with replacement, seeded: the same
interval every run), per modality, per size class (slices along the prompt axis), per kind
(failure-mode group, the manifest's `kind`), end errors (absolute slices: median and 90th
percentile at each end), prompt-slice 2D Dice and seconds per object. Rows carry "label"
(harness.labelled). Objects of one subject are not independent (e.g. many lesions of one
patient), so the interval over objects is narrower than the truth; the headline and the paired
differences also give the interval over subjects (a cluster bootstrap: whole subjects resampled,
each with all its objects), the one to trust when a few subjects hold most of the objects.
"""

from __future__ import annotations

import numpy as np

from .objects import GENERATED_DATASETS
from .orientations import orientation_markdown
from .robustness import DEFAULT

BOOTSTRAP_SAMPLES = 2000
SIZE_CLASSES = (("<= 6", 0, 6), ("7-30", 7, 30), ("> 30", 31, 10**9))
# cross-section: pixels of the truth on the prompt slice. Objects of a few tens of pixels (thin
# vessels and muscles, small lesions) stop short far more than large ones (results/small_objects_cpu/)
AREA_CLASSES = (("< 60 px", 0, 59), ("60-299 px", 60, 299), ("300-999 px", 300, 999), (">= 1000 px", 1000, 10**12))
# outline visibility: metrics.edge_separability of the prompt slice. Objects whose outline the
# image does not show (touching neighbours of the same intensity) lose most (results/gpu_v2_2/)
CONTRAST_CLASSES = (("hidden < 0.75", 0.0, 0.75), ("faint 0.75-0.9", 0.75, 0.9), ("clear >= 0.9", 0.9, 1.01))


def bootstrap_ci(values, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0, clusters=None) -> tuple[float, float]:
    """95 % interval of the mean; with `clusters` (one key per value, e.g. the subject) whole
    clusters are resampled, so values that are not independent count as one draw together."""
    values = np.asarray(values, float)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if clusters is None:
        means = values[rng.integers(0, values.size, (samples, values.size))].mean(1)
    else:
        keys, which = np.unique(np.asarray(clusters, str), return_inverse=True)
        sums, counts = np.bincount(which, values, len(keys)), np.bincount(which, minlength=len(keys))
        drawn = rng.integers(0, len(keys), (samples, len(keys)))
        means = sums[drawn].sum(1) / counts[drawn].sum(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def mean_ci(values) -> str:
    if not len(values):
        return "-"
    lo, hi = bootstrap_ci(values)
    return f"{np.mean(values):.3f} [{lo:.3f}, {hi:.3f}]"


def subject_of(row: dict) -> str:
    return row.get("subject") or row["volume"]


def subject_interval(values, rows: list[dict]) -> str:
    """'[lo, hi] (k subjects)': the interval over subjects of values taken one per row."""
    subjects = [subject_of(r) for r in rows]
    lo, hi = bootstrap_ci(values, clusters=subjects)
    return f"[{lo:.3f}, {hi:.3f}] ({len(set(subjects))})"


def size_class(slices: int) -> str:
    return next(name for name, lo, hi in SIZE_CLASSES if lo <= slices <= hi)


def area_class(pixels: int) -> str:
    return next(name for name, lo, hi in AREA_CLASSES if lo <= pixels <= hi)


def contrast_class(separability: float) -> str:
    return next((name for name, lo, hi in CONTRAST_CLASSES if lo <= separability < hi), "?")


def _grouped_table(rows: list[dict], labels: list[str], title: str, key, groups: list[str], value="dice") -> list[str]:
    out = [f"#### {title}", "", "| model / method | " + " | ".join(f"{g} (n={sum(1 for r in rows if key(r) == g and r['label'] == labels[0])})"
                                                       for g in groups) + " |",
           "|---|" + "---|" * len(groups)]
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        out.append(f"| {label} | " + " | ".join(mean_ci([float(r[value]) for r in mine if key(r) == g]) for g in groups) + " |")
    return out + [""]


def _abs_ends(rows: list[dict], column: str) -> list[float]:
    return [abs(float(r[column])) for r in rows if r[column] not in ("", None)]


def _q(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.1f}" if values else "-"


def report_markdown(rows: list[dict]) -> str:
    used = [r for r in rows if r["setting"] == DEFAULT and r["dataset"] not in GENERATED_DATASETS]
    if not used:
        return ""
    labels = list(dict.fromkeys(r["label"] for r in used))
    objects = {(r["dataset"], r["volume"], r["object"]) for r in used}
    out = [f"### Report: {len(objects)} real object(s), default setting",
           "", "Dice: mean [bootstrap 95 % interval over objects, 2000 resamples]; over subjects: the interval when "
           "whole subjects are resampled (their count in brackets). Ends: |predicted - true| end slice "
           "along the prompt axis; an empty prediction has no ends and is left out of them (see 'empty').", "",
           "| model / method | n | Dice | over subjects | empty | lower end median / p90 | upper end median / p90 | "
           "prompt-slice 2D Dice | s / object |",
           "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for label in labels:
        mine = [r for r in used if r["label"] == label]
        lower, upper = _abs_ends(mine, "over_lower"), _abs_ends(mine, "over_upper")
        out.append(
            f"| {label} | {len(mine)} | {mean_ci([r['dice'] for r in mine])} | "
            f"{subject_interval([r['dice'] for r in mine], mine)} | {sum(r['pred_first'] == '' for r in mine)} | "
            f"{_q(lower, 50)} / {_q(lower, 90)} | {_q(upper, 50)} / {_q(upper, 90)} | "
            f"{np.mean([float(r['prompt_dice']) for r in mine]):.3f} | {np.mean([float(r['seconds']) for r in mine]):.2f} |")
    out += ["", "Prompt-slice 2D Dice is 1 by construction for mask prompts (the prompt is the guide).", ""]
    modalities = sorted({r["modality"] or "?" for r in used})
    out += _grouped_table(used, labels, "Dice per modality", lambda r: r["modality"] or "?", modalities)
    out += _grouped_table(used, labels, "Dice per size class (slices along the prompt axis)",
                          lambda r: size_class(int(r["true_slices"])), [name for name, _, _ in SIZE_CLASSES])
    if all(r.get("prompt_area", "") != "" for r in used):  # results written before the column lack it
        out += _grouped_table(used, labels, "Dice per cross-section (pixels of the truth on the prompt slice)",
                              lambda r: area_class(int(r["prompt_area"])), [name for name, _, _ in AREA_CLASSES])
    if all(r.get("prompt_edge", "") != "" for r in used):
        out += _grouped_table(used, labels, "Dice per outline visibility (edge separability of the prompt slice: 0.5 = "
                              "the object's intensities match its surroundings', 1 = fully apart)",
                              lambda r: contrast_class(float(r["prompt_edge"])), [name for name, _, _ in CONTRAST_CLASSES])
    kinds = sorted({r["kind"] or "?" for r in used})
    out += _grouped_table(used, labels, "Dice per kind (failure-mode group: touching = similar-intensity neighbours, "
                          "nested = the box also frames another structure, thin, lesion, organ)",
                          lambda r: r["kind"] or "?", kinds)
    boxed = [r for r in used if "box" in r["method"] and r.get("prompt_dice") not in ("", None)]
    if boxed:  # Box2Mask's own step: a mask prompt is the guide itself
        out += _grouped_table(boxed, list(dict.fromkeys(r["label"] for r in boxed)),
                              "Prompt-slice 2D Dice per modality (box prompts: Box2Mask's mask on the prompt slice)",
                              lambda r: r["modality"] or "?", sorted({r["modality"] or "?" for r in boxed}), value="prompt_dice")
    out += paired_differences(used)
    orient = orientation_markdown(rows)
    return "\n".join(out) + ("\n" + orient if orient else "")


def paired_differences(used: list[dict]) -> list[str]:
    """Model against model, same method, same objects: mean Dice difference with a bootstrap 95 %
    interval over the objects both ran (an interval that excludes 0 is a difference the sample shows)."""
    models = list(dict.fromkeys(r.get("model", "-") for r in used if r.get("model", "-") not in ("-", "")))
    if len(models) < 2:
        return []
    out = ["", "#### Paired Dice differences between models (same objects)", "",
           "| method | difference | n | mean [95 % interval] | over subjects |", "|---|---|---:|---|---|"]
    by_key = {(r["model"], r["method"], r["dataset"], r["volume"], r["object"]): r for r in used if r.get("model")}
    for method in dict.fromkeys(r["method"] for r in used if r.get("model", "-") not in ("-", "")):
        for i, a in enumerate(models):
            for b in models[i + 1 :]:
                pairs = [(r, by_key[(b, *k[1:])]) for k, r in by_key.items()
                         if k[0] == a and k[1] == method and (b, *k[1:]) in by_key]
                diffs = [ra["dice"] - rb["dice"] for ra, rb in pairs]
                if diffs:
                    out.append(f"| {method} | {a} − {b} | {len(diffs)} | {mean_ci(diffs)} | "
                               f"{subject_interval(diffs, [ra for ra, _ in pairs])} |")
    return out
