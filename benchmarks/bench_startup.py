"""Wall time of the `propsam` command as a user meets it: start-up, not the engine.

Runs `propsam --help`, `propsam info` and `propsam segment` (spleen CT, tight box on the largest
slice, shipped lite model) in fresh processes, several times each, and prints min and median wall
seconds. With --baseline it also runs the same commands on another copy of the package (e.g. the
commit before lazy imports) for a before/after table. It then lists what `propsam --help` and an
argument error import (`python -X importtime`): the heavy modules torch, scipy, SimpleITK,
pydicom, highdicom and matplotlib should be absent.

    git archive b761f70 PropSAMSlicer | tar -x -C /tmp/propsam-before
    OMP_NUM_THREADS=1 python benchmarks/bench_startup.py --baseline /tmp/propsam-before/PropSAMSlicer --repeats 5

The CPU is shared on our machines: compare figures from one run, and read the minimum.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PROPSAM_DATA_DIR", REPO.parent / "shared" / "data"))
HEAVY = ("torch", "scipy", "SimpleITK", "pydicom", "highdicom", "matplotlib", "numpy")


def spleen_box() -> tuple[Path, str, int] | None:
    import numpy as np
    import SimpleITK as sitk

    image = DATA / "msd-spleen2-crop" / "sub-spleen2_ct.nii.gz"
    label = DATA / "msd-spleen2-crop" / "sub-spleen2_ct_seg-manual.nii.gz"
    if not image.exists():
        return None
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label))) > 0
    z = int(truth.sum((1, 2)).argmax())
    rows, cols = np.nonzero(truth[z])
    return image, f"{cols.min()},{rows.min()},{cols.max()},{rows.max()}", z


def commands(workdir: Path) -> dict[str, list[str]]:
    cases = {"--help": ["--help"], "info": ["info"],
             "arg error": ["segment", "--image", "none.nii.gz", "--out", "m.nrrd", "--box", "1,2", "--slice-index", "0"]}
    spleen = spleen_box()
    if spleen is not None:
        image, box, z = spleen
        cases["segment"] = ["segment", "--image", str(image), "--out", str(workdir / "m.nrrd"), "--box", box,
                            "--slice-index", str(z), "--quiet", "--force", "--device", "cpu"]
    return cases


def wall(package_root: Path, args: list[str], repeats: int, cwd: Path) -> list[float]:
    env = dict(os.environ, PYTHONPATH=str(package_root), PYTHONDONTWRITEBYTECODE="1")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "propsam.cli", *args], env=env, cwd=cwd,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def imported_heavy(package_root: Path, args: list[str], cwd: Path) -> tuple[float, list[str]]:
    """Total import time (s) and the heavy top-level packages imported by `propsam ARGS`."""
    env = dict(os.environ, PYTHONPATH=str(package_root), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "propsam.cli", *args], env=env, cwd=cwd,
                            capture_output=True, text=True)
    total, heavy = 0, set()
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|", 2)
        if not cumulative.strip().isdigit():
            continue  # the column titles
        if len(name) - len(name.lstrip()) == 1:  # a top-level import (nested ones are indented further)
            total += int(cumulative)
        top = name.strip().split(".")[0]
        if top in HEAVY:
            heavy.add(top)
    return total / 1e6, sorted(heavy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="folder holding another copy of the `propsam` package")
    args = parser.parse_args()
    roots = {"this checkout": REPO / "PropSAMSlicer"}
    if args.baseline:
        roots = {"baseline": args.baseline, **roots}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cases = commands(workdir)
        print(f"python {sys.version.split()[0]}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.repeats} runs each\n")
        print("| command | " + " | ".join(f"{name} min / median (s)" for name in roots) + " |")
        print("|---|" + "---|" * len(roots))
        for label, argv in cases.items():
            cells = []
            for root in roots.values():
                times = wall(root, argv, args.repeats, workdir)
                cells.append(f"{min(times):.2f} / {statistics.median(times):.2f}")
            print(f"| `propsam {label}` | " + " | ".join(cells) + " |")
        print("\nimports (python -X importtime; sum of top-level import times, heavy packages imported):")
        for label in ("--help", "arg error"):
            for name, root in roots.items():
                seconds, heavy = imported_heavy(root, cases[label], workdir)
                print(f"- `propsam {label}` ({name}): {seconds:.2f} s; {', '.join(heavy) or 'none of ' + ', '.join(HEAVY)}")


if __name__ == "__main__":
    main()
