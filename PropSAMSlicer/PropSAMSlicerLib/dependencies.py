"""Which Python packages a feature still lacks, the Slicer/Python versions the module needs, and a
guarded install step; installing is the panel's job, after asking.

Nothing here imports the packages themselves: checking must stay cheap and must not load torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Callable

log = logging.getLogger("PropSAM")

# import name -> pip requirement. torch is special: the PyTorch extension installs the build
# that matches the GPU driver, so it is listed apart.
TORCH = ("torch", "torch>=2.1")
SEGMENTATION = {"scipy": "scipy>=1.10", "SimpleITK": "SimpleITK>=2.2"}
EXPORT = {"highdicom": "highdicom>=0.22", "pydicom": "pydicom>=2.4"}

# The engine's syntax needs Python 3.10; Slicer 5.8 ships Python 3.9, 5.10 is the first with a newer one.
MIN_PYTHON = (3, 10)
MIN_SLICER = "5.10"


def installed(import_name: str) -> bool:
    return importlib.util.find_spec(import_name) is not None


def missing(needs: dict[str, str]) -> list[str]:
    """Requirements (pip syntax) of `needs` whose package cannot be imported."""
    return [requirement for name, requirement in needs.items() if not installed(name)]


def torch_missing() -> bool:
    return not installed(TORCH[0])


def unsupported_reason(python_version: tuple = tuple(sys.version_info[:3])) -> str | None:
    """Why this Slicer cannot run the module (None when it can)."""
    if tuple(python_version[:2]) >= MIN_PYTHON:
        return None
    found = ".".join(str(part) for part in python_version)
    return (f"PropSAM needs 3D Slicer {MIN_SLICER} or later (Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+); "
            f"this Slicer runs Python {found}. Install a newer Slicer from download.slicer.org.")


def run_install(install: Callable[[], object], what: str, needs: dict[str, str]) -> tuple[bool, str]:
    """Run one install step (pip_ensure, installTorch, pip_install...) so that a decline or a failure
    becomes a clear message instead of a console traceback. Returns (all of `needs` importable, message)."""
    try:
        outcome = install()
    except Exception as exc:  # noqa: BLE001 - pip, network, a declined dialog: all end up here
        log.exception("PropSAM: installing %s failed", what)
        return False, (f"Installing {what} failed ({type(exc).__name__}: {exc}). Nothing was run. "
                       "Check the internet connection, or install it from the Python console / Extensions Manager")
    importlib.invalidate_caches()
    still = missing(needs)
    if outcome is False or still:
        return False, (f"{what} is not installed ({', '.join(still) or 'declined'}); nothing was run. "
                       "Press Segment again to be asked again")
    return True, f"{what} installed"
