"""A rotating pool of phantoms presented as SourceVolumes."""

from __future__ import annotations

import numpy as np

from .phantoms import make_phantom
from .sources import SourceVolume, objects_from_labels


def phantom_source(seed: int, weight: float) -> SourceVolume:
    p = make_phantom(seed)
    return SourceVolume(
        id=f"phantom_{seed}", image=p.image, spacing_zyx=tuple(p.spacing[::-1]), modality=p.modality,
        weight=weight, objects=objects_from_labels(p.labels, "each"), truth="exact",
    )


class PhantomPool:
    """Keeps `size` phantoms; `refresh` swaps a few for new seeds so the mix keeps changing.

    Its state (the seeds in the pool and the next seed) is small, so a checkpoint stores it and a
    resumed run rebuilds exactly the same pool.
    """

    def __init__(self, size: int, first_seed: int, weight: float, state: dict | None = None):
        self.weight = weight
        self.next_seed = first_seed
        self.sources: list[SourceVolume] = []
        if state is not None:
            self.sources = [phantom_source(seed, weight) for seed in state["seeds"]]
            self.next_seed = state["next_seed"]
        while len(self.sources) < size:
            self._add()

    def _add(self) -> None:
        source = phantom_source(self.next_seed, self.weight)
        self.next_seed += 1
        if source.objects:
            self.sources.append(source)

    def refresh(self, count: int, rng: np.random.Generator) -> None:
        for _ in range(count):
            self.sources.pop(int(rng.integers(len(self.sources))))
            self._add()

    def state(self) -> dict:
        return {"seeds": [int(s.id.split("_")[1]) for s in self.sources], "next_seed": self.next_seed}
