"""Could Box2Mask re-anchor PropMask's slices? A probe on the tuning objects (never the evaluation set).

Each tuning object of benchmarks/tune_stop_rule.py is prompted with its mask on its largest
axial slice (the engine as it ships). Then every predicted slice but the prompt's is redrawn by
Box2Mask from a box: the box of PropMask's own mask on that slice (what the engine could do), or
the truth's box (an oracle: what a perfect box would give). Scored by 3D Dice, each variant
keeping PropMask's extent:

- propmask: the engine's result;
- box2mask (own box), and its intersection / union with PropMask's slice;
- box2mask (true box): the oracle, on the slices both the truth and the prediction mark.

If even the oracle's slices are worse than PropMask's, re-anchoring on Box2Mask cannot help.

    python benchmarks/box_reanchor_probe.py --objects 30 --real 56 [--model lite] [--rows-out R.csv]
"""

from __future__ import annotations

import argparse

import numpy as np

from propsam.engine.prompts import MaskPrompt
from propsam.engine.roi import mask_bbox
from propsam.engine.segmenter import Segmenter
from propsam.errors import InputError
from propsam.evaluation.baselines import box_guide
from propsam.evaluation.metrics import dice
from propsam.evaluation.objects import largest_slice
from propsam.evaluation.report import bootstrap_ci
from tune_stop_rule import add_tuning_arguments, chosen_tuning_objects, write_rows

VARIANTS = ("propmask", "box2mask own box", "intersection", "union", "box2mask true box")


def redrawn(seg: Segmenter, volume: np.ndarray, mask: np.ndarray, truth: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """variant -> 3D mask: PropMask's slices (all but k) redrawn by Box2Mask as the docstring says."""
    out = {v: mask.copy() for v in VARIANTS}
    for t in range(mask.shape[0]):
        if t == k or not mask[t].any():
            continue
        r0, c0, r1, c1 = mask_bbox(mask[t] > 0)
        own = _box2mask(seg, volume[t], (c0, r0, c1, r1))
        out["box2mask own box"][t] = own
        out["intersection"][t] = own & (mask[t] > 0)
        out["union"][t] = own | (mask[t] > 0)
        if truth[t].any():
            r0, c0, r1, c1 = mask_bbox(truth[t] > 0)
            out["box2mask true box"][t] = _box2mask(seg, volume[t], (c0, r0, c1, r1))
    return out


def _box2mask(seg: Segmenter, plane: np.ndarray, box) -> np.ndarray:
    c0, r0, c1, r1 = box
    try:  # as the engine runs Box2Mask for a box prompt (a box prompt is at least 2 x 2 pixels)
        return box_guide(seg, plane, (c0, r0, max(c1, c0 + 1), max(r1, r0 + 1)))
    except InputError:  # Box2Mask found nothing in the box: an empty slice
        return np.zeros(plane.shape, bool)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lite")
    add_tuning_arguments(parser)
    parser.add_argument("--rows-out")
    args = parser.parse_args(argv)
    seg = Segmenter.load(args.model, "cpu")
    rows = []
    for name, volume, truth in chosen_tuning_objects(args):
        k = largest_slice(truth)
        result = seg.segment(volume, MaskPrompt(k, truth[k] > 0))
        for variant, mask in redrawn(seg, volume.array, result.mask, truth, k).items():
            rows.append({"variant": variant, "object": name, "group": name.split(":")[0], "dice": dice(mask, truth)})
        print(name, " ".join(f"{r['dice']:.3f}" for r in rows[-len(VARIANTS):]), flush=True)
    if args.rows_out:
        write_rows(args.rows_out, rows)
    base = {r["object"]: r["dice"] for r in rows if r["variant"] == "propmask"}
    print("\n| variant | mean Dice | real | synthetic/phantom | − propmask [95 %] |\n|---|---|---|---|---|")
    for variant in VARIANTS:
        sel = [r for r in rows if r["variant"] == variant]
        diffs = [r["dice"] - base[r["object"]] for r in sel]
        lo, hi = bootstrap_ci(diffs)
        real = [r["dice"] for r in sel if r["group"].startswith("real")]
        made = [r["dice"] for r in sel if not r["group"].startswith("real")]
        print(f"| {variant} | {np.mean([r['dice'] for r in sel]):.3f} | {np.mean(real) if real else float('nan'):.3f} | "
              f"{np.mean(made) if made else float('nan'):.3f} | {np.mean(diffs):+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
