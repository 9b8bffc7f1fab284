"""Why the ends stopped where they did: tune_stop_rule.py's rows (--rows-out) counted by each
end's outcome (stops short, exact, runs on) and the engine's reason (faded out, too small, leak
limit, edge), one table per rows file and model.

    python benchmarks/end_reasons.py results/stop_reasons_v2_1/rows_mask.csv results/stop_reasons_v2_1/rows_box.csv
"""

from __future__ import annotations

import argparse
import collections
import csv

OUTCOMES = ("stops short", "exact", "runs on")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", help="--rows-out CSVs of tune_stop_rule.py with lower_why / upper_why")
    args = parser.parse_args(argv)
    for path in args.rows:
        counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if "lower_why" not in r:
                    parser.error(f"{path} has no end reasons (rows written before tune_stop_rule.py recorded them)")
                for end in ("lower", "upper"):
                    err = int(r[f"{end}_err"])
                    counts[r["variant"], r["prompt"]][OUTCOMES[(err > 0) - (err < 0) + 1], r[f"{end}_why"]] += 1
        for (variant, prompt), count in counts.items():
            reasons = sorted({why for _, why in count}, key=lambda why: -sum(n for (_, w), n in count.items() if w == why))
            print(f"### {variant}, {prompt} prompt ({path})\n\n| end | " + " | ".join(reasons) + " | all |\n|---|"
                  + "---|" * (len(reasons) + 1))
            for outcome in OUTCOMES:
                print(f"| {outcome} | " + " | ".join(str(count[outcome, why]) for why in reasons)
                      + f" | {sum(count[outcome, why] for why in reasons)} |")
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
