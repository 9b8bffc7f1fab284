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

    b = subparsers.add_parser("bundle", help="write trained Box2Mask + PropMask weights as a model folder with manifest")
    b.add_argument("--name", default="lite")
    b.add_argument("--box2mask", required=True, help="fp16 weights written by `propsam train` (run folder/box2mask.pt)")
    b.add_argument("--propmask", required=True, help="run folder/propmask.pt")
    b.add_argument("--out-dir", required=True, help="e.g. PropSAMSlicer/Resources/Models/lite")
    b.add_argument("--data-list", default="PropSAMSlicer/propsam/training/data_manifest.json",
                   help="recorded in the manifest as the training data list")
    b.add_argument("--evaluation", help="results.csv of `propsam evaluate` on these weights: its headline table "
                                        "(mean Dice and HD95 per method and dataset) goes into the manifest")
    b.add_argument("--force", action="store_true", help="replace an existing bundle in --out-dir")
    b.set_defaults(func=run_bundle)


def run(args) -> int:
    from .train import TrainConfig, train

    if not Path(args.config).is_file():
        raise InputError(f"training recipe {args.config} does not exist")
    cfg = TrainConfig.from_file(args.config, out_dir=args.out_dir, steps=args.steps, max_minutes=args.max_minutes, data_dir=args.data_dir)
    weights = train(cfg)
    print(f"weights: {weights}")
    return 0


def run_bundle(args) -> int:
    from .bundle import make_bundle

    extra = {"training_data": {"manifest": args.data_list, "split": "train", "phantoms": "procedural, seeded"}}
    if args.evaluation:
        from ..evaluation.harness import headline_means, read_results

        if not Path(args.evaluation).is_file():
            raise InputError(f"evaluation results {args.evaluation} do not exist")
        extra["evaluation"] = {"results": args.evaluation, "headline_means": headline_means(read_results(Path(args.evaluation)))}
    manifest = make_bundle(args.name, {"box2mask": Path(args.box2mask), "propmask": Path(args.propmask)}, Path(args.out_dir), extra,
                           force=args.force)
    print(f"bundle: {manifest}")
    return 0
