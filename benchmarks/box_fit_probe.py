"""Would a box-fitted threshold sharpen Box2Mask's 2D mask? (tuning objects only, prompt slice only)

A tight box touches the object on all four sides. Box2Mask's averaged probability is cut at 0.5;
this probe also cuts it at the level, among a few, whose mask's own bounding box best matches
the box (IoU of the two boxes; ties to the level nearest 0.5), and scores both against the truth
on the prompt slice, for the tight box and for the jittered one (1.0-1.25 times as large, where
fitting the box would be wrong: the check that the rule does no harm on loose boxes).

    python benchmarks/box_fit_probe.py --objects 30 --real 56 [--model lite]
"""

from __future__ import annotations

import argparse

import numpy as np

from propsam.engine.box2mask_predictor import box_probability
from propsam.engine.roi import mask_bbox
from propsam.engine.segmenter import Segmenter, SegmentOptions
from propsam.evaluation.metrics import dice
from propsam.evaluation.objects import largest_slice, prompts_on
from propsam.evaluation.report import bootstrap_ci
from tune_stop_rule import add_tuning_arguments, chosen_tuning_objects

LEVELS = (0.3, 0.4, 0.5, 0.6, 0.7)


def box_iou(a, b) -> float:
    """IoU of two inclusive boxes (c0, r0, c1, r1)."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(w, 0) * max(h, 0)
    area = lambda q: (q[2] - q[0] + 1) * (q[3] - q[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def fitted(prob: np.ndarray, inside: np.ndarray, box) -> np.ndarray:
    best, best_key = None, None
    for level in LEVELS:
        mask = (prob > level) & inside
        if not mask.any():
            continue
        r0, c0, r1, c1 = mask_bbox(mask)
        key = (round(box_iou((c0, r0, c1, r1), box), 6), -abs(level - 0.5))
        if best_key is None or key > best_key:
            best, best_key = mask, key
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lite")
    add_tuning_arguments(parser)
    args = parser.parse_args(argv)
    seg = Segmenter.load(args.model, "cpu")
    options = SegmentOptions()
    turns = options.tta.box2mask  # Box2Mask's orientations as shipped (8)
    objects = chosen_tuning_objects(args)
    scores = {"tight": [], "jittered": []}  # (shipped 0.5, fitted) per object
    for i, (name, volume, truth) in enumerate(objects):
        k = largest_slice(truth)
        prompts = prompts_on(truth, k, seed=i)
        plane = volume.array[k].astype(np.float32)
        true = truth[k] > 0
        for kind, box in (("tight", prompts.box), ("jittered", prompts.jittered_box)):
            prob, inside = box_probability(seg.box2mask, plane, box, seg.config.box2mask.image_size, seg.device,
                                           options.window_search, options.box_scale, turns)
            shipped = (prob > 0.5) & inside
            fit = fitted(prob, inside, box)
            fit = shipped if fit is None else fit
            scores[kind].append((dice(shipped, true), dice(fit, true)))
    print("| box | n | shipped (0.5) | box-fitted | fitted − shipped [95 %] |")
    print("|---|---|---|---|---|")
    for kind, rows in scores.items():
        a = np.array(rows)
        diff = a[:, 1] - a[:, 0]
        lo, hi = bootstrap_ci(list(diff))
        print(f"| {kind} | {len(a)} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
