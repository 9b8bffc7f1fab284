"""Box2Mask's candidate masks (issue 9.4): each candidate's 2D Dice on the prompt slice, the one the
quality score picks, and the best one (an oracle), on the tuning objects of tune_stop_rule.py
(never the evaluation set) and, with --dev, on the dev evaluation objects as a report.

Each object is prompted by the tight box of its largest axial slice, on the slice as stored; the
engine's window search and averaging over all 8 in-plane orientations make Box2Mask's answer the
same in any pose, so the content view is not needed here. Prints a markdown table.

    python benchmarks/box2mask_candidates.py --model runs/models/abl_b2m_candidates --objects 30 --real 56 [--dev]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import numpy as np
import torch

from propsam.engine.box2mask_predictor import box_to_mask
from propsam.engine.roi import mask_bbox
from propsam.engine.segmenter import Segmenter, SegmentOptions
from propsam.errors import InputError
from propsam.evaluation.metrics import dice
from propsam.evaluation.objects import eval_datasets, iter_eval_objects
from propsam.training.train import default_data_dir
from tune_stop_rule import add_tuning_arguments, chosen_tuning_objects


def candidate_planes(seg: Segmenter, plane: np.ndarray, box) -> tuple[list[np.ndarray], int]:
    """Each candidate's mask on the plane, as the engine would paste it, and the index it picks."""
    options = SegmentOptions()

    def run(net):
        try:
            return box_to_mask(net, plane, box, seg.config.box2mask.image_size, seg.device, options.window_search,
                               options.box_scale, options.tta.box2mask)
        except InputError:  # an empty candidate: nothing in the box
            return np.zeros(plane.shape, bool)

    chosen = run(seg.box2mask)
    masks = [run(_OneCandidate(seg.box2mask, c)) for c in range(seg.config.box2mask.mask_candidates)]
    picked = next((c for c, m in enumerate(masks) if np.array_equal(m, chosen)), -1)
    return masks, picked


class _OneCandidate(torch.nn.Module):
    """The same network with candidate `index` as its only output."""

    def __init__(self, net, index: int):
        super().__init__()
        self.net, self.index = net, index

    def forward(self, image):
        out = self.net(image)
        return {"masks": [out["candidates"][:, self.index : self.index + 1]]}


def measure(seg: Segmenter, objects) -> list[dict]:
    rows = []
    for name, volume, truth in objects:
        k = int(truth.reshape(truth.shape[0], -1).sum(1).argmax())
        plane_truth = truth[k] > 0
        r0, c0, r1, c1 = mask_bbox(plane_truth)
        masks, picked = candidate_planes(seg, np.asarray(volume.array[k], np.float32), (c0, r0, max(c1, c0 + 1), max(r1, r0 + 1)))
        scores = [dice(m, plane_truth) for m in masks]
        rows.append({"object": name, "scores": scores, "picked": picked})
        print(f"{name} | {' '.join(f'{s:.3f}' for s in scores)} | picked {picked}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], title: str) -> str:
    count = len(rows[0]["scores"])
    scores = np.array([r["scores"] for r in rows])
    picked = np.array([r["scores"][r["picked"]] if r["picked"] >= 0 else np.nan for r in rows])
    choice = Counter(r["picked"] for r in rows)
    lines = [f"### {title}: {len(rows)} objects, tight box on the largest slice", "",
             "| mask | mean 2D Dice | picked (objects) |", "|---|---|---|"]
    for c in range(count):
        lines.append(f"| candidate {c}{' (main)' if c == 0 else ''} | {scores[:, c].mean():.3f} | {choice.get(c, 0)} |")
    lines.append(f"| **picked by quality** | **{np.nanmean(picked):.3f}** | |")
    lines.append(f"| best candidate (oracle) | {scores.max(1).mean():.3f} | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a bundle whose Box2Mask has mask_candidates > 1")
    add_tuning_arguments(parser)
    parser.add_argument("--dev", action="store_true", help="also the dev evaluation objects (a report, never a choice)")
    args = parser.parse_args(argv)
    seg = Segmenter.load(args.model, "cpu")
    if seg.config.box2mask.mask_candidates < 2:
        parser.error(f"{args.model}: its Box2Mask has no candidates (mask_candidates = 1)")
    text = table(measure(seg, chosen_tuning_objects(args)), "Tuning objects")
    if args.dev:
        data_dir = default_data_dir()
        dev = [(o.key, o.volume, o.truth) for o in iter_eval_objects(data_dir, eval_datasets(data_dir)) if o.headline]
        text += "\n" + table(measure(seg, dev), "Dev evaluation objects (report)")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
