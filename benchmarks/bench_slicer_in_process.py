"""Engine speed inside Slicer's process: the panel's job in an emulated Slicer main loop vs standalone.

In Slicer the main thread keeps the GIL while Qt idles. This drives the module's SegmentationJob
(shipped lite model, CPU) on an 80-slice synthetic object the way the panel's QTimer does, in an
event loop that idles holding the GIL (Testing/slicer_emulation.py), and prints: run time vs the
same run with the GIL free (standalone), how often Qt got control, and cancel latency. With
--old it also runs the previous panel's loop (a 100 ms timer that only polled).

    python benchmarks/bench_slicer_in_process.py [--slices 80] [--repeats 3] [--old]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "PropSAMSlicer"), str(REPO / "Testing")]

from slicer_emulation import EmulatedEventLoop  # noqa: E402

from PropSAMSlicerLib.worker import POLL_INTERVAL_MS, WAIT_SLICE_S, SegmentationJob  # noqa: E402
from propsam.engine.prompts import BoxPrompt  # noqa: E402
from propsam.engine.segmenter import SegmentOptions, cached_segmenter  # noqa: E402
from propsam.io.volume import Volume  # noqa: E402


def object_volume(slices: int) -> tuple[Volume, BoxPrompt]:
    """An ellipsoid spanning `slices` 1.5 mm slices, 60 mm across at 0.8 mm pixels (as bench_engine)."""
    shape = (slices + 20, 160, 160)
    rng = np.random.default_rng(0)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = shape[0] // 2
    inside = ((zz - centre) / (slices / 2)) ** 2 + ((yy - 80) / 37) ** 2 + ((xx - 80) / 37) ** 2 <= 1
    array = (rng.normal(0, 20, shape) + 300 * inside).astype(np.int16)
    volume = Volume(array=array, spacing=(0.8, 0.8, 1.5), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))
    return volume, BoxPrompt(centre, (42, 42, 118, 118), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--old", action="store_true", help="also run the previous poll-only panel loop once")
    args = parser.parse_args()
    volume, prompt = object_volume(args.slices)

    def work(status, progress, cancel):
        return cached_segmenter("lite", "cpu").segment(volume, prompt, SegmentOptions(), progress=progress,
                                                       cancel=cancel)

    first = SegmentationJob(work).start()  # model load
    start = time.monotonic()
    loop = EmulatedEventLoop(POLL_INTERVAL_MS)
    loop.run(first.service, lambda: first.done)
    print(f"first run (loads the model) in the emulated Slicer: {time.monotonic() - start:.2f} s, "
          f"longest GUI gap {loop.longest_gap * 1000:.0f} ms; extent {first.result.stats.extent}")

    standalone, emulated, gaps = [], [], []
    for _ in range(args.repeats):
        job = SegmentationJob(work)
        start = time.monotonic()
        job.start().wait()
        standalone.append(time.monotonic() - start)
        job = SegmentationJob(work).start()
        loop = EmulatedEventLoop(POLL_INTERVAL_MS)
        emulated.append(loop.run(job.service, lambda: job.done))
        gaps.extend(np.diff(loop.turns))
    gaps_ms = np.array(gaps) * 1000
    print(f"{args.slices}-slice object, lite, CPU, timer {POLL_INTERVAL_MS} ms, wait slice {WAIT_SLICE_S * 1000:.0f} ms")
    print(f"  standalone (GIL free)   : best {min(standalone):.2f} s, median {statistics.median(standalone):.2f} s")
    print(f"  emulated Slicer (panel) : best {min(emulated):.2f} s, median {statistics.median(emulated):.2f} s")
    print(f"  ratio                   : best/best {min(emulated) / min(standalone):.2f}x, "
          f"median/median {statistics.median(emulated) / statistics.median(standalone):.2f}x")
    print(f"  GUI serviced every      : median {np.median(gaps_ms):.0f} ms, 95% {np.percentile(gaps_ms, 95):.0f} ms, "
          f"longest {gaps_ms.max():.0f} ms ({len(gaps_ms)} ticks)")

    for label in ("cancel after the first round", "cancel after the first round (again)"):
        job = SegmentationJob(work).start()
        asked = {}

        def tick(job=job, asked=asked):
            if any(e[0] == "progress" for e in job.service()) and "at" not in asked:
                job.cancel()
                asked["at"] = time.monotonic()

        EmulatedEventLoop(POLL_INTERVAL_MS).run(tick, lambda job=job: job.done)
        panel = time.monotonic() - asked["at"]
        job.wait_engine()
        engine = time.monotonic() - asked["at"]
        print(f"  {label}: panel free after {panel * 1000:.0f} ms, engine stopped after {engine * 1000:.0f} ms "
              f"(at {job.progress[0]}/{job.progress[1]} slices)")

    if args.old:
        job = SegmentationJob(work).start()
        old = EmulatedEventLoop(100, 0).run(job.poll, lambda: job.done)
        print(f"  previous panel (100 ms timer, poll only): {old:.2f} s = {old / min(standalone):.1f}x standalone")


if __name__ == "__main__":
    main()
