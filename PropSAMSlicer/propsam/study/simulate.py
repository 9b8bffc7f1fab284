"""A SIMULATED study, for demos and CI: made-up prompt times driven through the real session logic.

Nothing here is measured. Prompt times are log-normal with medians loosely set after the
PropSAM paper (one-view box about 38 % faster than the two-view box); each reader has a
personal speed factor. Every row is stored with simulated = 1 and reports say so.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_path, check_writable
from .records import StudyStore
from .session import StudySession

SIMULATED_MEDIAN_SECONDS = {"one_view_box": 7.5, "one_view_sketch": 9.0, "two_view_box": 12.0}
MEAN_CORRECTIONS = {"one_view_box": 0.3, "one_view_sketch": 0.5, "two_view_box": 0.8}
PROMPT_SPREAD = 0.30  # sigma of log prompt time within a reader
READER_SPREAD = 0.15  # sigma of the log speed factor between readers
SIMULATED_START = datetime(2000, 1, 1, tzinfo=timezone.utc)


class SimulatedClock:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds

    def wall_time(self) -> datetime:
        # a fixed start keeps a simulated file identical for the same seed
        return SIMULATED_START + timedelta(seconds=self.seconds)


def simulate_study(path: str | os.PathLike, *, readers: int, cases: int, seed: int, force: bool = False) -> Path:
    """Write a new study file (replaced whole, atomically, with force) holding simulated prompts."""
    if readers < 1 or cases < 1:
        raise InputError("a simulated study needs at least one reader and one case")
    path = check_writable(path, force)
    rng = np.random.default_rng(seed)
    clock = SimulatedClock()
    with atomic_path(path, replace=force) as tmp:
        tmp.unlink()  # StudyStore creates the file itself
        with StudyStore(tmp) as store:
            for reader in range(1, readers + 1):
                speed = float(np.exp(rng.normal(0.0, READER_SPREAD)))
                session = StudySession(store, "simulated", f"reader{reader:02d}", seed=seed,
                                       model_version="simulated", clock=clock, now=clock.wall_time,
                                       simulated=True)
                for case in range(1, cases + 1):
                    session.start_case(f"case{case:03d}", "object")
                    for _ in range(len(session.order)):
                        _simulate_prompt(session, clock, rng, speed)
    return path


def _simulate_prompt(session: StudySession, clock: SimulatedClock, rng: np.random.Generator, speed: float) -> None:
    prompt_type = session.arm()
    median = SIMULATED_MEDIAN_SECONDS[prompt_type] * speed
    for _ in range(rng.poisson(MEAN_CORRECTIONS[prompt_type])):
        session.correction()
    clock.advance(float(median * np.exp(rng.normal(0.0, PROMPT_SPREAD))))
    session.complete_prompt()
    session.start_segmentation()
    clock.advance(float(rng.uniform(0.8, 2.5)))
    session.finish_segmentation()
    clock.advance(float(rng.uniform(2.0, 10.0)))  # the reader looks at the result before the next prompt
