"""Which Python packages a feature still lacks; installing them is the panel's job, after asking.

Nothing here imports the packages themselves: checking must stay cheap and must not load torch.
"""

from __future__ import annotations

import importlib.util

# import name -> pip requirement. torch is special: the PyTorch extension installs the build
# that matches the GPU driver, so it is listed apart.
TORCH = ("torch", "torch>=2.1")
SEGMENTATION = {"scipy": "scipy>=1.10", "SimpleITK": "SimpleITK>=2.2"}
EXPORT = {"highdicom": "highdicom>=0.22", "pydicom": "pydicom>=2.4"}


def installed(import_name: str) -> bool:
    return importlib.util.find_spec(import_name) is not None


def missing(needs: dict[str, str]) -> list[str]:
    """Requirements (pip syntax) of `needs` whose package cannot be imported."""
    return [requirement for name, requirement in needs.items() if not installed(name)]


def torch_missing() -> bool:
    return not installed(TORCH[0])
