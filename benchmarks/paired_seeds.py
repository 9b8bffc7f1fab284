"""An arm against its control, seed by seed, from tune_stop_rule.py's rows (--rows-out).

Seed noise moves a short CPU training run by about as much as the effects looked for, so an arm
is trained with the same seeds as its control and each seed's arm is paired with its control on
the same objects. Prints, per prompt, each pair's mean Dice and difference, and the effect over
all pairs: the per-object mean of arm − control, with a bootstrap 95 % interval over objects
(also per object group).

    python benchmarks/paired_seeds.py --rows results/slice_context_cpu/tuning_rows_seeds_mask_a.csv \\
        --rows results/perturb_guide_cpu/rows_mask.csv ... \\
        --pair "lite=runs/models/v2_1_perturb05_seed1" --pair "runs/models/v2_1_seed2=runs/models/v2_1_perturb05_seed2" ...
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

from propsam.evaluation.report import bootstrap_ci


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", action="append", required=True, help="a --rows-out CSV of tune_stop_rule.py")
    parser.add_argument("--pair", action="append", required=True, help="CONTROL=ARM, the models' labels (before ':')")
    args = parser.parse_args(argv)
    dice: dict[tuple[str, str], dict[str, float]] = {}  # (model, prompt) -> object -> Dice
    for path in args.rows:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                dice.setdefault((r["variant"].split(":")[0], r["prompt"]), {})[r["object"]] = float(r["dice"])
    pairs = [tuple(p.split("=", 1)) for p in args.pair]

    def ci(values) -> str:
        lo, hi = bootstrap_ci(values)
        return f"{np.mean(values):+.3f} [{lo:+.3f}, {hi:+.3f}]"

    for prompt in sorted({p for _, p in dice}):
        if any((m, prompt) not in dice for pair in pairs for m in pair):
            continue
        objects = sorted(set.intersection(*(set(dice[m, prompt]) for pair in pairs for m in pair)))
        print(f"### {prompt} prompt, {len(objects)} objects\n\n| control | arm | control | arm | arm − control [95 %] |\n|---|---|---|---|---|")
        for control, arm in pairs:
            c, a = dice[control, prompt], dice[arm, prompt]
            print(f"| {control} | {arm} | {np.mean([c[o] for o in objects]):.3f} | {np.mean([a[o] for o in objects]):.3f} | "
                  f"{ci([a[o] - c[o] for o in objects])} |")
        effect = {o: np.mean([dice[a, prompt][o] - dice[c, prompt][o] for c, a in pairs]) for o in objects}
        print(f"| all {len(pairs)} pairs | | | | **{ci(list(effect.values()))}** |")
        for group in sorted({o.split(":")[0].split("/")[0] for o in objects}):
            chosen = [v for o, v in effect.items() if o.split(":")[0].split("/")[0] == group]
            print(f"| {group} ({len(chosen)}) | | | | {ci(chosen)} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
