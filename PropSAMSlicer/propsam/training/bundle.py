"""Assemble trained networks into a model bundle (weights + manifest) the engine can load."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import torch

from ..config import ModelConfig, NetworkConfig
from ..errors import InputError
from ..weights import NETWORKS, write_manifest


def _run_summary(weights: Path) -> dict:
    """What the run folder's checkpoint says about how these weights were trained."""
    checkpoint = weights.parent / "checkpoint.pt"
    if not checkpoint.exists():
        return {}
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = state.get("train_config", {})
    keep = ("steps", "batch_size", "adjacent", "lr", "lr_min", "weight_decay", "seed", "phantom_pool", "network_overrides")
    return {"steps_done": state["step"], "tasks_seen": state["tasks_seen"], "recipe": {k: cfg[k] for k in keep if k in cfg}}


def make_bundle(name: str, weights: dict[str, Path], out_dir: Path, extra: dict | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    configs, files, training = {}, {}, {}
    for network in NETWORKS:
        source = Path(weights[network])
        if not source.is_file():
            raise InputError(f"{network} weights {source} do not exist")
        payload = torch.load(source, map_location="cpu", weights_only=True)
        configs[network] = NetworkConfig.from_dict(payload["config"])
        files[network] = f"{name}_{network}.pt"
        if source.resolve() != (out_dir / files[network]).resolve():
            shutil.copyfile(source, out_dir / files[network])
        training[network] = _run_summary(source)
    config = ModelConfig(name, configs["box2mask"], configs["propmask"])
    info = {"created": datetime.date.today().isoformat(), "training": training}
    info.update(extra or {})
    return write_manifest(out_dir, config, files, info)


def random_bundle(folder: Path, name: str = "lite", seed: int = 0) -> Path:
    """A bundle of seeded random weights: exercises loading, checks and geometry in tests
    (pytest and Slicer's self-test) without depending on trained weights."""
    from ..config import named_config
    from ..modeling import build_network
    from ..weights import save_network

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = named_config(name)
    torch.manual_seed(seed)
    files = {}
    for network in NETWORKS:
        files[network] = f"{network}.pt"
        save_network(build_network(getattr(config, network)), getattr(config, network), folder / files[network])
    return write_manifest(folder, config, files)
