"""Evaluation objects and their one-view prompts: the manifest's "eval" split plus seeded phantoms.

Real volumes are read exactly as `propsam segment` reads them (io.volume.read_volume: the file's
dtype, spacing, origin and direction), so the harness runs what users run. Any other source
(e.g. synthetic volumes from label maps) plugs in through make_object: build the Volume and the
truth mask, and pass the list (or any iterable) of EvalObject to harness.run_evaluation.

The prompt slice is the object's largest axial slice (numpy axis 0), as a reader picks the RECIST
slice. On it: the tight box, a jittered box (each side pushed out so the box is 1.0-1.25 times
wider and taller, like a hurried user) and the mask prompt (the label's slice).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from scipy import ndimage

from ..engine.roi import mask_bbox
from ..io.volume import Volume, read_volume
from ..training.phantom_sources import phantom_source
from ..training.sources import SourceVolume, manifest_entries, objects_from_labels

AXIS = 0
MIN_HEADLINE_SLICES = 5
PHANTOM_DATASET = "phantom"
SYNTHETIC_DATASET = "synthetic"  # evaluation/synthetic.py
GENERATED_DATASETS = (PHANTOM_DATASET, SYNTHETIC_DATASET)  # never pooled with the real objects
PHANTOM_FIRST_SEED = 900_000  # apart from the seeds training draws (training/train.py)
JITTER_SCALE = (1.0, 1.25)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
KINDS = ("organ", "lesion", "thin", "touching", "nested")  # failure-mode groups of issue 9 (manifest `kind`)


@dataclass(frozen=True)
class Prompts:
    slice_index: int
    box: tuple[int, int, int, int]  # col0, row0, col1, row1 inclusive (engine's BoxPrompt order)
    jittered_box: tuple[int, int, int, int]
    mask: np.ndarray  # 2D bool


@dataclass
class EvalObject:
    dataset: str
    volume_id: str
    name: str
    volume: Volume
    truth: np.ndarray  # uint8 (Z, Y, X)
    prompts: Prompts  # on the largest slice
    extent: tuple[int, int]  # first and last slice of the truth along AXIS
    modality: str = ""  # CT, MR, PET, ...
    kind: str = ""  # one of KINDS, for the failure-mode table ("" = not given)
    truth_source: str = ""  # manual, semi-automatic, automatic, exact (phantoms)
    subject: str = ""

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.volume_id}/{self.name}"

    @property
    def slices(self) -> int:
        return self.extent[1] - self.extent[0] + 1

    @property
    def headline(self) -> bool:
        """Objects thinner than a few slices leave nothing to propagate; they are kept but flagged."""
        return self.slices >= MIN_HEADLINE_SLICES


def eval_datasets(data_dir: Path) -> list[str]:
    return sorted({e["dataset"] for e in manifest_entries(data_dir, "eval")})


def seed_of(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def largest_slice(truth: np.ndarray) -> int:
    return int(truth.reshape(truth.shape[0], -1).sum(1).argmax())


def _widen(lo: int, hi: int, size: int) -> tuple[int, int]:
    """The engine refuses zero-width boxes: a one-pixel-thin object gets a two-pixel box."""
    if hi > lo:
        return lo, hi
    return (lo, hi + 1) if hi + 1 < size else (lo - 1, hi)


def jitter_box(box, shape: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    c0, r0, c1, r1 = box
    out = []
    for lo, hi, size in ((c0, c1, shape[1]), (r0, r1, shape[0])):
        extra = (hi - lo + 1) * (rng.uniform(*JITTER_SCALE) - 1)
        before = extra * rng.uniform(0, 1)
        out.append((max(0, int(round(lo - before))), min(size - 1, int(round(hi + extra - before)))))
    (c0, c1), (r0, r1) = out
    return c0, r0, c1, r1


def prompts_on(truth: np.ndarray, slice_index: int, seed: int) -> Prompts:
    mask = truth[slice_index] > 0
    r0, c0, r1, c1 = mask_bbox(mask)
    (r0, r1), (c0, c1) = _widen(r0, r1, mask.shape[0]), _widen(c0, c1, mask.shape[1])
    box = (c0, r0, c1, r1)
    return Prompts(slice_index, box, jitter_box(box, mask.shape, np.random.default_rng(seed)), mask)


def nearest_filled_slice(truth: np.ndarray, wanted: int) -> int:
    """The slice closest to `wanted` (ties: towards the largest slice) that holds the object."""
    filled = np.flatnonzero(truth.reshape(truth.shape[0], -1).any(1))
    home = largest_slice(truth)
    return int(min(filled, key=lambda z: (abs(z - wanted), abs(z - home))))


def make_object(dataset: str, volume_id: str, name: str, volume: Volume, truth: np.ndarray, modality: str = "",
                kind: str = "", truth_source: str = "", subject: str = "") -> EvalObject:
    """The one way to make an evaluation object: prompts on the truth's largest slice (seeded by the
    object's name), extent along AXIS. `volume` is what the engine gets, exactly as given."""
    truth = (np.asarray(truth) > 0).astype(np.uint8)
    if truth.shape != volume.shape:
        raise ValueError(f"{dataset}/{volume_id}/{name}: truth {truth.shape} is not on the volume's grid {volume.shape}")
    filled = np.flatnonzero(truth.reshape(truth.shape[0], -1).any(1))
    if not filled.size:
        raise ValueError(f"{dataset}/{volume_id}/{name}: the truth mask is empty")
    prompts = prompts_on(truth, largest_slice(truth), seed_of(volume_id, name))
    return EvalObject(dataset, volume_id, name, volume, truth, prompts, (int(filled[0]), int(filled[-1])),
                      modality, kind, truth_source, subject)


def objects_of(source: SourceVolume, dataset: str, largest_component: bool = False) -> Iterator[EvalObject]:
    """Objects of a source without a file geometry (phantoms, tests): identity direction, zero origin."""
    volume = Volume(source.image, tuple(float(s) for s in source.spacing_zyx[::-1]), (0.0, 0.0, 0.0), IDENTITY)
    for obj in source.objects:
        truth = obj.full_mask(source.image.shape)
        if largest_component:
            labels, count = ndimage.label(truth, structure=np.ones((3, 3, 3), bool))
            if count > 1:
                truth = labels == np.bincount(labels.ravel())[1:].argmax() + 1
        yield make_object(dataset, source.id, obj.name, volume, truth, source.modality, truth_source=source.truth)


def kind_of(entry: dict, name: str) -> str:
    """The manifest's `kind`: one word for the whole entry, or {object name: kind}."""
    kind = entry.get("kind", "")
    return kind.get(name, "") if isinstance(kind, dict) else kind


def entry_objects(entry: dict, data_dir: Path) -> Iterator[EvalObject]:
    """A manifest entry's objects on the volume as `propsam segment --image` reads it."""
    volume = read_volume(data_dir / entry["image"])
    labels = read_volume(data_dir / entry["labels"])
    if not volume.same_grid(labels, tol=1e-3):
        raise ValueError(f"{entry['id']}: image and labels are on different grids")
    for obj in objects_from_labels(np.rint(labels.array), entry["objects"]):
        yield make_object(entry["dataset"], entry["id"], obj.name, volume, obj.full_mask(volume.shape),
                          entry.get("modality", ""), kind_of(entry, obj.name), entry.get("truth", "manual"),
                          entry.get("subject", entry["id"]))


def iter_eval_objects(data_dir: Path | None, datasets: list[str], phantoms: int = 0) -> Iterator[EvalObject]:
    """Real objects of the chosen datasets (volume by volume, loaded lazily), then the phantoms'."""
    if datasets:
        for entry in manifest_entries(data_dir, "eval"):
            if entry["dataset"] in datasets:
                yield from entry_objects(entry, data_dir)
    for i in range(phantoms):
        # the phantom generator leaves stray fragments around some shapes; a user would prompt
        # the main body, so its largest component is the object
        yield from objects_of(phantom_source(PHANTOM_FIRST_SEED + i, 1.0), PHANTOM_DATASET, largest_component=True)
