"""Throughput of the device training path: batches alone, GPU synthesis, and training steps.

Loads a training pack (`propsam pack-data`), then on the chosen device prints
- PropMask tasks/s (2D and 2.5D) and Box2Mask crops/s of the device sampler alone (real + phantom volumes),
- synthetic volumes/s of device_synth (one group),
- tasks/s of whole training steps (sampler + forward + backward + AdamW, bf16 autocast on CUDA)
  through the Trainer, for a tiny network and for lite, each for `--seconds`.

    python benchmarks/bench_device_sampler.py --pack cache/train_pack.npz [--device cpu|cuda] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PropSAMSlicer"))

from propsam.training.device_data import pack_atlas, sample_box2mask_batch, sample_propmask_batch  # noqa: E402
from propsam.training.device_synth import SynthOptions, SynthPoolGPU  # noqa: E402
from propsam.training.pack import load_pack  # noqa: E402
from propsam.training.tasks import TaskOptions  # noqa: E402
from propsam.training.train import TrainConfig, Trainer  # noqa: E402

TINY = {"image_size": 32, "base_channels": 4, "max_channels": 16, "stages": 4}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def rate(fn, count: int, repeats: int, device) -> float:
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return count * repeats / (time.perf_counter() - start)


def train_rate(pack: str, network: str, size: str, batch: int, seconds: float, device: str) -> dict:
    recipe = json.loads((REPO / f"PropSAMSlicer/propsam/training/recipes/lite_v2_{network}_gpu.json").read_text())
    overrides = dict(recipe.get("network_overrides", {}))
    if size == "tiny":
        overrides.update(TINY, **({"attention_stages": 2} if network == "propmask" else {}))
        recipe["init_from"] = ""
    with tempfile.TemporaryDirectory() as tmp:
        recipe.update(out_dir=tmp, pack=pack, network_overrides=overrides, batch_size=batch, max_minutes=seconds / 60,
                      log_every=10**9, checkpoint_minutes=0, init_from=str(REPO / recipe["init_from"]) if recipe["init_from"] else "")
        if device == "cpu":
            recipe["threads"] = 1
        trainer = Trainer(TrainConfig(**recipe))
        trainer._batch()  # first synthesis outside the timing
        start = time.perf_counter()
        trainer.run()
        elapsed = time.perf_counter() - start
    return {"network": network, "size": size, "batch": batch, "steps": trainer.step, "tasks_per_s": round(trainer.tasks_seen / elapsed, 2)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pack", default=str(REPO / "cache/train_pack.npz"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--compare-cpu", action="store_true", help="also time tasks.py's numpy sampler on the same volumes")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    big = args.device != "cpu"
    t0 = time.perf_counter()
    volumes, maps = load_pack(Path(args.pack))
    atlas = pack_atlas(volumes, args.device, phantom_total=48 * 0.4)
    _sync(args.device)
    print(f"pack {Path(args.pack).stat().st_size / 2**20:.1f} MiB, {len(volumes)} volumes, atlas in {time.perf_counter() - t0:.1f} s "
          f"on {args.device}", flush=True)
    gen = torch.Generator(device=args.device).manual_seed(0)
    opt = TaskOptions(memory=True, perturb_guide=0.25)
    n_pm, n_b2m = (256, 1024) if big else (16, 64)
    print(f"sampler PropMask (K=8, memory): {rate(lambda: sample_propmask_batch(atlas, n_pm, gen, opt), n_pm, 5, args.device):.1f} tasks/s "
          f"(batches of {n_pm})", flush=True)
    wide = replace(opt, in_channels=3)  # 2.5D: the same tasks, three planes per slice
    print(f"sampler PropMask 2.5D (K=8, memory, 3 slices each): "
          f"{rate(lambda: sample_propmask_batch(atlas, n_pm, gen, wide), n_pm, 5, args.device):.1f} tasks/s", flush=True)
    print(f"sampler Box2Mask: {rate(lambda: sample_box2mask_batch(atlas, n_b2m, gen, opt), n_b2m, 5, args.device):.1f} crops/s "
          f"(batches of {n_b2m})", flush=True)
    if args.compare_cpu:
        import numpy as np

        from propsam.training.sources import SourceVolume, objects_from_labels
        from propsam.training.tasks import sample_box2mask, sample_propmask_task

        sources = [SourceVolume(v.id, v.image, v.spacing_zyx, v.modality, v.weight, objects_from_labels(v.labels, v.objects))
                   for v in volumes]
        rng = np.random.default_rng(0)
        print(f"tasks.py sampler PropMask (numpy, 1 process): {rate(lambda: sample_propmask_task(sources, rng, opt), 1, 16, 'cpu'):.1f} "
              f"tasks/s; Box2Mask: {rate(lambda: sample_box2mask(sources, rng, opt), 1, 64, 'cpu'):.1f} crops/s", flush=True)
    group = 16 if big else 4
    pool = SynthPoolGPU([v for v in volumes if v.id in maps], args.device, SynthOptions(volumes=group, groups=1), total_weight=1.0)
    print(f"synthesis: {rate(lambda: pool.refresh(gen), group, 2, args.device):.2f} volumes/s (groups of {group}, crops up to 72x128x128)",
          flush=True)
    if not args.skip_training:
        cases = [("propmask", "tiny", 128 if big else 8), ("propmask", "lite", 128 if big else 4),
                 ("box2mask", "tiny", 512 if big else 32), ("box2mask", "lite", 512 if big else 16)]
        for network, size, batch in cases:
            print(json.dumps(train_rate(args.pack, network, size, batch, args.seconds, args.device)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
