"""Engine speed and memory per configuration and device.

For each configuration (lite, paper; random weights: speed does not depend on their values)
and each available device, propagates through a synthetic object spanning 80 and 20 slices and
prints seconds per object and per slice, peak memory, and achieved GFLOP/s as a fraction of a
matmul peak measured in the same run. Each case runs in a fresh process so peaks are its own.

    python benchmarks/bench_engine.py [--configs lite,paper] [--devices cpu,cuda] [--repeats 2]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import subprocess
import sys
import time

import numpy as np
import torch


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


SPACING_ZYX = (1.5, 0.8, 0.8)  # mm


def ellipsoid_object(slices: int) -> tuple[np.ndarray, np.ndarray, int, tuple[int, int]]:
    """An ellipsoid spanning `slices` 1.5 mm slices, 60 mm across in-plane at 0.8 mm pixels, on
    noise (also bench_tta's object): (volume (Z, 160, 160) float32, its mask, the centre slice,
    (first, last) slice of the object)."""
    shape = (slices + 20, 160, 160)
    rng = np.random.default_rng(0)
    volume = rng.normal(0, 10, shape).astype(np.float32)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = shape[0] // 2
    inside = ((zz - centre) / (slices / 2)) ** 2 + ((yy - 80) / 37) ** 2 + ((xx - 80) / 37) ** 2 <= 1
    volume[inside] += 150
    return volume, inside, centre, (centre - slices // 2, centre + slices // 2 - 1)


def run_case(config_name: str, device_name: str, slices: int, repeats: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from propsam.config import named_config
    from propsam.engine.device import cpu_threads, pick_device
    from propsam.engine.propagation import PropagationOptions, propagate, window_size
    from propsam.modeling import build_network

    device = pick_device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    name, _, extra = config_name.partition("+")
    config = named_config(name).propmask
    if extra == "memory":  # e.g. lite+memory: the shipped size with the v2 prompt memory
        config = replace(config, prompt_memory=True)
    torch.manual_seed(0)
    net = build_network(config).to(device).eval()
    volume, inside, centre, bounds = ellipsoid_object(slices)
    guide = inside[centre]
    # no stop rule: a random network would end a side anywhere (the leak limit too), and every case must run the whole object
    options = PropagationOptions(presence_threshold=0.0, min_area_px=0, min_area_fraction=0.0, max_area_ratio=0.0)
    args = (net, config.image_size, volume, SPACING_ZYX, centre, guide, device, options, bounds)

    window = window_size(options.thickness_mm, SPACING_ZYX[0], options.max_window)
    with FlopCounterMode(display=False) as counter:  # one round's FLOPs, counted not estimated
        propagate(*args[:-1], bounds=(centre - 1, centre + 1))
    # every round sends a full window per side (shorter sides are padded)
    flops_per_slice = counter.get_total_flops() / (2 * window)
    propagate(*args[:-1], bounds=bounds)  # warm-up
    times, cpu_times = [], []  # CPU time too: on a shared machine wall time also counts waiting
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        _, stats = propagate(*args[:-1], bounds=bounds)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    seconds = min(times)
    peak = matmul_gflops(device)
    computed_slices = stats.rounds * 2 * window
    achieved = flops_per_slice * computed_slices / seconds / 1e9
    return {
        "config": config_name, "device": str(device), "threads": torch.get_num_threads(), "object_slices": slices,
        "slices_predicted": stats.slices_predicted, "rounds": stats.rounds, "seconds_per_object": round(seconds, 3),
        "cpu_seconds_per_object": round(min(cpu_times), 3),
        "seconds_per_slice": round(seconds / stats.slices_predicted, 4), "peak_memory_mb": round(peak_memory_mb(device)),
        "gflop_per_adjacent_slice": round(flops_per_slice / 1e9, 2), "achieved_gflops": round(achieved, 1),
        "matmul_peak_gflops": round(peak, 1), "fraction_of_peak": round(achieved / peak, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="lite,paper", help="named configurations; NAME+memory adds the prompt memory")
    parser.add_argument("--devices", default="cpu" + (",cuda" if torch.cuda.is_available() else ""))
    parser.add_argument("--slices", default="80,20")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        config, device, slices = args.case.split(":")
        print(json.dumps(run_case(config, device, int(slices), args.repeats)))
        return
    rows = []
    for config in args.configs.split(","):
        for device in args.devices.split(","):
            for slices in args.slices.split(","):
                out = subprocess.run([sys.executable, __file__, "--case", f"{config}:{device}:{slices}", "--repeats", str(args.repeats)],
                                     capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), file=sys.stderr)
    keys = ["config", "device", "threads", "object_slices", "rounds", "seconds_per_object", "cpu_seconds_per_object", "seconds_per_slice",
            "peak_memory_mb", "gflop_per_adjacent_slice", "achieved_gflops", "matmul_peak_gflops", "fraction_of_peak"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
