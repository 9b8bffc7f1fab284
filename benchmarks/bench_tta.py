"""Cost of in-plane test-time averaging (engine/tta.py): seconds per 80-slice object, whole segment.

Runs the shipped model (default lite) through Segmenter.segment on the same synthetic object as
bench_engine.py (an ellipsoid 60 mm across on 1.5 mm slices, spanning 80 slices), prompted by a
two-view box so that exactly the object's slices are propagated (stop rules off: the cost of an
80-slice object, not of where a model happens to stop). Box2Mask and PropMask average over
1/2/4/8 orientations as listed; a '-stored' setting skips the content view (engine/content_view.py),
so its row beside the plain one is the content view's cost. Seconds are the best of --repeats
after a warm-up, as wall time and as this process's CPU time (on a machine shared with other
jobs, wall time of a multi-threaded run is inflated by waiting; CPU time at --threads 1 is not,
and is close to one idle core's wall time). The speed target is lite <= 2 s wall per 80-slice
object on 2 idle CPU cores.

    python benchmarks/bench_tta.py [--model lite] [--device cpu] [--threads N] [--repeats 3] [--settings 1x1,8x1,8x2]
"""

from __future__ import annotations

import argparse
import time

import torch

DEFAULT_SETTINGS = "1x1,2x1,4x1,8x1,8x1-stored,1x2,8x2,8x4,8x8"  # box2mask x propmask orientations (engine/tta.py)


def synthetic_object(slices: int = 80):
    """bench_engine's ellipsoid as a Volume, and a two-view box around it."""
    from bench_engine import SPACING_ZYX, ellipsoid_object  # the script's own folder is on sys.path
    from propsam.io.volume import Volume

    array, _, _, (first, last) = ellipsoid_object(slices)
    volume = Volume(array, SPACING_ZYX[::-1], (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return volume, (43, 43, first, 117, 117, last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lite")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all usable cores)")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated --tta settings (BOX2MASKxPROPMASK[-stored])")
    args = parser.parse_args()

    from propsam.engine.prompts import TwoViewBoxPrompt
    from propsam.engine.propagation import PropagationOptions
    from propsam.engine.segmenter import SegmentOptions, Segmenter
    from propsam.engine.tta import parse_tta

    segmenter = Segmenter.load(args.model, args.device, args.threads)
    volume, box3d = synthetic_object(args.slices)
    no_stop = PropagationOptions(presence_threshold=0.0, min_area_px=0, min_area_fraction=0.0)
    print(f"model {args.model}, device {segmenter.device}, torch threads {torch.get_num_threads()}, "
          f"{args.slices}-slice object, best of {args.repeats}")
    print("| setting | Box2Mask orientations | PropMask orientations | content view | slices predicted | wall s per object | "
          "CPU s per object | x first setting (CPU) |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    base = None
    for setting in args.settings.split(","):
        tta = parse_tta(setting)
        options = SegmentOptions(propagation=no_stop, tta=tta)
        segmenter.segment(volume, TwoViewBoxPrompt(box3d), options)  # warm-up
        walls, cpus = [], []
        for _ in range(args.repeats):
            start, cpu = time.perf_counter(), time.process_time()
            result = segmenter.segment(volume, TwoViewBoxPrompt(box3d), options)
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
        base = base if base is not None else min(cpus)
        print(f"| {setting} | {tta.box2mask} | {tta.propmask} | {'on' if tta.content_view else 'off'} | {result.stats.slices_predicted} | {min(walls):.2f} | {min(cpus):.2f} | {min(cpus) / base:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
