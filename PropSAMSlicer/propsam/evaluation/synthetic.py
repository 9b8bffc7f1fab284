"""Synthetic-from-labels evaluation objects: the anatomy-driven synthesis on the training split's
label maps, with seeds apart from training's (5,000,000+) and the stop-rule tuning's (700000+).

They measure what the synthesis teaches on images never seen in training; real shapes come from
training subjects, so this table sits apart from the held-out real objects and is never pooled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..training.synthesis import load_label_maps, synthetic_source
from .objects import SYNTHETIC_DATASET, EvalObject, objects_of

SYNTHETIC_FIRST_SEED = 600_000
MAPS = ("totalseg_ct", "totalseg_ct_sm", "totalseg_mr", "mni152", "voxelmorph_t1", "infant_brain", "spine_ct_vert")
PER_VOLUME = 2  # objects per synthetic volume, so many volumes (and styles) share the table


def synthetic_objects(data_dir: Path, volumes: int) -> Iterator[EvalObject]:
    maps = load_label_maps(data_dir, list(MAPS))
    for i in range(volumes):
        source = synthetic_source(maps, SYNTHETIC_FIRST_SEED + i)
        objects = [o for o in objects_of(source, SYNTHETIC_DATASET) if o.slices >= 3]
        step = max(1, len(objects) // PER_VOLUME)
        for obj in objects[::step][:PER_VOLUME]:
            obj.kind = source.modality.lower()  # the synthesis style: ct / mr / pet (lesion plants read as mr)
            yield obj
