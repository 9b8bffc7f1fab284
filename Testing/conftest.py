"""Shared fixtures: the real data folder (skipped with a visible reason where absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PROPSAM_DATA_DIR", REPO.parent / "shared" / "data"))


def shared_data_path(*parts: str) -> Path:
    """Path under the shared data folder; skips the test (with the reason) if it is missing."""
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (set PROPSAM_DATA_DIR)")
    return path


@pytest.fixture
def shared_data():
    return shared_data_path


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    """A lite-configuration bundle with seeded random weights: exercises every code path
    (loading, checks, propagation, geometry) without depending on the trained weights."""
    import torch

    from propsam.config import named_config
    from propsam.modeling import build_network
    from propsam.weights import save_network, write_manifest

    folder = tmp_path_factory.mktemp("random_model")
    config = named_config("lite")
    torch.manual_seed(0)
    files = {}
    for name in ("box2mask", "propmask"):
        files[name] = f"{name}.pt"
        save_network(build_network(getattr(config, name)), getattr(config, name), folder / files[name])
    return write_manifest(folder, config, files)
