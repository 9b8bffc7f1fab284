"""tune_stop_rule.py's rows by the size of the object's prompt slice (tuning objects only).

Objects of small cross-section (a thin vessel or muscle, a small lesion: tens of pixels on their
largest slice) lose their Dice differently from large ones: their runs stop short. This splits
each model's (or variant's) rows by the prompt slice's area in pixels (the evaluation report's
AREA_CLASSES) and prints, per bin, the mean
Dice, the Dice over the slices both extents share (in-plane) and the share of the truth past the
predicted ends (stopping short); with --pair CONTROL=ARM (as paired_seeds.py), also the per-object
mean of arm − control over the pairs, with a bootstrap 95 % interval, per bin.

    python benchmarks/by_prompt_area.py --rows R.csv [--rows ...] --objects 30 --real 56 [--prompt mask] \\
        [--pair "lite=runs/models/X_seed1" --pair ...]
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

from propsam.evaluation.objects import largest_slice
from propsam.evaluation.report import AREA_CLASSES, area_class, bootstrap_ci
from tune_stop_rule import add_tuning_arguments, chosen_tuning_objects

def prompt_areas(args) -> dict[str, int]:
    """object name -> pixels of its truth on its largest axial slice (the prompt slice)."""
    return {name: int((truth[largest_slice(truth)] > 0).sum()) for name, _, truth in chosen_tuning_objects(args)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", action="append", required=True, help="a --rows-out CSV of tune_stop_rule.py")
    add_tuning_arguments(parser)
    parser.add_argument("--prompt", default="mask")
    parser.add_argument("--pair", action="append", default=[], help="CONTROL=ARM, the labels before ':' in the rows")
    args = parser.parse_args(argv)
    by_key = {}  # a model's rows may be in several files: one row per (rows' label, object)
    for path in args.rows:
        with open(path, newline="") as f:
            by_key.update({(r["variant"], r["object"]): r for r in csv.DictReader(f) if r["prompt"] == args.prompt})
    rows = list(by_key.values())
    areas = prompt_areas(args)
    missing = {r["object"] for r in rows} - set(areas)
    if missing:
        parser.error(f"{len(missing)} objects of the rows are not among the tuning objects of --objects/--real, e.g. {sorted(missing)[0]}")
    bins = [name for name, _, _ in AREA_CLASSES]
    print(f"| rows ({args.prompt}) | " + " | ".join(f"{b}: Dice / shared slices / share of truth past the ends (n)" for b in bins) + " |")
    print("|---|" + "---|" * len(bins))
    for label in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for b in bins:
            sel = [r for r in rows if r["variant"] == label and area_class(areas[r["object"]]) == b]
            split = all(r.get("dice_shared_slices") for r in sel)  # rows written before the loss split lack it
            mean = lambda key, scale=1: f"{scale * np.mean([float(r[key]) for r in sel]):.3f}" if split or key == "dice" else "–"  # noqa: E731
            cells.append(f"{mean('dice')} / {mean('dice_shared_slices')} / {mean('truth_beyond_ends')} ({len(sel)})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.pair:
        dice = {(r["variant"].split(":")[0], r["object"]): float(r["dice"]) for r in rows}
        pairs = [p.split("=", 1) for p in args.pair]
        print(f"\n| arm − control over {len(pairs)} pairs | " + " | ".join(bins) + " | all |\n|---|" + "---|" * (len(bins) + 1))
        effect = {o: np.mean([dice[(arm, o)] - dice[(control, o)] for control, arm in pairs]) for o in areas
                  if all((m, o) in dice for pair in pairs for m in pair)}
        cells = []
        for b in bins + ["all"]:
            values = [v for o, v in effect.items() if b == "all" or area_class(areas[o]) == b]
            lo, hi = bootstrap_ci(values)
            cells.append(f"{np.mean(values):+.3f} [{lo:+.3f}, {hi:+.3f}] ({len(values)})")
        print("| per object | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
