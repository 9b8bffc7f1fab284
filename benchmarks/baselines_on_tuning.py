"""The copy and registration baselines on the TUNING objects, from the true mask on the largest
axial slice, as rows in tune_stop_rule.py's format (variant = the baseline), so that
by_prompt_area.py and paired_seeds.py read them beside the engine's rows.

    python benchmarks/baselines_on_tuning.py --objects 30 --real 56 --rows-out results/guide_blend/baseline_rows.csv
    python benchmarks/by_prompt_area.py --by contrast --rows results/stop_reasons_v2_1/rows_mask.csv --rows results/guide_blend/baseline_rows.csv
"""

from __future__ import annotations

import argparse
import sys
import time

from propsam.engine.roi import slice_extent
from propsam.evaluation.baselines import copy_baseline, registration_baseline
from propsam.evaluation.metrics import dice
from propsam.evaluation.objects import largest_slice
from tune_stop_rule import add_tuning_arguments, chosen_tuning_objects, end_losses, write_rows

BASELINES = {"registration": registration_baseline, "copy": copy_baseline}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tuning_arguments(parser)
    parser.add_argument("--rows-out", required=True)
    args = parser.parse_args(argv)
    rows = []
    for name, volume, truth in chosen_tuning_objects(args):
        k = largest_slice(truth)
        first, last = slice_extent(truth, axis=0)
        for label, baseline in BASELINES.items():
            start = time.perf_counter()
            mask = baseline(volume, k, truth[k] > 0)
            p_first, p_last = slice_extent(mask, axis=0)
            rows.append({"variant": f"{label}: baseline", "prompt": "mask", "object": name, "group": name.split(":")[0],
                         "dice": dice(mask, truth), "end_err": max(abs(p_first - first), abs(p_last - last)),
                         "short": int(p_first > first) + int(p_last < last), "seconds": time.perf_counter() - start,
                         **end_losses(mask, truth)})
            print(f"{label} | {name} | {rows[-1]['dice']:.3f}", file=sys.stderr, flush=True)
    write_rows(args.rows_out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
