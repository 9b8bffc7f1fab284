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
    from propsam.training.bundle import random_bundle

    return random_bundle(tmp_path_factory.mktemp("random_model"))


@pytest.fixture
def sphere_file(tmp_path):
    """A 24x40x40 sphere phantom (2 mm slices) written as NRRD: (path, Volume, truth)."""
    from phantom_volumes import sphere_volume, write_volume

    volume, truth = sphere_volume(shape=(24, 40, 40), spacing=(1.0, 1.0, 2.0), radius_mm=10)
    path = tmp_path / "sphere.nrrd"
    write_volume(volume, path)
    return path, volume, truth
