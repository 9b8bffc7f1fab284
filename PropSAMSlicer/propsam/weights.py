"""Weights files and the manifest that ties them to a configuration and a sha256.

A model bundle is a folder with `manifest.json` naming one weights file per network. Loading
checks the file's sha256 against the manifest, the configuration stored in the file against the
manifest's, and every tensor's name and shape against the network built from it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch

from .config import ModelConfig, NetworkConfig
from .errors import InputError, WeightsError
from .io.atomic import atomic_path
from .modeling import build_network

MANIFEST = "manifest.json"
FORMAT = "propsam-model/1"
SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
NETWORKS = ("box2mask", "propmask")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_network(net: torch.nn.Module, config: NetworkConfig, path: str | os.PathLike) -> str:
    """Write fp16 weights plus their configuration atomically; return the file's sha256."""
    # CPU tensors: weights written on a GPU must load on any machine, even without map_location
    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu() for k, v in net.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "config": config.to_dict(), "state_dict": state}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return sha256_of(Path(path))


def write_manifest(folder: str | os.PathLike, config: ModelConfig, files: dict[str, str], extra: dict | None = None) -> Path:
    folder = Path(folder)
    networks = {name: {"file": files[name], "sha256": sha256_of(folder / files[name])} for name in NETWORKS}
    manifest = {"format": FORMAT, "name": config.name, "config": config.to_dict(), "networks": networks}
    manifest.update(extra or {})
    path = folder / MANIFEST
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def named_models() -> list[str]:
    """Names that mean a model configuration: shipped bundles plus the named configurations."""
    from .config import CONFIG_DIR

    shipped = {p.parent.name for p in SHIPPED_MODELS_DIR.glob(f"*/{MANIFEST}")}
    return sorted(shipped | {p.stem for p in CONFIG_DIR.glob("*.json")})


def resolve_model(spec: str) -> Path:
    """'lite' (shipped), or a bundle folder, or its manifest.json -> the manifest's path.

    A model name always means the shipped model of that name, never a folder of that name in the
    working directory (which anyone who can write there could have planted); write ./lite to
    load such a folder.
    """
    if spec in named_models():
        shipped = SHIPPED_MODELS_DIR / spec / MANIFEST
        if shipped.is_file():
            return shipped
        raise WeightsError(
            f"no {spec}-size weights ship with PropSAM; pass --model with the folder or manifest.json "
            f"of your own {spec}-configuration checkpoint"
        )
    candidate = Path(spec)
    if candidate.is_dir():
        candidate = candidate / MANIFEST
    if candidate.is_file():
        return candidate
    known = sorted(p.parent.name for p in SHIPPED_MODELS_DIR.glob(f"*/{MANIFEST}"))
    raise WeightsError(f"model {spec!r} not found: not a bundle folder or manifest, and shipped models are {known}")


def read_manifest(path: Path) -> dict:
    """The manifest, checked to have every field loading relies on, with the right JSON types."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"model manifest {path} is unreadable: {exc}") from None
    if not isinstance(manifest, dict):
        raise WeightsError(f"model manifest {path} holds a JSON {type(manifest).__name__}, expected an object")
    if manifest.get("format") != FORMAT:
        raise WeightsError(f"model manifest {path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    networks = manifest.get("networks")
    if not isinstance(networks, dict) or not isinstance(manifest.get("config"), dict):
        raise WeightsError(f"model manifest {path} needs objects 'config' and 'networks' (one entry per network)")
    for name in NETWORKS:
        entry = networks.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
            raise WeightsError(f"model manifest {path}: networks.{name} needs a 'file' name (a string)")
        sha256 = entry.get("sha256")
        if not isinstance(sha256, str) or len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise WeightsError(f"model manifest {path}: networks.{name} needs its 'sha256' (64 lowercase hex digits)")
    return manifest


def weights_path(manifest_path: Path, file: str) -> Path:
    """The weights file a manifest names, which must lie inside the manifest's own folder."""
    folder = manifest_path.parent.resolve()
    if Path(file).is_absolute() or Path(file).name != file:
        raise WeightsError(f"model manifest {manifest_path} names weights {file!r}: expected a file name in the bundle folder")
    path = (folder / file).resolve()  # follows links: a link out of the folder is refused too
    if path.parent != folder:
        raise WeightsError(f"model manifest {manifest_path} names weights {file!r}, which lies outside the bundle folder")
    return path


def load_network(path: Path, expected: NetworkConfig, sha256: str, device: str = "cpu") -> torch.nn.Module:
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing")
    if sha256_of(path) != sha256:
        raise WeightsError(f"weights file {path.name} is corrupt or replaced: its sha256 does not match the manifest")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        stored = NetworkConfig.from_dict(payload["config"])
        state = payload["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TypeError("state_dict is not a mapping of tensors")
    except (InputError, KeyError, TypeError) as exc:
        raise WeightsError(f"weights file {path.name} has no valid configuration: {exc}") from None
    except Exception as exc:  # torch raises many kinds on a damaged file
        raise WeightsError(f"weights file {path.name} cannot be read: {type(exc).__name__}") from None
    if stored != expected:
        raise WeightsError(f"weights file {path.name} was trained with another configuration than its manifest says")
    net = build_network(stored)
    own = net.state_dict()
    mismatched = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if mismatched or set(state) - set(own):
        raise WeightsError(f"weights file {path.name} does not fit its configuration ({len(mismatched)} tensors differ)")
    # NaN or Inf weights run without error and give a garbage mask: refuse them here
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise WeightsError(f"weights file {path.name} holds NaN or infinite values in {len(broken)} tensor(s), e.g. {broken[0]}")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.to(device).eval()


def load_bundle(spec: str, device: str = "cpu") -> tuple[ModelConfig, dict, dict[str, torch.nn.Module]]:
    """-> (configuration, manifest, {"box2mask": net, "propmask": net}) ready for inference."""
    manifest_path = resolve_model(spec)
    manifest = read_manifest(manifest_path)
    try:
        config = ModelConfig.from_dict(manifest["config"])
    except (InputError, TypeError, ValueError) as exc:
        raise WeightsError(f"model manifest {manifest_path} has an invalid configuration: {exc}") from None
    entries = {name: manifest["networks"][name] for name in NETWORKS}
    paths = {name: weights_path(manifest_path, entry["file"]) for name, entry in entries.items()}
    nets = {
        name: load_network(paths[name], getattr(config, name), entry["sha256"], device)
        for name, entry in entries.items()
    }
    return config, manifest, nets
