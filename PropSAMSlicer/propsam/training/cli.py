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
    p.add_argument("--weights-dir", help="also write the fp16 engine weights here at every checkpoint")
    p.set_defaults(func=run)

    k = subparsers.add_parser("pack-data", help="pack the training split (+ phantoms) into one .npz for training on a lent GPU")
    k.add_argument("--out", required=True, help="e.g. cache/train_pack.npz (cache/ is git-ignored; carry it to the device)")
    k.add_argument("--recipe", default="PropSAMSlicer/propsam/training/recipes/lite_v2_propmask_gpu.json",
                   help="its synthesis_maps are recorded (and must be in the training split)")
    k.add_argument("--phantoms", type=int, default=16, help="seeded training phantoms to include")
    k.add_argument("--data-dir", help="shared data folder (default ../shared/data)")
    k.add_argument("--force", action="store_true", help="replace an existing pack")
    k.set_defaults(func=run_pack)

    b = subparsers.add_parser("bundle", help="write trained Box2Mask + PropMask weights as a model folder with manifest")
    b.add_argument("--name", default="lite")
    b.add_argument("--box2mask", required=True, help="fp16 weights written by `propsam train` (run folder/box2mask.pt)")
    b.add_argument("--propmask", required=True, help="run folder/propmask.pt")
    b.add_argument("--out-dir", required=True, help="e.g. PropSAMSlicer/Resources/Models/lite")
    b.add_argument("--data-list", default="PropSAMSlicer/propsam/training/data_manifest.json",
                   help="recorded in the manifest as the training data list")
    b.add_argument("--warm-start-from", metavar="MODEL",
                   help="the model these weights were warm-started from (e.g. lite_v1): its training record is kept")
    b.add_argument("--evaluation", help="results.csv of `propsam evaluate` on these weights: its headline table "
                                        "(mean Dice and HD95 per method and dataset) goes into the manifest")
    b.add_argument("--force", action="store_true", help="replace an existing bundle in --out-dir")
    b.set_defaults(func=run_bundle)


def run(args) -> int:
    from .train import TrainConfig, train

    if not Path(args.config).is_file():
        raise InputError(f"training recipe {args.config} does not exist")
    cfg = TrainConfig.from_file(args.config, out_dir=args.out_dir, steps=args.steps, max_minutes=args.max_minutes, data_dir=args.data_dir,
                                 weights_dir=args.weights_dir)
    weights = train(cfg)
    print(f"weights: {weights}")
    return 0


def run_pack(args) -> int:
    import json

    from ..io.atomic import check_writable
    from .pack import build_pack
    from .train import default_data_dir

    out = check_writable(args.out, args.force)
    if not Path(args.recipe).is_file():
        raise InputError(f"training recipe {args.recipe} does not exist")
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if not data_dir.is_dir():
        raise InputError(f"data folder {data_dir} does not exist")
    maps = json.loads(Path(args.recipe).read_text()).get("synthesis_maps", [])
    try:
        meta = build_pack(data_dir, out, maps, phantoms=args.phantoms)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    kinds = [v["kind"] for v in meta["volumes"]]
    print(f"pack: {out} ({out.stat().st_size / 2**20:.1f} MiB; {kinds.count('real')} training volumes, "
          f"{kinds.count('phantom')} phantoms, {len(maps)} synthesis maps)")
    return 0


def run_bundle(args) -> int:
    from .bundle import make_bundle

    extra = {"training_data": {"manifest": args.data_list, "split": "train", "phantoms": "procedural, seeded"}}
    if args.warm_start_from:
        from ..weights import read_manifest, resolve_model

        base = read_manifest(resolve_model(args.warm_start_from))
        extra["warm_start"] = {"model": args.warm_start_from, "networks": base.get("networks", {}),  # files and sha256
                               "training": base.get("training", {})}
        if "warm_start" in base:  # the whole lineage, not only the last link
            extra["warm_start"]["warm_start"] = base["warm_start"]
    if args.evaluation:
        from ..evaluation.harness import headline_means, read_results

        if not Path(args.evaluation).is_file():
            raise InputError(f"evaluation results {args.evaluation} do not exist")
        extra["evaluation"] = {"results": args.evaluation, "headline_means": headline_means(read_results(Path(args.evaluation)))}
    manifest = make_bundle(args.name, {"box2mask": Path(args.box2mask), "propmask": Path(args.propmask)}, Path(args.out_dir), extra,
                           force=args.force)
    print(f"bundle: {manifest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m propsam.training.cli train|pack-data|bundle ...`: the training commands alone,
    for a machine without the DICOM stack (propsam.cli imports every subcommand's module)."""
    import argparse
    import sys

    from ..errors import PropSAMError

    parser = argparse.ArgumentParser(prog="propsam-train")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PropSAMError as exc:
        print(f"propsam: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
