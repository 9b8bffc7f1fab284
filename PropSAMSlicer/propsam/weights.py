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
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
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


def resolve_model(spec: str) -> Path:
    """'lite' (shipped), or a bundle folder, or its manifest.json -> the manifest's path."""
    candidate = Path(spec)
    if candidate.is_dir():
        candidate = candidate / MANIFEST
    if candidate.is_file():
        return candidate
    shipped = SHIPPED_MODELS_DIR / spec / MANIFEST
    if shipped.is_file():
        return shipped
    known = sorted(p.parent.name for p in SHIPPED_MODELS_DIR.glob(f"*/{MANIFEST}"))
    if spec == "paper":
        raise WeightsError(
            "no paper-size weights ship with PropSAM; pass --model with the folder or manifest.json "
            "of your own paper-configuration checkpoint"
        )
    raise WeightsError(f"model {spec!r} not found: not a bundle folder or manifest, and shipped models are {known}")


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"model manifest {path} is unreadable: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise WeightsError(f"model manifest {path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_network(path: Path, expected: NetworkConfig, sha256: str | None, device: str = "cpu") -> torch.nn.Module:
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing")
    if sha256 is not None and sha256_of(path) != sha256:
        raise WeightsError(f"weights file {path.name} is corrupt or replaced: its sha256 does not match the manifest")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        stored = NetworkConfig.from_dict(payload["config"])
        state = payload["state_dict"]
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
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.to(device).eval()


def load_bundle(spec: str, device: str = "cpu") -> tuple[ModelConfig, dict, dict[str, torch.nn.Module]]:
    """-> (configuration, manifest, {"box2mask": net, "propmask": net}) ready for inference."""
    manifest_path = resolve_model(spec)
    manifest = read_manifest(manifest_path)
    try:
        config = ModelConfig.from_dict(manifest["config"])
        entries = {name: manifest["networks"][name] for name in NETWORKS}
    except (KeyError, InputError) as exc:
        raise WeightsError(f"model manifest {manifest_path} is incomplete: {exc}") from None
    nets = {
        name: load_network(manifest_path.parent / entry["file"], getattr(config, name), entry.get("sha256"), device)
        for name, entry in entries.items()
    }
    return config, manifest, nets
