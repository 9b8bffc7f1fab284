"""Can a PropMask fit what it is shown? Each recipe's network (warm start included) trains on one
fixed set of tasks, drawn once from the recipe's own training data, over and over; the mean loss
over the whole set is printed every few steps.

Issue 9's CPU and GPU arms all read the same (the 117,760-task GPU run's training loss went only
from 0.59 to 0.54), which could mean that the network cannot fit its tasks (capacity: a wider
network would help) or that the tasks cannot be fitted (a hidden outline or a guide that says too
little: no network would). A network that drives a fixed set's loss far down can fit it; two
networks that fall alike on the same set say that width is not what stops them.

    python benchmarks/fit_probe.py --recipe PropSAMSlicer/propsam/training/recipes/ablation/lite_v2_1_continued_cpu.json \\
        --recipe PropSAMSlicer/propsam/training/recipes/ablation/lite_v2_1_deep_seed2_cpu.json --tasks 64 --steps 400
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

from propsam.training.train import TrainConfig, Trainer


def fixed_tasks(trainer: Trainer, count: int) -> list[dict]:
    """`count` tasks of the recipe's sampler, in batches of the recipe's size."""
    batches = []
    while sum(b["adjacent"].shape[0] for b in batches) < count:
        batches.append(trainer._batch())
    return batches


def set_loss(trainer: Trainer, batches: list[dict], autocast) -> float:
    with torch.no_grad():
        return sum(float(sum(trainer._forward(b, autocast).values())) for b in batches) / len(batches)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", required=True, help="a training recipe; repeat to compare")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--lr", type=float, default=3e-4, help="constant, for every recipe alike")
    args = parser.parse_args(argv)
    tasks = None
    for recipe in args.recipe:
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(TrainConfig.from_file(recipe, out_dir=out))
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=trainer.cfg.cpu_bf16)
            if tasks is None:  # the first recipe draws the set; every network fits the same one
                tasks = fixed_tasks(trainer, args.tasks)
            for group in trainer.opt.param_groups:
                group["lr"] = args.lr
            curve = {0: set_loss(trainer, tasks, autocast)}
            start = time.perf_counter()
            for step in range(1, args.steps + 1):
                trainer.optimise(tasks[step % len(tasks)], autocast)
                if step % args.every == 0:
                    curve[step] = set_loss(trainer, tasks, autocast)
                    print(json.dumps({"recipe": recipe, "step": step, "set_loss": round(curve[step], 4),
                                      "seconds": round(time.perf_counter() - start)}), file=sys.stderr, flush=True)
            params = sum(p.numel() for p in trainer.net.parameters()) / 1e6
            print(f"| {recipe.rsplit('/', 1)[-1]} | {params:.1f} M | " + " | ".join(f"{curve[s]:.3f}" for s in sorted(curve)) + " |")
    print(f"(set loss, mask + presence, over {sum(b['adjacent'].shape[0] for b in tasks)} fixed tasks at steps "
          f"{', '.join(str(s) for s in range(0, args.steps + 1, args.every))}; constant lr {args.lr})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
