"""A training pack: the training split (and seeded phantoms) in one small .npz for a lent GPU.

The device machine has no SimpleITK and its working tree travels with a size limit, so
`propsam pack-data` reads the training split once here and writes one compressed file:

- each image cropped to its labels' bounding box plus a margin, and stored as 8 bits with its own
  decoding table (levels at both the volume's quantiles and evenly over its range, so the
  narrow windows of CT soft tissue keep their detail; the engine's windows are percentiles, so
  what matters is the order and spacing of values, not their units);
- each label map with the same crop, and the entry's object spec (objects_from_labels rebuilds
  the objects when the pack is loaded);
- files shared by several entries (BRATS/MS labels, the spine image) stored once.

Only the 'train' split is read (manifest_entries): evaluation subjects never enter a pack.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io.atomic import atomic_path
from .sources import MANIFEST_PATH, entry_files, manifest_entries

FORMAT = "propsam-train-pack/1"
LEVELS = 256


@dataclass
class PackedVolume:
    """One volume of a pack, decoded: like a SourceVolume before its objects are found."""

    id: str
    image: np.ndarray  # float32 (Z, Y, X), decoded 8-bit levels
    labels: np.ndarray  # integer (Z, Y, X)
    spacing_zyx: tuple[float, float, float]
    modality: str
    weight: float
    objects: object  # the manifest's object spec ('each', 'components' or name -> ids)
    truth: str
    kind: str  # "real" or "phantom"


def quantise(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float image -> (uint8 codes, float32 table) with table[codes] ~ image."""
    values = image.ravel().astype(np.float64)
    sample = values[:: max(1, values.size // 2_000_000)]
    edges = np.unique(np.concatenate([
        np.quantile(sample, np.linspace(0, 1, LEVELS // 2 + 1)),
        np.linspace(values.min(), values.max(), LEVELS // 2 + 1),
    ]))
    inner = edges[1:-1]
    while inner.size > LEVELS - 1:  # keep every other interior edge until the codes fit in 8 bits
        inner = inner[::2]
    codes = np.searchsorted(inner, values, side="right").astype(np.uint8)
    sums = np.bincount(codes, weights=values, minlength=LEVELS)
    counts = np.bincount(codes, minlength=LEVELS)
    table = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)
    return codes.reshape(image.shape), table


def _crop_box(labels: np.ndarray, spacing_zyx, margin_mm: float) -> tuple[slice, ...]:
    box = ndimage.find_objects((labels > 0).astype(np.uint8))
    if not box or box[0] is None:
        return tuple(slice(0, n) for n in labels.shape)
    out = []
    for b, n, s in zip(box[0], labels.shape, spacing_zyx):
        m = max(2, int(round(margin_mm / s)))
        out.append(slice(max(0, b.start - m), min(n, b.stop + m)))
    return tuple(out)


def _label_dtype(labels: np.ndarray):
    return np.uint8 if labels.min() >= 0 and labels.max() < 256 else np.int16


def build_pack(data_dir: Path, out: Path, synthesis_maps: list[str], phantoms: int = 16, margin_mm: float = 20.0,
               first_phantom_seed: int = 1_000_000, manifest_path: Path = MANIFEST_PATH) -> dict:
    """Write the training split of `data_dir` (and `phantoms` seeded phantoms) to `out`; returns its meta."""
    from .sources import read_pair

    entries = manifest_entries(Path(data_dir), "train", manifest_path)
    ids = {e["id"] for e in entries}
    unknown = sorted(set(synthesis_maps) - ids)
    if unknown:
        raise ValueError(f"synthesis maps not in the training split: {unknown}")
    arrays: dict[str, np.ndarray] = {}
    volumes = []
    for entry in entries:
        image, labels, spacing = read_pair(entry, Path(data_dir))
        labels = labels.astype(np.int32)
        box = _crop_box(labels, spacing, margin_mm)
        image_file, labels_file = entry_files(entry)
        image_key = f"{image_file}|{[(b.start, b.stop) for b in box]}"
        labels_key = f"{labels_file}|{[(b.start, b.stop) for b in box]}"
        if f"img:{image_key}" not in arrays:
            arrays[f"img:{image_key}"], arrays[f"lut:{image_key}"] = quantise(image[box])
        if f"lab:{labels_key}" not in arrays:
            arrays[f"lab:{labels_key}"] = labels[box].astype(_label_dtype(labels))
        volumes.append({"id": entry["id"], "image": image_key, "labels": labels_key, "kind": "real",
                        "spacing_zyx": [float(s) for s in spacing], "modality": entry["modality"],
                        "weight": float(entry.get("weight", 1.0)), "objects": entry["objects"],
                        "truth": entry.get("truth", "manual"), "dataset": entry.get("dataset", entry["id"]),
                        "crop": [[b.start, b.stop] for b in box]})
    if phantoms:
        from .phantoms import make_phantom

        for seed in range(first_phantom_seed, first_phantom_seed + phantoms):
            p = make_phantom(seed)
            key = f"phantom_{seed}"
            arrays[f"img:{key}"], arrays[f"lut:{key}"] = quantise(p.image)
            arrays[f"lab:{key}"] = p.labels.astype(np.uint8)
            volumes.append({"id": key, "image": key, "labels": key, "kind": "phantom",
                            "spacing_zyx": [float(s) for s in p.spacing[::-1]], "modality": p.modality,
                            "weight": 1.0, "objects": "each", "truth": "exact", "dataset": "phantom"})
    meta = {"format": FORMAT, "volumes": volumes, "synthesis_maps": list(synthesis_maps),
            "margin_mm": margin_mm, "eval_ids_excluded": sorted(e["id"] for e in manifest_entries(Path(data_dir), "eval", manifest_path))}
    # npz member names must be plain: index the arrays and keep the keys in the meta
    keys = sorted(arrays)
    meta["arrays"] = keys
    payload = {f"a{i}": arrays[k] for i, k in enumerate(keys)}
    payload["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **payload)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return meta


def load_pack(path: Path, phantom_weight: float | None = None) -> tuple[list[PackedVolume], list[str]]:
    """(volumes, synthesis map ids) of a pack; phantoms get `phantom_weight` when given."""
    with np.load(path) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a training pack ({FORMAT})")
        arrays = {k: data[f"a{i}"] for i, k in enumerate(meta["arrays"])}
    volumes = []
    for v in meta["volumes"]:
        image = arrays[f"lut:{v['image']}"][arrays[f"img:{v['image']}"]]
        weight = phantom_weight if (v["kind"] == "phantom" and phantom_weight is not None) else v["weight"]
        volumes.append(PackedVolume(v["id"], image, arrays[f"lab:{v['labels']}"], tuple(v["spacing_zyx"]), v["modality"],
                                    float(weight), v["objects"], v["truth"], v["kind"]))
    return volumes, meta["synthesis_maps"]


def pack_meta(path: Path) -> dict:
    with np.load(path) as data:
        return json.loads(bytes(data["meta"]).decode())
