"""Probe: one PropMask for propagation's first round, another for every later round.

The first round is guided by the user's prompt; every later one by PropMask's own mask of the
round before. A PropMask trained on its own guides (`self_guide`) read far slices better and near
ones worse (results/self_guide_cpu/), so this asks whether the engine should switch networks after
the first round. It runs the tuning objects as tune_stop_rule.py does (the shipped stop rule) with
the near model's Box2Mask and first round and the far model's PropMask after it, and writes rows
that paired_seeds.py reads, labelled "NEAR+FAR: leak limit 2x". A probe only: it swaps the network
inside the engine's round function rather than adding an engine option.

    python benchmarks/far_propmask_probe.py --near lite --far runs/models/v2_1_selfguide_seed1 \\
        --objects 30 --real 56 --prompts mask --rows-out results/self_guide03_cpu/far_switch_seed1.csv
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import tune_stop_rule
from propsam.engine import propagation, segmenter
from propsam.engine.segmenter import Segmenter


def switch_after_first_round(far_net) -> None:
    """Make every propagate() call use far_net from its second round on (its first keeps its own net)."""
    first_round, first_propagate = propagation._predict_round, propagation.propagate
    rounds = [0]

    def predict_round(net, *args, **kwargs):
        rounds[0] += 1
        return first_round(net if rounds[0] == 1 else far_net, *args, **kwargs)

    def propagate(*args, **kwargs):
        rounds[0] = 0
        return first_propagate(*args, **kwargs)

    propagation._predict_round = predict_round
    segmenter.propagate = propagate  # the segmenter's own reference to it


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--near", required=True, help="model for Box2Mask and the first round")
    parser.add_argument("--far", required=True, help="model whose PropMask runs every later round")
    tune_stop_rule.add_tuning_arguments(parser)
    parser.add_argument("--prompts", default="mask", help="mask, box or both")
    parser.add_argument("--rows-out", required=True)
    args = parser.parse_args(argv)
    seg = Segmenter.load(args.near, "cpu")
    switch_after_first_round(Segmenter.load(args.far, "cpu").propmask)
    shipped = {"leak limit 2x": tune_stop_rule.VARIANTS["leak limit 2x"]}
    rows = tune_stop_rule.run(f"{args.near}+{args.far}", tune_stop_rule.chosen_tuning_objects(args), shipped, True,
                              [p.strip() for p in args.prompts.split(",")], True, seg=seg)
    tune_stop_rule.write_rows(args.rows_out, rows)
    for prompt in sorted({r["prompt"] for r in rows}):
        print(f"{args.near}+{args.far} | {prompt} | {np.mean([r['dice'] for r in rows if r['prompt'] == prompt]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
