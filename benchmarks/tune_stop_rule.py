"""Pick the stop rule's settings (and measure the prompt memory) on TUNING objects, never the evaluation set.

Tuning objects are synthetic volumes made from the training split's label maps (seeds 700000+,
apart from training's 5,000,000+) and procedural phantoms (seeds 800000+, apart from training's
1,000,000+ and evaluation's 900000+); with `--real N`, also N real objects of the manifest's
TRAINING split (read with their file geometry, as the CLI reads them; evaluation subjects are never
among them). The networks have seen those subjects, so their figures are optimistic; they are there
because real small lesions taper and fade as no synthetic object does. Each object is prompted on
its largest axial slice with its mask and with its tight box; each propagation variant is scored by
3D Dice and by the error at each end (slices). Prints a markdown table; `--out` also writes it.

    python benchmarks/tune_stop_rule.py --model lite --objects 40 --real 60 [--variants ...] [--out results/stop_rule_tuning.md]

`--model` may be given more than once (say a trained arm beside its control): every variant then
runs with each model, labelled "model: variant", paired against the first model's first variant.
Rows written with `--rows-out` are labelled so with one model too, for `paired_seeds.py`.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from propsam.engine.prompts import BoxPrompt, MaskPrompt
from propsam.engine.roi import mask_bbox, slice_extent
from propsam.engine.segmenter import Segmenter, SegmentOptions
from propsam.engine.tta import parse_tta, tta_name
from propsam.evaluation.metrics import dice
from propsam.evaluation.objects import entry_objects, largest_slice
from propsam.evaluation.report import bootstrap_ci
from propsam.io.volume import Volume
from propsam.training.phantom_sources import phantom_source
from propsam.training.sources import manifest_entries
from propsam.training.synthesis import load_label_maps, synthetic_source
from propsam.training.train import default_data_dir

MAPS = ["totalseg_ct", "totalseg_ct_sm", "totalseg_mr", "mni152", "voxelmorph_t1", "infant_brain", "spine_ct_vert", "spine_ct_subreg"]


def tuning_objects(count: int, seed: int = 0):
    """(name, Volume, truth) for `count` objects spanning >= 3 axial slices, half synthetic, half phantom."""
    rng = np.random.default_rng(seed)
    maps = load_label_maps(default_data_dir(), MAPS)
    out, n = [], 0
    while len(out) < count:
        synthetic = n % 2 == 0
        source = synthetic_source(maps, 700_000 + n) if synthetic else phantom_source(800_000 + n, 1.0)
        n += 1
        objects = [o for o in source.objects if o.bbox[0].stop - o.bbox[0].start >= 3]
        if not objects:
            continue
        obj = objects[int(rng.integers(len(objects)))]
        spacing_xyz = tuple(float(s) for s in source.spacing_zyx[::-1])
        volume = Volume(source.image, spacing_xyz, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        group = "synthetic" if synthetic else "phantom"
        out.append((f"{group}:{source.id}/{obj.name}", volume, obj.full_mask(source.image.shape).astype(np.uint8)))
    return out


def real_tuning_objects(count: int, per_dataset: int = 8, min_slices: int = 5, seed: int = 0):
    """(name, Volume, truth) for up to `count` real objects of the TRAINING split, at most
    `per_dataset` per dataset (so no dataset's many small objects swamp the rest), spanning
    >= min_slices axial slices, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    data_dir = default_data_dir()
    by_dataset: dict[str, list] = {}
    for entry in manifest_entries(data_dir, "train"):
        if "image" in entry:
            by_dataset.setdefault(entry["dataset"], []).extend(
                (f"real/{entry['dataset']}:{entry['id']}/{o.name}", o.volume, o.truth) for o in entry_objects(entry, data_dir) if o.slices >= min_slices)
    chosen = []
    for objects in by_dataset.values():
        chosen += [objects[i] for i in sorted(rng.permutation(len(objects))[:per_dataset])]
    return [chosen[i] for i in sorted(rng.permutation(len(chosen))[:count])]


def add_tuning_arguments(parser) -> None:
    """--objects and --real as the probes of issue 9 take them: the 86 tuning objects by default."""
    parser.add_argument("--objects", type=int, default=30, help="synthetic and phantom tuning objects")
    parser.add_argument("--real", type=int, default=56, help="real objects of the training split")


def chosen_tuning_objects(args) -> list:
    """(name, Volume, truth) of the tuning objects that --objects and --real ask for."""
    return tuning_objects(args.objects) + (real_tuning_objects(args.real) if args.real else [])


# every variant names its leak limit: the engine's default is one of the variants (leak limit 2x)
VARIANTS = {
    "v1 rule (patience 1, no leak limit)": dict(stop_patience=1, max_area_ratio=0.0),
    "patience 2": dict(stop_patience=2, max_area_ratio=0.0),
    "leak limit 1.5x": dict(stop_patience=1, max_area_ratio=1.5),
    "leak limit 2x": dict(stop_patience=1, max_area_ratio=2.0),
    "patience 2 + leak limit 1.5x": dict(stop_patience=2, max_area_ratio=1.5),
    "patience 2 + leak limit 2x": dict(stop_patience=2, max_area_ratio=2.0),
    "presence 0.4": dict(presence_threshold=0.4, max_area_ratio=0.0),
    "presence 0.3": dict(presence_threshold=0.3, max_area_ratio=0.0),
    "presence 0.2": dict(presence_threshold=0.2, max_area_ratio=0.0),
    "presence 0.3 + leak limit 2x": dict(presence_threshold=0.3, max_area_ratio=2.0),
    "growth 1.5x": dict(max_growth=1.5, max_area_ratio=0.0),
    "growth 2x": dict(max_growth=2.0, max_area_ratio=0.0),
    "growth 1.5x + leak limit 2x": dict(max_growth=1.5, max_area_ratio=2.0),
    # the propagation window and the crop's context, with the shipped stop rule (leak limit 2x)
    "thickness 10 mm": dict(thickness_mm=10.0, max_area_ratio=2.0),
    "thickness 15 mm": dict(thickness_mm=15.0, max_area_ratio=2.0),
    "thickness 30 mm": dict(thickness_mm=30.0, max_area_ratio=2.0),
    "context 1.25": dict(context=1.25, max_area_ratio=2.0),
    "context 2.0": dict(context=2.0, max_area_ratio=2.0),
    # an end is judged again from the slice next to it (the shipped rule otherwise)
    "confirm end": dict(confirm_end=True, max_area_ratio=2.0),
    "confirm end + patience 2": dict(confirm_end=True, stop_patience=2, max_area_ratio=2.0),
    # PropMask's probability cut at another level than 0.5 (the guides, the areas judged and the result)
    "mask threshold 0.3": dict(mask_threshold=0.3, max_area_ratio=2.0),
    "mask threshold 0.4": dict(mask_threshold=0.4, max_area_ratio=2.0),
    "mask threshold 0.6": dict(mask_threshold=0.6, max_area_ratio=2.0),
    "mask threshold 0.7": dict(mask_threshold=0.7, max_area_ratio=2.0),
    "mask threshold 0.8": dict(mask_threshold=0.8, max_area_ratio=2.0),
    # a round reaches at most this x the prompt's radius along the axis (thin objects in short steps)
    "window per radius 0.25": dict(window_per_radius=0.25, max_area_ratio=2.0),
    "window per radius 0.5": dict(window_per_radius=0.5, max_area_ratio=2.0),
    "window per radius 1": dict(window_per_radius=1.0, max_area_ratio=2.0),
    "window per radius 2": dict(window_per_radius=2.0, max_area_ratio=2.0),
    # PropMask averaged over more in-plane orientations (Box2Mask's 8 as shipped; "tta" is the CLI's --tta)
    "propmask tta 2": dict(tta="8x2", max_area_ratio=2.0),
    "propmask tta 4": dict(tta="8x4", max_area_ratio=2.0),
    "propmask tta 8": dict(tta="8x8", max_area_ratio=2.0),
    # after a faded or too-small end, the object's intensity followed a few more slices (clear outlines only)
    "intensity tail 3": dict(intensity_tail=3, max_area_ratio=2.0),
    "intensity tail 8": dict(intensity_tail=8, max_area_ratio=2.0),
    "intensity tail 8 level 0.3": dict(intensity_tail=8, tail_level=0.3, max_area_ratio=2.0),
    "intensity tail 8 sep 0.8": dict(intensity_tail=8, tail_min_separability=0.8, max_area_ratio=2.0),
    "intensity tail 16 growth 1.25": dict(intensity_tail=16, tail_growth=1.25, max_area_ratio=2.0),
    "intensity tail 16 growth 1.1": dict(intensity_tail=16, tail_growth=1.1, max_area_ratio=2.0),
}


def run(model: str, objects, variants: dict, memory: bool, prompts=("mask", "box"), label_model: bool = False,
        seg: Segmenter | None = None) -> list[dict]:
    """Every variant on every object; `seg` (default: `model` loaded on the CPU) runs them and
    `model` labels them."""
    seg = seg or Segmenter.load(model, "cpu")
    rows = []
    variants = {f"{model}: {v}" if label_model else v: kw for v, kw in variants.items()}
    for (name, volume, truth), (label, kw) in itertools.product(objects, variants.items()):
        k = largest_slice(truth)
        plane = truth[k] > 0
        r0, c0, r1, c1 = mask_bbox(plane)
        first, last = slice_extent(truth, axis=0)
        made = {"mask": MaskPrompt(k, plane), "box": BoxPrompt(k, (c0, r0, max(c1, c0 + 1), max(r1, r0 + 1)))}
        for prompt_kind, prompt in ((kind, made[kind]) for kind in prompts):
            rule = {key: value for key, value in kw.items() if key != "tta"}  # the rest are PropagationOptions
            options = SegmentOptions(propagation=replace(SegmentOptions().propagation, prompt_memory=memory, **rule),
                                     tta=parse_tta(kw.get("tta", tta_name(SegmentOptions().tta))))
            start = time.perf_counter()
            result = seg.segment(volume, prompt, options)
            p_first, p_last = result.stats.extent
            rows.append({"variant": label, "prompt": prompt_kind, "object": name, "group": name.split(":")[0],
                         "dice": dice(result.mask, truth), "end_err": max(abs(p_first - first), abs(p_last - last)),
                         "short": int(p_first > first) + int(p_last < last), "seconds": time.perf_counter() - start,
                         "prompt_dice": dice(result.prompt_mask, plane), **end_losses(result.mask, truth),
                         **end_reasons(result.stats, first, last)})
            print(f"{label} | {prompt_kind} | {name} | {rows[-1]['dice']:.3f}", file=sys.stderr, flush=True)
    return rows


def end_losses(mask: np.ndarray, truth: np.ndarray) -> dict:
    """Where a run's Dice goes: `dice_no_run_on` is its Dice with the prediction cut to the true
    extent (what ends that never ran on would give), `dice_shared_slices` its Dice over the slices
    both extents share (the in-plane quality), `truth_beyond_ends` the share of the truth's voxels
    on slices past the predicted ends (what ends that never stopped short would add back)."""
    first, last = slice_extent(truth, axis=0)
    p_first, p_last = slice_extent(mask, axis=0) if mask.any() else (first, first - 1)
    lo, hi = max(first, p_first), min(last, p_last)
    cut = np.zeros_like(mask)
    cut[first : last + 1] = mask[first : last + 1]
    outside = np.ones(truth.shape[0], bool)
    outside[p_first : p_last + 1] = False
    return {"dice_no_run_on": dice(cut, truth), "dice_shared_slices": dice(mask[lo : hi + 1], truth[lo : hi + 1]) if lo <= hi else 0.0,
            "truth_beyond_ends": float(truth[outside].sum() / max(truth.sum(), 1))}


def end_reasons(stats, first: int, last: int) -> dict:
    """Each end's signed error in slices (+ runs past the true end, - stops short) and why the
    engine stopped there (PropagationStats.stop_reasons: faded out, too small, leak limit, edge)."""
    p_first, p_last = stats.extent
    return {"lower_err": first - p_first, "lower_why": stats.stop_reasons.get(-1, ""),
            "upper_err": p_last - last, "upper_why": stats.stop_reasons.get(1, "")}


def write_rows(path: str, rows: list[dict]) -> None:
    """Every run's row as CSV (--rows-out), for paired_seeds.py and later tables."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def table(rows: list[dict], title: str) -> str:
    """Per variant and prompt: mean Dice (all, per group), end errors, and the paired difference
    from the first variant with a bootstrap 95 % interval over the tuning objects."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = [f"### {title}", "",
             "| variant | prompt | n | mean Dice | " + " | ".join(f"{g} (n)" for g in groups)
             + f" | − {variants[0]} [95 %] | median worst-end error (slices) | p90 worst-end error | ends stopped short "
             "| prompt-slice 2D Dice |",
             "|---|---|---|---|" + "---|" * len(groups) + "---|---|---|---|---|"]
    for variant in variants:
        for prompt in dict.fromkeys(r["prompt"] for r in rows):
            sel = [r for r in rows if r["variant"] == variant and r["prompt"] == prompt]
            base = {r["object"]: r["dice"] for r in rows if r["variant"] == variants[0] and r["prompt"] == prompt}
            diffs = [r["dice"] - base[r["object"]] for r in sel]
            lo, hi = bootstrap_ci(diffs)
            err = np.array([r["end_err"] for r in sel])
            per_group = []
            for g in groups:
                values = [r["dice"] for r in sel if r["group"] == g]
                per_group.append(f"{np.mean(values):.3f} ({len(values)})")
            lines.append(f"| {variant} | {prompt} | {len(sel)} | {np.mean([r['dice'] for r in sel]):.3f} | "
                         + " | ".join(per_group) + f" | {np.mean(diffs):+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                         f"{np.median(err):.0f} | {np.percentile(err, 90):.0f} | {sum(r['short'] for r in sel)} of {2 * len(sel)} | "
                         f"{np.mean([r['prompt_dice'] for r in sel]):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="a model name or folder; repeat to compare models (default: lite)")
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--real", type=int, default=0, help="also this many real objects of the training split")
    parser.add_argument("--variants", help="variant names separated by ';' (default: all)")
    parser.add_argument("--prompts", default="mask,box", help="which prompts: mask, box or both (a Box2Mask comparison needs box only)")
    parser.add_argument("--memory-ablation", action="store_true", help="also run every variant with the memory off")
    parser.add_argument("--out")
    parser.add_argument("--rows-out", help="also write every run's row (variant, prompt, object, Dice, end error, the loss split of end_losses, "
                        "each end's error and reason) as CSV")
    args = parser.parse_args(argv)
    variants = VARIANTS
    if args.variants:
        names = [v.strip() for v in args.variants.split(";")]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
        variants = {v: VARIANTS[v] for v in names}
    made, real = tuning_objects(args.objects), real_tuning_objects(args.real)
    objects = made + real
    text = (f"Tuning objects: {len(objects)} ({len(made)} synthetic from training label maps and phantoms, "
            f"{len(real)} real of the training split; no evaluation subject)\n\n")
    prompts = [p.strip() for p in args.prompts.split(",")]
    if not prompts or set(prompts) - {"mask", "box"}:
        parser.error(f"--prompts takes mask, box or both, got {args.prompts!r}")
    models = args.model or ["lite"]
    # rows written for pairing (paired_seeds.py reads the model before ':') always name their model
    labelled = len(models) > 1 or args.rows_out is not None
    title = ", ".join(models)
    rows = [r for m in models for r in run(m, objects, variants, True, prompts, labelled)]
    text += table(rows, f"{title}: stop-rule variants, prompt memory on")
    if args.rows_out:
        write_rows(args.rows_out, rows)
    if args.memory_ablation:
        text += "\n" + table([r for m in models for r in run(m, objects, variants, False, prompts, labelled)], f"{title}: prompt memory off")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
