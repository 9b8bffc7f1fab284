"""`propsam` console command. Each feature registers its own subcommand; bad input exits 2."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import PropSAMError

# modules exposing register(subparsers); each subcommand sets `func(args) -> int`
SUBCOMMAND_MODULES = [
    "propsam.engine.cli",
    "propsam.training.cli",
    "propsam.dicom.cli", "propsam.study.cli",
    "propsam.evaluation.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="propsam", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PropSAMError as exc:
        print(f"propsam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("propsam: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
