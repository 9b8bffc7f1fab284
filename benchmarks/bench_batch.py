"""Objects per minute: `propsam segment-batch` (model loaded once) against one `propsam segment`
call per object.

The objects are the spleen of the MSD spleen CT prompted with a tight box on each slice where it
is at least half its largest area (shipped lite model, CPU). Both ways write the same masks;
the script checks they are identical and prints wall seconds and objects/minute.

    OMP_NUM_THREADS=1 python benchmarks/bench_batch.py [--objects 8]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PROPSAM_DATA_DIR", REPO.parent / "shared" / "data"))


def prompts(count: int) -> tuple[Path, list[tuple[int, str]]]:
    image = DATA / "msd-spleen2-crop" / "sub-spleen2_ct.nii.gz"
    label = DATA / "msd-spleen2-crop" / "sub-spleen2_ct_seg-manual.nii.gz"
    if not image.exists():
        sys.exit(f"real data not available: {image} is missing (set PROPSAM_DATA_DIR)")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label))) > 0
    areas = truth.sum((1, 2))
    slices = [int(z) for z in np.nonzero(areas >= areas.max() / 2)[0]]
    picks = [slices[i % len(slices)] for i in range(count)]
    boxes = []
    for z in picks:
        rows, cols = np.nonzero(truth[z])
        boxes.append((z, f"{cols.min()},{rows.min()},{cols.max()},{rows.max()}"))
    return image, boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=8)
    args = parser.parse_args()
    image, boxes = prompts(args.objects)
    env = dict(os.environ, PYTHONPATH=str(REPO / "PropSAMSlicer"), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "propsam.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "single").mkdir()
        (tmp / "batch").mkdir()
        start = time.perf_counter()
        for k, (z, box) in enumerate(boxes):
            subprocess.run([*command, "segment", "--image", str(image), "--out", str(tmp / "single" / f"{k}.nrrd"),
                            "--box", box, "--slice-index", str(z), "--device", "cpu", "--quiet"],
                           env=env, check=True, stdout=subprocess.DEVNULL)
        single = time.perf_counter() - start
        with open(tmp / "prompts.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "out", "box", "slice_index"])
            for k, (z, box) in enumerate(boxes):
                writer.writerow([str(image), f"batch/{k}.nrrd", box, z])
        start = time.perf_counter()
        result = subprocess.run([*command, "segment-batch", str(tmp / "prompts.csv"), "--device", "cpu", "--quiet"],
                                env=env, check=True, capture_output=True, text=True)
        batch = time.perf_counter() - start
        same = all(
            np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp / "single" / f"{k}.nrrd"))),
                           sitk.GetArrayFromImage(sitk.ReadImage(str(tmp / "batch" / f"{k}.nrrd"))))
            for k in range(len(boxes))
        )
    n = len(boxes)
    print(f"{n} objects (spleen CT, box prompts), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"one `propsam segment` per object: {single:.1f} s wall, {n / single * 60:.1f} objects/minute")
    print(f"`propsam segment-batch`:          {batch:.1f} s wall, {n / batch * 60:.1f} objects/minute "
          f"({single / batch:.1f}x); masks identical: {same}")
    print("batch summary line: " + result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
