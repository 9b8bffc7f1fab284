"""`propsam evaluate`: PropSAM and baselines on the evaluation split (and phantoms), side by side."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import InputError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="Dice/HD95/ASD/extent of PropSAM and baselines on the eval split; CSV, markdown, PNG",
    )
    p.add_argument("--out-dir", required=True, help="folder for results.csv, summary.md and dice.png (created)")
    p.add_argument("--model", action="append",
                   help="lite, or a model folder / manifest.json; repeat to compare models in one run (default: lite)")
    p.add_argument("--tta", action="append",
                   help="test-time averaging BOX2MASKxPROPMASK orientations (1/2/4/8; PropMask's may be 'auto') or 'off', '-stored' suffix: "
                        "without the content view (e.g. 8x1-stored); repeat to compare "
                        "(each model runs under each; default: the engine's, 8xauto)")
    p.add_argument("--leak-limit", action="append", type=float, metavar="X",
                   help="the stop rule's leak limit, as `propsam segment --leak-limit` (0 = off); repeat to compare "
                        "(each model runs under each; default: the engine's, 2)")
    p.add_argument("--orientations", action="store_true",
                   help="also run PropSAM under the 7 other in-plane orientations (flips/transposes); adds the spread table")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: all usable cores)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--datasets", help="comma-separated: the eval split's datasets and/or 'phantom' (default: all)")
    p.add_argument("--methods", help="comma-separated subset of the methods (default: all)")
    p.add_argument("--phantoms", type=int, default=0, help="also evaluate the objects of N seeded phantoms")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="also evaluate N synthetic-from-labels volumes (training label maps, unseen seeds; own table)")
    p.add_argument("--robustness", action="store_true",
                   help="also move the prompt slice by ±5/10/15/20 %% of the object's extent, and sweep "
                        "propsam-mask's propagation thickness over 10/20/30/40 mm; adds a pooled table and robustness.png")
    p.add_argument("--corrections", type=int, metavar="K",
                   help="instead: a simulated user makes K corrections per object (propsam-box); writes the "
                        "'Dice after k corrections' table against hand-editing to corrections.csv/.md")
    p.add_argument("--from-results", action="append", metavar="CSV",
                   help="run nothing: write the outputs for the rows of these results.csv files (repeat to merge runs)")
    p.add_argument("--max-objects", type=int, help="stop after this many objects (a quick look)")
    p.add_argument("--data-dir", help="shared data folder (default ../shared/data or $PROPSAM_DATA_DIR)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)


def choose(text: str | None, known: list[str], what: str) -> list[str]:
    if text is None:
        return list(known)
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in known]
    if unknown or not chosen:
        raise InputError(f"unknown {what} {', '.join(unknown) or repr(text)}; choose from {', '.join(known)}")
    return chosen


def model_choices(args) -> tuple[list[str], list]:
    """--model and --tta checked before anything is written or loaded."""
    from ..engine.tta import TestTimeAugmentation, parse_tta

    names = args.model or ["lite"]
    if len(set(names)) != len(names):
        raise InputError(f"--model given twice: {', '.join(names)}")
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads must be >= 1")
    ttas = [parse_tta(t) for t in args.tta] if args.tta else [TestTimeAugmentation()]
    if len(set(ttas)) != len(ttas):
        raise InputError("--tta given twice with the same setting")
    if args.leak_limit:
        from ..engine.propagation import check_leak_limit

        for limit in args.leak_limit:
            check_leak_limit(limit, "--leak-limit")
        if len(set(args.leak_limit)) != len(args.leak_limit):
            raise InputError("--leak-limit given twice with the same value")
    return names, ttas


def load_models(args, names: list[str], ttas: list) -> list:
    """One harness Model per --model x --tta x --leak-limit; labels name the model (and the TTA when
    several, and the leak limit when one is given)."""
    from ..engine.segmenter import Segmenter
    from ..engine.tta import tta_name
    from .harness import Model

    models = []
    for name in names:
        segmenter = Segmenter.load(name, args.device, args.threads)
        label = Path(name).parent.name if name.endswith(".json") else Path(name).name
        for tta in ttas:
            for limit in args.leak_limit or [None]:
                named = label + (f" tta{tta_name(tta)}" if len(ttas) > 1 else "")
                named += "" if limit is None else (" leak off" if limit == 0 else f" leak {limit:g}x")
                models.append(Model(named, segmenter, tta, limit))
    return models


def run(args) -> int:
    from ..io.atomic import check_writable
    from ..training.train import default_data_dir
    from .harness import (
        METHODS, MODEL_FREE, OUTPUTS, ROBUSTNESS_FIGURE, has_robustness, markdown_summary, read_results, run_evaluation,
        write_outputs,
    )
    from .objects import PHANTOM_DATASET, eval_datasets, iter_eval_objects

    if args.phantoms < 0 or args.synthetic < 0 or (args.max_objects is not None and args.max_objects < 1):
        raise InputError("--phantoms and --synthetic must be >= 0 and --max-objects >= 1")
    if args.corrections is not None and args.corrections < 1:
        raise InputError(f"--corrections must be >= 1, got {args.corrections}")
    if args.corrections is not None and (args.methods or args.robustness or args.leak_limit):
        raise InputError("--corrections simulates a user correcting propsam-box; it takes no --methods, --robustness "
                         "or --leak-limit")
    methods = choose(args.methods, list(METHODS), "method")  # the arguments' own mistakes first, then the data's
    names, ttas = model_choices(args)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    real = eval_datasets(data_dir)
    datasets = choose(args.datasets, real + [PHANTOM_DATASET], "dataset")
    if args.datasets is None and not args.phantoms:
        datasets.remove(PHANTOM_DATASET)
    if PHANTOM_DATASET in datasets and not args.phantoms:
        raise InputError("dataset 'phantom' needs --phantoms N (how many phantoms)")
    real_chosen = [d for d in datasets if d != PHANTOM_DATASET]
    if real_chosen and not data_dir.is_dir() and not args.from_results:  # merging results files reads no data
        raise InputError(f"data folder {data_dir} does not exist; pass --data-dir or set PROPSAM_DATA_DIR "
                         f"(or evaluate phantoms only: --datasets phantom --phantoms N)")
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir} is a file, expected a folder")
    rows = [r for path in args.from_results or [] for r in read_results(Path(path))]
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = OUTPUTS + ((ROBUSTNESS_FIGURE,) if args.robustness or has_robustness(rows) else ())
    if args.corrections is not None:
        from .corrections import OUTPUTS as outputs
    for name in outputs:
        check_writable(out_dir / name, args.force)
    if args.from_results:
        write_outputs(rows, out_dir)
        print(markdown_summary(rows))
        print(f"{len(rows)} rows from {len(args.from_results)} file(s); wrote {', '.join(str(out_dir / n) for n in outputs)}")
        return 0

    models = load_models(args, names, ttas) if args.corrections is not None or any(m not in MODEL_FREE for m in methods) else None
    start = time.perf_counter()
    objects = iter_eval_objects(data_dir, real_chosen, args.phantoms if PHANTOM_DATASET in datasets else 0)
    if args.synthetic:
        from itertools import chain

        from .synthetic import synthetic_objects

        objects = chain(objects, synthetic_objects(data_dir, args.synthetic))
    if args.corrections is not None:  # the simulated user works with the first model
        from .corrections import eval_modalities, markdown_table, run_corrections

        rows = run_corrections(objects, models[0].segmenter, out_dir, args.corrections, eval_modalities(data_dir), args.max_objects)
        print(markdown_table(rows, args.corrections))
    else:
        rows = run_evaluation(objects, models, out_dir, methods, args.robustness, args.max_objects,
                              orientations=args.orientations)
        print(markdown_summary(rows))
    print(f"{len({(r['volume'], r['object']) for r in rows})} object(s), {len(rows)} rows in "
          f"{time.perf_counter() - start:.0f} s; wrote {', '.join(str(out_dir / n) for n in outputs)}")
    return 0
