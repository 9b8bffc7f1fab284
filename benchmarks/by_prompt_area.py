"""tune_stop_rule.py's rows by the size, or the edge contrast, of the object's prompt slice
(tuning objects only).

Objects of small cross-section (a thin vessel or muscle, a small lesion: tens of pixels on their
largest slice) lose their Dice differently from large ones: their runs stop short. This splits
each model's (or variant's) rows by the prompt slice's area in pixels (the evaluation report's
AREA_CLASSES) and prints, per bin, the mean
Dice, the Dice over the slices both extents share (in-plane) and the share of the truth past the
predicted ends (stopping short); with --pair CONTROL=ARM (as paired_seeds.py), also the per-object
mean of arm − control over the pairs, with a bootstrap 95 % interval, per bin.

With --by contrast the bins are how visible the object's outline is on the prompt slice
(`metrics.edge_separability`: the folded Mann-Whitney AUC, 0.5 to 1, of the intensities inside
the object against a ring of 3 pixels around it; the evaluation report's CONTRAST_CLASSES). Near 0.5 the outline cannot be seen (a structure touching
neighbours of the same intensity: only the guide's shape can carry it); near 1 the object stands
out from everything around it.

    python benchmarks/by_prompt_area.py --rows R.csv [--rows ...] --objects 30 --real 56 [--prompt mask] \\
        [--by area|contrast] [--pair "lite=runs/models/X_seed1" --pair ...]
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

from propsam.evaluation.objects import largest_slice
from propsam.evaluation.metrics import edge_separability
from propsam.evaluation.report import AREA_CLASSES, CONTRAST_CLASSES, area_class, bootstrap_ci, contrast_class
from tune_stop_rule import add_tuning_arguments, chosen_tuning_objects


def prompt_bins(args) -> tuple[dict[str, str], list[str]]:
    """object name -> its bin by --by (pixels or outline visibility of the truth on its largest
    axial slice, the prompt slice), and the bins in order."""
    bins = {}
    for name, volume, truth in chosen_tuning_objects(args):
        k = largest_slice(truth)
        if args.by == "area":
            bins[name] = area_class(int((truth[k] > 0).sum()))
        else:
            bins[name] = contrast_class(edge_separability(volume.array[k], truth[k]))
    classes = AREA_CLASSES if args.by == "area" else CONTRAST_CLASSES
    return bins, [name for name, _, _ in classes]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", action="append", required=True, help="a --rows-out CSV of tune_stop_rule.py")
    add_tuning_arguments(parser)
    parser.add_argument("--prompt", default="mask")
    parser.add_argument("--by", choices=("area", "contrast"), default="area", help="bin by the prompt slice's area or edge contrast")
    parser.add_argument("--pair", action="append", default=[], help="CONTROL=ARM, the labels before ':' in the rows")
    args = parser.parse_args(argv)
    by_key = {}  # a model's rows may be in several files: one row per (rows' label, object)
    for path in args.rows:
        with open(path, newline="") as f:
            by_key.update({(r["variant"], r["object"]): r for r in csv.DictReader(f) if r["prompt"] == args.prompt})
    rows = list(by_key.values())
    bin_of, bins = prompt_bins(args)
    missing = {r["object"] for r in rows} - set(bin_of)
    if missing:
        parser.error(f"{len(missing)} objects of the rows are not among the tuning objects of --objects/--real, e.g. {sorted(missing)[0]}")
    print(f"| rows ({args.prompt}) | " + " | ".join(f"{b}: Dice / shared slices / share of truth past the ends (n)" for b in bins) + " |")
    print("|---|" + "---|" * len(bins))
    for label in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for b in bins:
            sel = [r for r in rows if r["variant"] == label and bin_of[r["object"]] == b]
            split = all(r.get("dice_shared_slices") for r in sel)  # rows written before the loss split lack it
            mean = lambda key, scale=1: f"{scale * np.mean([float(r[key]) for r in sel]):.3f}" if split or key == "dice" else "–"  # noqa: E731
            cells.append(f"{mean('dice')} / {mean('dice_shared_slices')} / {mean('truth_beyond_ends')} ({len(sel)})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.pair:
        dice = {(r["variant"].split(":")[0], r["object"]): float(r["dice"]) for r in rows}
        pairs = [p.split("=", 1) for p in args.pair]
        print(f"\n| arm − control over {len(pairs)} pairs | " + " | ".join(bins) + " | all |\n|---|" + "---|" * (len(bins) + 1))
        effect = {o: np.mean([dice[(arm, o)] - dice[(control, o)] for control, arm in pairs]) for o in bin_of
                  if all((m, o) in dice for pair in pairs for m in pair)}
        cells = []
        for b in bins + ["all"]:
            values = [v for o, v in effect.items() if b == "all" or bin_of[o] == b]
            lo, hi = bootstrap_ci(values)
            cells.append(f"{np.mean(values):+.3f} [{lo:+.3f}, {hi:+.3f}] ({len(values)})")
        print("| per object | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
