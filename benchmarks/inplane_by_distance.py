"""How the in-plane Dice of a propagated mask falls with the distance from the prompt slice (tuning objects only).

Each tuning object of benchmarks/tune_stop_rule.py is prompted with its mask on its largest axial
slice (the engine as it ships). Every slice that both the truth and the prediction mark is
scored by its 2D Dice and binned by its distance from the prompt as a share of that side's true
extent (0-25 %, ..., 75-100 %): a flat profile says the in-plane loss is there from the first
slices (the network's reading of a slice), a falling one that it builds up (drift). Each cell
also gives the slices' precision (share of the predicted pixels inside the truth: low = leaking
into neighbours) and recall (share of the truth found: low = shrinking).

    python benchmarks/inplane_by_distance.py --objects 30 --real 56 [--model lite] [--by contrast]

--by contrast groups the objects by their outline's visibility on the prompt slice (the
evaluation report's CONTRAST_CLASSES) instead of real against synthetic and phantom.
"""

from __future__ import annotations

import argparse

import numpy as np

from propsam.engine.prompts import MaskPrompt
from propsam.engine.roi import slice_extent
from propsam.engine.segmenter import Segmenter
from propsam.evaluation.metrics import dice, edge_separability
from propsam.evaluation.objects import largest_slice
from propsam.evaluation.report import bootstrap_ci, contrast_class
from tune_stop_rule import add_tuning_arguments, chosen_tuning_objects

BINS = (0.25, 0.5, 0.75, 1.0)


def profile(mask: np.ndarray, truth: np.ndarray, k: int) -> dict[int, list[tuple[float, float, float]]]:
    """bin -> (2D Dice, precision, recall) of the slices both masks mark, by distance from slice k
    over that side's extent."""
    first, last = slice_extent(truth, axis=0)
    out: dict[int, list[tuple[float, float, float]]] = {}
    for t in range(first, last + 1):
        if t == k or not (mask[t].any() and truth[t].any()):
            continue
        reach = (last - k) if t > k else (k - first)
        share = abs(t - k) / max(reach, 1)
        found = int((mask[t] & truth[t]).sum())
        scores = (dice(mask[t], truth[t]), found / int(mask[t].sum()), found / int(truth[t].sum()))
        out.setdefault(int(np.searchsorted(BINS, share)), []).append(scores)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lite")
    add_tuning_arguments(parser)
    parser.add_argument("--by", choices=("source", "contrast"), default="source", help="group real against synthetic, or by outline visibility")
    args = parser.parse_args(argv)
    seg = Segmenter.load(args.model, "cpu")
    objects = chosen_tuning_objects(args)
    per_group: dict[str, dict[int, list[np.ndarray]]] = {}
    for name, volume, truth in objects:
        k = largest_slice(truth)
        mask = seg.segment(volume, MaskPrompt(k, truth[k] > 0)).mask > 0
        if args.by == "contrast":
            group = contrast_class(edge_separability(volume.array[k], truth[k]))
        else:
            group = "real" if name.startswith("real") else "synthetic + phantom"
        for b, values in profile(mask, truth > 0, k).items():  # one mean per object and bin: objects weigh alike
            per_group.setdefault(group, {}).setdefault(b, []).append(np.mean(values, axis=0))
    print("| objects | " + " | ".join(f"{int(100 * lo)}-{int(100 * hi)} % of the way to the end" for lo, hi in zip((0,) + BINS, BINS)) + " |")
    print("|---|" + "---|" * len(BINS))
    for group, bins in sorted(per_group.items()):
        cells = []
        for b in range(len(BINS)):
            values = np.array(bins.get(b, []))
            if not len(values):
                cells.append("-")
                continue
            lo, hi = bootstrap_ci(values[:, 0]) if len(values) > 1 else (float("nan"), float("nan"))
            precision, recall = values[:, 1:].mean(0)
            cells.append(f"{values[:, 0].mean():.3f} [{lo:.3f}, {hi:.3f}], precision {precision:.2f}, recall {recall:.2f} ({len(values)})")
        print(f"| {group} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
