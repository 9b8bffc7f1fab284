"""`propsam study report` and `propsam study simulate`."""

from __future__ import annotations

import argparse

from ..errors import InputError
from ..io.atomic import check_writable
from .records import StudyStore, export_csv
from .report import markdown_table, summarise, write_box_plot
from .simulate import simulate_study


def register(subparsers) -> None:
    study = subparsers.add_parser("study", help="interaction-time study: report, simulate")
    commands = study.add_subparsers(dest="study_command", required=True)

    report = commands.add_parser(
        "report", help="prompt-time statistics per prompt type, box plot, CSV",
        description="Print n, median and IQR of prompt time per prompt type, the reduction of "
        "one-view vs two-view medians in %% and Wilcoxon rank-sum p-values, as a markdown table.",
    )
    report.add_argument("study_file", metavar="STUDY.sqlite")
    report.add_argument("--png", metavar="FIG.png", help="write a box plot, one box per prompt type")
    report.add_argument("--csv", metavar="OUT.csv", help="export every record as CSV")
    report.add_argument("--force", action="store_true", help="replace existing output files")
    report.set_defaults(func=run_report)

    simulate = commands.add_parser(
        "simulate", help="write a study of SIMULATED prompt times (demo/CI, not a measurement)",
    )
    simulate.add_argument("study_file", metavar="STUDY.sqlite")
    simulate.add_argument("--readers", type=int, default=3)
    simulate.add_argument("--cases", type=int, default=10)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--force", action="store_true", help="replace an existing study file")
    simulate.set_defaults(func=run_simulate)


def run_report(args: argparse.Namespace) -> int:
    for out, suffixes in ((args.png, (".png",)), (args.csv, None)):
        if out:  # fail before printing anything
            check_writable(out, args.force, suffixes=suffixes, inputs=[args.study_file])
    with StudyStore(args.study_file, create=False) as store:
        rows, head = store.verify()  # a broken hash chain or a dropped trigger stops the report here
        records = store.records()
    summaries = summarise(records)
    if any(r.simulated for r in records):
        print("**SIMULATED data** (made by `propsam study simulate`, not measured)\n")
    readers = len({r.reader_id for r in records})
    cases = len({r.case_id for r in records})
    print(f"{len(records)} prompts, {readers} reader(s), {cases} case(s)")
    print(f"tamper check passed: {rows} rows hash-chained, chain head {head}\n")
    print(markdown_table(summaries))
    if args.png:
        print(f"\nwrote {write_box_plot(records, args.png, force=args.force)}")
    if args.csv:
        print(f"wrote {export_csv(records, args.csv, force=args.force)}")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    if args.readers > 1000 or args.cases > 10000:
        raise InputError("a simulated study is limited to 1000 readers and 10000 cases")
    path = simulate_study(args.study_file, readers=args.readers, cases=args.cases, seed=args.seed, force=args.force)
    print(f"wrote {path}: SIMULATED study, {args.readers} reader(s) x {args.cases} case(s) x 3 prompt types")
    return 0
