"""`propsam` console command. Each feature registers its own subcommand; bad input exits 2.

Start-up is kept short: a subcommand's module (and with it torch, SimpleITK, pydicom, scipy...)
is imported only when that subcommand runs. `propsam --help` lists the commands from the table
below without importing any of them.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import warnings

from .errors import PropSAMError

# subcommand -> (module exposing register(subparsers), one-line help for `propsam --help`)
SUBCOMMANDS = {
    "segment": ("propsam.engine.cli", "segment one object from a one-view (or two-view) prompt"),
    "segment-batch": ("propsam.engine.batch", "segment many objects listed in a CSV, loading the model once"),
    "info": ("propsam.engine.cli", "versions, device and models found"),
    "train": ("propsam.training.cli", "train Box2Mask or PropMask from a recipe (resumes its run folder)"),
    "pack-data": ("propsam.training.cli", "pack the training split (+ phantoms) into one .npz for training on a lent GPU"),
    "bundle": ("propsam.training.cli", "write trained Box2Mask + PropMask weights as a model folder with manifest"),
    "export-dicom-seg": ("propsam.dicom.cli", "write a mask as DICOM-SEG referencing its DICOM series"),
    "study": ("propsam.study.cli", "interaction-time study: report, simulate"),
    "evaluate": ("propsam.evaluation.cli", "Dice/HD95/ASD/extent of PropSAM and baselines on the eval split; CSV, markdown, PNG"),
}
SUBCOMMAND_MODULES = list(dict.fromkeys(module for module, _ in SUBCOMMANDS.values()))


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that temporary files are removed on the way out."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser for `command` (its module registers it); the others only by name and help."""
    parser = argparse.ArgumentParser(prog="propsam", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    modules = SUBCOMMAND_MODULES if command == "*" else [SUBCOMMANDS[command][0]] if command in SUBCOMMANDS else []
    for module in modules:
        importlib.import_module(module).register(subparsers)
    for name, (_, help_text) in SUBCOMMANDS.items():
        if name not in subparsers.choices:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _on_sigterm(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        # library warnings (torch, GDCM via pydicom, ...) are shown after a successful run, never
        # between a progress line and the one-line error
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            code = int(args.func(args) or 0)
        for warning in caught:
            print(f"propsam: warning: {warning.message}", file=sys.stderr)
        return code
    except PropSAMError as exc:
        print(f"propsam: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("propsam: error: out of memory; crop the volume (e.g. Slicer's Crop Volume) or free memory, "
              "then try again; nothing was written", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("propsam: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Terminated:
        print("propsam: terminated; nothing was written", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
