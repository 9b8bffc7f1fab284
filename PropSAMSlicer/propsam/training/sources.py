"""Real volumes and their objects, as listed in data_manifest.json (split by volume)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

MANIFEST_PATH = Path(__file__).with_name("data_manifest.json")
MIN_OBJECT_VOXELS = 60


@dataclass
class LabelledObject:
    """One object of one volume: its bounding box and the mask cropped to it."""

    name: str
    bbox: tuple[slice, slice, slice]
    mask: np.ndarray  # bool, shape of bbox

    def full_mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, bool)
        out[self.bbox] = self.mask
        return out


@dataclass
class SourceVolume:
    id: str
    image: np.ndarray  # (Z, Y, X) float32
    spacing_zyx: tuple[float, float, float]
    modality: str
    weight: float
    objects: list[LabelledObject] = field(default_factory=list)
    truth: str = "manual"


def objects_from_labels(labels: np.ndarray, spec) -> list[LabelledObject]:
    labels = labels.astype(np.int32, copy=False)
    found: list[LabelledObject] = []
    if spec == "components":  # one label for many separate objects (lesions): each 3D component is one
        components, _ = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
        for value, box in enumerate(ndimage.find_objects(components), start=1):
            mask = components[box] == value
            if mask.sum() >= MIN_OBJECT_VOXELS:
                found.append(LabelledObject(f"component_{value}", box, mask))
        return found
    if spec == "each":
        for value, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None:
                continue
            mask = labels[box] == value
            if mask.sum() >= MIN_OBJECT_VOXELS:
                found.append(LabelledObject(f"label_{value}", box, mask))
        return found
    for name, ids in spec.items():
        mask = np.isin(labels, ids)
        boxes = ndimage.find_objects(mask.astype(np.uint8))
        if boxes and boxes[0] is not None and mask.sum() >= MIN_OBJECT_VOXELS:
            found.append(LabelledObject(name, boxes[0], mask[boxes[0]]))
    return found


def _expand(entry: dict, data_dir: Path) -> list[dict]:
    """A 'glob' entry stands for one volume per matching folder and image name."""
    if "glob" not in entry:
        return [entry]
    out = []
    for folder in sorted(data_dir.glob(entry["glob"])):
        for image_name in entry["image_name"]:
            rel = folder.relative_to(data_dir)
            out.append({**entry, "id": f"{folder.name}_{image_name.split('_')[0]}",
                        "image": str(rel / image_name), "labels": str(rel / entry["labels_name"])})
    return out


def entry_files(entry: dict) -> tuple[str, str]:
    """The image and label files of a manifest entry, relative to the data folder: 'image' and
    'labels' (read with SimpleITK), one 'npz' holding both, or an 'mgh' pair (FreeSurfer's format)."""
    if "npz" in entry:
        return entry["npz"], entry["npz"]
    if "mgh" in entry:
        return entry["mgh"]["image"], entry["mgh"]["labels"]
    return entry["image"], entry["labels"]


def _read_mgh_pair(image_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A FreeSurfer .mgz/.mgh image and label map (SimpleITK cannot read them), in this project's
    (z, y, x) array order: nibabel gives (i, j, k), SimpleITK's arrays are (k, j, i)."""
    import nibabel  # only for these entries

    image, labels = nibabel.load(image_path), nibabel.load(labels_path)
    if image.shape != labels.shape or not np.allclose(image.affine, labels.affine, atol=1e-3):
        raise ValueError(f"{image_path.name} and {labels_path.name} are on different grids")
    spacing_zyx = tuple(float(z) for z in image.header.get_zooms()[:3][::-1])
    return (np.asarray(image.dataobj, np.float32).transpose(2, 1, 0),
            np.asarray(labels.dataobj).transpose(2, 1, 0), spacing_zyx)


def read_pair(entry: dict, data_dir: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(image float32, integer labels, spacing_zyx) of one manifest entry, checked to share a grid."""
    if "npz" in entry:
        data = np.load(data_dir / entry["npz"])
        return data["vol"].astype(np.float32), data["seg"], (1.0, 1.0, 1.0)
    if "mgh" in entry:
        return _read_mgh_pair(*(data_dir / f for f in entry_files(entry)))
    from ..io.volume import read_volume  # SimpleITK: imported only here, so a training pack needs none

    volume = read_volume(data_dir / entry["image"])
    label_volume = read_volume(data_dir / entry["labels"])
    if not volume.same_grid(label_volume, tol=1e-3):
        raise ValueError(f"{entry['id']}: image and labels are on different grids")
    return volume.array.astype(np.float32), np.rint(label_volume.array), tuple(volume.spacing[::-1])


def load_source(entry: dict, data_dir: Path) -> SourceVolume:
    image, labels, spacing_zyx = read_pair(entry, data_dir)
    return SourceVolume(
        id=entry["id"], image=image, spacing_zyx=spacing_zyx, modality=entry["modality"],
        weight=float(entry.get("weight", 1.0)), objects=objects_from_labels(labels, entry["objects"]),
        truth=entry.get("truth", "manual"),
    )


def manifest_entries(data_dir: Path, split: str, manifest_path: Path = MANIFEST_PATH) -> list[dict]:
    entries = json.loads(manifest_path.read_text())["volumes"]
    return [e for entry in entries if entry["split"] == split for e in _expand(entry, data_dir)]


def load_sources(data_dir: Path, split: str, manifest_path: Path = MANIFEST_PATH) -> list[SourceVolume]:
    return [load_source(entry, data_dir) for entry in manifest_entries(data_dir, split, manifest_path)]
