"""`propsam train --config FILE`: run (or resume) a training recipe."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train Box2Mask or PropMask from a recipe (resumes its run folder)")
    p.add_argument("--config", required=True, help="recipe JSON, e.g. PropSAMSlicer/propsam/training/recipes/lite_propmask_cpu.json")
    p.add_argument("--out-dir", help="run folder (overrides the recipe's out_dir)")
    p.add_argument("--steps", type=int, help="total steps (overrides the recipe)")
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this long")
    p.add_argument("--data-dir", help="shared data folder (default ../shared/data)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .train import TrainConfig, train

    if not Path(args.config).is_file():
        raise InputError(f"training recipe {args.config} does not exist")
    cfg = TrainConfig.from_file(args.config, out_dir=args.out_dir, steps=args.steps, max_minutes=args.max_minutes, data_dir=args.data_dir)
    weights = train(cfg)
    print(f"weights: {weights}")
    return 0
