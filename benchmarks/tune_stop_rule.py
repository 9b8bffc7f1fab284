"""Pick the stop rule's settings (and measure the prompt memory) on TUNING objects, never the evaluation set.

Tuning objects are synthetic volumes made from the training split's label maps (seeds 700000+,
apart from training's 5,000,000+) and procedural phantoms (seeds 800000+, apart from training's
1,000,000+ and evaluation's 900000+). Each object is prompted on its largest axial slice with its
mask and with its tight box; each propagation variant is scored by 3D Dice and by the error at
each end (slices). Prints a markdown table; `--out` also writes it.

    python benchmarks/tune_stop_rule.py --model runs/v2_bundle --objects 40 [--out results/stop_rule_tuning.md]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from propsam.engine.prompts import BoxPrompt, MaskPrompt
from propsam.engine.roi import mask_bbox, slice_extent
from propsam.engine.segmenter import Segmenter, SegmentOptions
from propsam.evaluation.metrics import dice
from propsam.io.volume import Volume
from propsam.training.phantom_sources import phantom_source
from propsam.training.synthesis import load_label_maps, synthetic_source
from propsam.training.train import default_data_dir

MAPS = ["totalseg_ct", "totalseg_ct_sm", "totalseg_mr", "mni152", "voxelmorph_t1", "infant_brain", "spine_ct_vert", "spine_ct_subreg"]


def tuning_objects(count: int, seed: int = 0):
    """(name, Volume, truth) for `count` objects spanning >= 3 axial slices, half synthetic, half phantom."""
    rng = np.random.default_rng(seed)
    maps = load_label_maps(default_data_dir(), MAPS)
    out, n = [], 0
    while len(out) < count:
        source = synthetic_source(maps, 700_000 + n) if n % 2 == 0 else phantom_source(800_000 + n, 1.0)
        n += 1
        objects = [o for o in source.objects if o.bbox[0].stop - o.bbox[0].start >= 3]
        if not objects:
            continue
        obj = objects[int(rng.integers(len(objects)))]
        spacing_xyz = tuple(float(s) for s in source.spacing_zyx[::-1])
        volume = Volume(source.image, spacing_xyz, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        out.append((f"{source.id}/{obj.name}", volume, obj.full_mask(source.image.shape).astype(np.uint8)))
    return out


VARIANTS = {
    "v1 rule (patience 1, no leak limit)": dict(stop_patience=1, max_area_ratio=0.0),
    "patience 2": dict(stop_patience=2, max_area_ratio=0.0),
    "leak limit 1.5x": dict(stop_patience=1, max_area_ratio=1.5),
    "leak limit 2x": dict(stop_patience=1, max_area_ratio=2.0),
    "patience 2 + leak limit 1.5x": dict(stop_patience=2, max_area_ratio=1.5),
    "patience 2 + leak limit 2x": dict(stop_patience=2, max_area_ratio=2.0),
}


def run(model: str, objects, variants: dict, memory: bool) -> list[dict]:
    seg = Segmenter.load(model, "cpu")
    rows = []
    for (name, volume, truth), (label, kw) in itertools.product(objects, variants.items()):
        k = int(truth.reshape(truth.shape[0], -1).sum(1).argmax())
        plane = truth[k] > 0
        r0, c0, r1, c1 = mask_bbox(plane)
        first, last = slice_extent(truth, axis=0)
        for prompt_kind, prompt in (("mask", MaskPrompt(k, plane)), ("box", BoxPrompt(k, (c0, r0, max(c1, c0 + 1), max(r1, r0 + 1))))):
            options = SegmentOptions(propagation=replace(SegmentOptions().propagation, prompt_memory=memory, **kw))
            start = time.perf_counter()
            result = seg.segment(volume, prompt, options)
            p_first, p_last = result.stats.extent
            rows.append({"variant": label, "prompt": prompt_kind, "object": name, "dice": dice(result.mask, truth),
                         "end_err": max(abs(p_first - first), abs(p_last - last)), "seconds": time.perf_counter() - start})
    return rows


def table(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| variant | prompt | n | mean Dice | median worst-end error (slices) | p90 worst-end error |",
             "|---|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for prompt in ("mask", "box"):
            sel = [r for r in rows if r["variant"] == variant and r["prompt"] == prompt]
            err = np.array([r["end_err"] for r in sel])
            lines.append(f"| {variant} | {prompt} | {len(sel)} | {np.mean([r['dice'] for r in sel]):.3f} | "
                         f"{np.median(err):.0f} | {np.percentile(err, 90):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lite")
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--memory-ablation", action="store_true", help="also run every variant with the memory off")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    objects = tuning_objects(args.objects)
    text = f"Tuning objects: {len(objects)} (synthetic from training label maps + phantoms; no evaluation subject)\n\n"
    text += table(run(args.model, objects, VARIANTS, memory=True), f"{args.model}: stop-rule variants, prompt memory on")
    if args.memory_ablation:
        text += "\n" + table(run(args.model, objects, VARIANTS, memory=False), f"{args.model}: prompt memory off")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
