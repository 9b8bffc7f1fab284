"""Box2Mask normalization-window search: accuracy vs time per grid size.

For every evaluation object (data manifest, split "eval") and every axial slice holding at least
5 % of its largest area, boxes the slice's mask (tight, and scaled 1.0-1.25 like a hurried
user) and runs Box2Mask with each window grid. Prints mean 2D Dice and milliseconds per box.

    python benchmarks/bench_window_search.py [--model lite] [--max-slices 12]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from propsam.engine.box2mask_predictor import WindowSearch, box_to_mask
from propsam.engine.device import pick_device
from propsam.engine.roi import mask_bbox
from propsam.errors import InputError
from propsam.evaluation.metrics import dice
from propsam.training.sources import load_sources
from propsam.training.train import default_data_dir
from propsam.weights import load_bundle

GRIDS = {
    # name: lower x upper percentile grid, and whether pass 2 re-derives the window
    "1x1-single": WindowSearch((20.0,), (95.0,), refine=False),
    "1x1-refine": WindowSearch((20.0,), (95.0,), refine=True),
    "3x2-single": WindowSearch(refine=False),
    "3x2-refine": WindowSearch(refine=True),
    "5x3-refine": WindowSearch((5.0, 12.5, 20.0, 30.0, 40.0), (90.0, 92.5, 95.0), refine=True),
    "5x3-single": WindowSearch((5.0, 12.5, 20.0, 30.0, 40.0), (90.0, 92.5, 95.0), refine=False),
}


def jitter(box, shape, rng):
    c0, r0, c1, r1 = box
    scale = rng.uniform(1.0, 1.25)
    cc, cr, hc, hr = (c0 + c1) / 2, (r0 + r1) / 2, (c1 - c0) / 2 * scale, (r1 - r0) / 2 * scale
    return (max(0, int(cc - hc)), max(0, int(cr - hr)), min(shape[1] - 1, int(np.ceil(cc + hc))), min(shape[0] - 1, int(np.ceil(cr + hr))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lite")
    parser.add_argument("--max-slices", type=int, default=12, help="per object, evenly spread")
    parser.add_argument("--grids", help="comma-separated names to run (default: all)")
    args = parser.parse_args()
    device = pick_device("auto")
    config, _, nets = load_bundle(args.model, str(device))
    rng = np.random.default_rng(0)
    cases = []
    for source in load_sources(Path(default_data_dir()), "eval"):
        for obj in source.objects:
            mask = obj.full_mask(source.image.shape)
            areas = mask.sum((1, 2))
            slices = np.flatnonzero(areas >= max(16, 0.05 * areas.max()))
            for z in slices[np.linspace(0, len(slices) - 1, min(args.max_slices, len(slices))).round().astype(int)]:
                r0, c0, r1, c1 = mask_bbox(mask[z])
                tight = (c0, r0, max(c1, c0 + 1), max(r1, r0 + 1))
                cases.append((source.image[z], mask[z], tight, "tight"))
                cases.append((source.image[z], mask[z], jitter(tight, mask[z].shape, rng), "jittered"))
    print(f"{len(cases)} boxes on {device}")
    print("| window grid | Dice tight | Dice jittered | ms per box |")
    print("|---|---|---|---|")
    for name, search in GRIDS.items():
        if args.grids and name not in args.grids.split(","):
            continue
        scores = {"tight": [], "jittered": []}
        start = time.perf_counter()
        for plane, truth, box, kind in cases:
            try:
                pred = box_to_mask(nets["box2mask"], plane.astype(np.float32), box, config.box2mask.image_size, device, search)
            except InputError:
                pred = np.zeros_like(truth)
            scores[kind].append(dice(pred, truth))
        ms = (time.perf_counter() - start) / len(cases) * 1000
        print(f"| {name} | {np.mean(scores['tight']):.3f} | {np.mean(scores['jittered']):.3f} | {ms:.0f} |")


if __name__ == "__main__":
    main()
