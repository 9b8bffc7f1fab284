"""Seconds per correction against a full run, on an object spanning 80 slices.

The object is bench_engine.py's ellipsoid (60 mm across at 0.8 mm pixels, 1.5 mm slices), here
filling an 80-slice volume, with the lite (or paper) configuration and seeded random weights:
speed does not depend on the weights' values, and the stop rule is switched off so that every
case does the same, known work (a side runs to the volume's edge, as on a real 80-slice object).
The prompt is the middle slice (40). Each case goes through the public API
(`Segmenter.segment`, `engine.corrections.apply_correction`); best of --repeats.

    python benchmarks/bench_corrections.py [--config lite] [--device cpu] [--repeats 3]

Pin the cores with `taskset -c 0,1` for a 2-core figure; threads follow the process's affinity.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def build(config_name: str, device_name: str):
    from propsam.config import named_config
    from propsam.engine.device import cpu_threads, pick_device
    from propsam.engine.segmenter import Segmenter
    from propsam.modeling import build_network

    device = pick_device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    config = named_config(config_name)
    torch.manual_seed(0)
    nets = {name: build_network(getattr(config, name)).to(device).eval() for name in ("box2mask", "propmask")}
    return Segmenter(config, nets, device)


def main() -> None:
    from propsam.engine.corrections import Correction, apply_correction
    from propsam.engine.prompts import MaskPrompt
    from propsam.engine.propagation import PropagationOptions
    from propsam.engine.segmenter import SegmentOptions
    from propsam.io.volume import Volume

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="lite")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    segmenter = build(args.config, args.device)

    slices, centre = 80, 40
    shape = (slices, 160, 160)
    rng = np.random.default_rng(0)
    array = rng.normal(0, 10, shape).astype(np.float32)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = ((zz - (slices - 1) / 2) / (slices / 2)) ** 2 + ((yy - 80) / 37) ** 2 + ((xx - 80) / 37) ** 2 <= 1
    array[inside] += 150
    volume = Volume(array, (0.8, 0.8, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    options = SegmentOptions(propagation=PropagationOptions(presence_threshold=0.0, min_area_px=0, min_area_fraction=0.0))
    prompt = MaskPrompt(centre, inside[centre])

    def best(fn):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return min(times), out

    run_seconds, run = best(lambda: segmenter.segment(volume, prompt, options))
    ys, xs = np.nonzero(inside[centre + 10])
    cases = [
        ("mask on slice 50 (29 slices re-propagated)", Correction("mask", 50, mask=inside[50])),
        ("mask on slice 60 (19 slices)", Correction("mask", 60, mask=inside[60])),
        ("mask on slice 70 (9 slices)", Correction("mask", 70, mask=inside[70])),
        ("box on slice 50 (Box2Mask + 29 slices)", Correction("box", 50, box=(xs.min(), ys.min(), xs.max(), ys.max()))),
        ("stop on slice 60", Correction("stop", 60)),
        ("mask on the prompt slice (both ways, 79 slices)", Correction("mask", centre, mask=inside[centre])),
    ]
    print(f"{args.config} on {segmenter.device} with {torch.get_num_threads()} thread(s); 80-slice object, prompt slice {centre}")
    print("| case | seconds | network rounds | slices predicted |")
    print("|---|---:|---:|---:|")
    print(f"| full run (both ways) | {run_seconds:.3f} | {run.stats.rounds} | {run.stats.slices_predicted} |")
    for name, correction in cases:
        seconds, fixed = best(lambda: apply_correction(segmenter, volume, run, correction, options))
        print(f"| {name} | {seconds:.3f} | {fixed.stats.rounds} | {fixed.stats.slices_predicted} |")


if __name__ == "__main__":
    main()
