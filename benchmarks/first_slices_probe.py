"""How well PropMask reads the slices right next to a perfect prompt, against copying the prompt
and against the resolution of its crop (tuning objects only).

Each tuning object of benchmarks/tune_stop_rule.py is prompted with its true mask on its largest
axial slice (the engine as it ships). For the slices 1..D away from the prompt on each side that
the truth marks, three 2D Dice against the truth:
- propmask: the engine's result (from a true guide: these slices lie in the first round);
- copy: the prompt's mask itself, unchanged (what a network that learned nothing would give);
- both / either: the pixels that propmask and copy both mark / that either marks;
- ceiling: the truth of that slice sampled into the model's square crop (the prompt's ROI, the
  model's size) and pasted back: the best any output at that resolution can score.
A propmask far under the ceiling is the network's reading; a ceiling far under 1 is resolution.

    python benchmarks/first_slices_probe.py --objects 30 --real 56 [--model lite] [--distance 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from propsam.engine.prompts import MaskPrompt
from propsam.engine.propagation import PropagationOptions
from propsam.engine.roi import crop_to_model, paste_from_model, roi_grid, square_roi
from propsam.engine.segmenter import Segmenter
from propsam.evaluation.metrics import dice
from propsam.evaluation.objects import largest_slice
from propsam.evaluation.report import AREA_CLASSES, area_class, bootstrap_ci
from tune_stop_rule import add_tuning_arguments, chosen_tuning_objects


def ceiling(truth_slice: np.ndarray, prompt: np.ndarray, spacing_rc, size: int, context: float) -> float:
    """Dice of the truth after a round trip through the model's crop of the prompt's ROI."""
    roi = square_roi(prompt, spacing_rc, context)
    grid = roi_grid(roi, size, truth_slice.shape)
    sampled = crop_to_model(torch.from_numpy(truth_slice[None].astype(np.float32)), grid)
    pasted, (r0, r1, c0, c1) = paste_from_model(sampled, roi, truth_slice.shape)
    back = np.zeros(truth_slice.shape, bool)
    back[r0:r1, c0:c1] = pasted[0] > 0.5
    return dice(back, truth_slice)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lite")
    add_tuning_arguments(parser)
    parser.add_argument("--distance", type=int, default=3, help="slices each side of the prompt")
    args = parser.parse_args(argv)
    seg = Segmenter.load(args.model, "cpu")
    size, context = seg.config.propmask.image_size, PropagationOptions().context
    objects = chosen_tuning_objects(args)
    rows = []  # (group, area class, distance, source, propmask, copy, both, either, ceiling): one row per object and distance
    for name, volume, truth in objects:
        k = largest_slice(truth)
        prompt = truth[k] > 0
        mask = seg.segment(volume, MaskPrompt(k, prompt)).mask
        spacing_rc = (volume.axis_spacing(1), volume.axis_spacing(2))  # the axial slice's rows and columns
        group = "real" if name.startswith("real") else "synthetic + phantom"
        source = name.split(":")[0]  # e.g. real/brats
        for d in range(1, args.distance + 1):
            scores = []
            for t in (k - d, k + d):
                if 0 <= t < truth.shape[0] and truth[t].any():
                    got, true = mask[t] > 0, truth[t] > 0
                    scores.append((dice(got, true), dice(prompt, true), dice(got & prompt, true), dice(got | prompt, true),
                                   ceiling(true, prompt, spacing_rc, size, context)))
            if scores:
                rows.append((group, area_class(int(prompt.sum())), d, source, *np.mean(scores, axis=0)))
    print("| objects | distance | n | propmask | copy | both | either | ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    groups = [(g, lambda r, g=g: r[0] == g) for g in ("synthetic + phantom", "real")]
    groups += [(f"all, {c}", lambda r, c=c: r[1] == c) for c, _, _ in AREA_CLASSES]
    groups += [(src, lambda r, src=src: r[3] == src) for src in sorted({r[3] for r in rows if r[0] == "real"})]
    for label, keep in groups:
        for d in range(1, args.distance + 1):
            chosen = np.array([r[4:] for r in rows if keep(r) and r[2] == d])
            if not len(chosen):
                continue
            cells = []
            for col in chosen.T:
                lo, hi = bootstrap_ci(list(col)) if len(col) > 1 else (float("nan"), float("nan"))
                cells.append(f"{col.mean():.3f} [{lo:.3f}, {hi:.3f}]")
            print(f"| {label} | {d} | {len(chosen)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
