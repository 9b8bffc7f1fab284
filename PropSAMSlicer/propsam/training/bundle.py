"""Assemble trained networks into a model bundle (weights + manifest) the engine can load."""

from __future__ import annotations

import datetime
import json
import re
import shutil
from pathlib import Path

import torch

from ..config import ModelConfig, NetworkConfig
from ..errors import InputError, WeightsError
from ..io.atomic import atomic_path
from ..weights import MANIFEST, NETWORKS, read_manifest, write_manifest
from .checkpoint import FILENAME as CHECKPOINT_FILENAME, load_checkpoint

BUNDLE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # becomes part of the weights' file names


RECIPE_RECORD = ("steps", "batch_size", "adjacent", "lr", "lr_min", "weight_decay", "seed", "phantom_pool", "network_overrides",
                 "init_from", "synthesis_maps", "synth_pool", "synth_weight", "lesion_kinds", "lesion_share", "perturb_guide",
                 "end_fraction", "small_share")  # the recipe's settings a manifest keeps


def _run_summary(weights: Path) -> dict:
    """What the run folder's checkpoint (else its log, else the bundle the weights already ship
    in) says about how these weights were trained."""
    checkpoint = weights.parent / CHECKPOINT_FILENAME
    if not checkpoint.exists():
        return _log_summary(weights) or _bundle_summary(weights)
    state = load_checkpoint(checkpoint)
    cfg = state.get("train_config", {})
    try:
        return {"steps_done": int(state["step"]), "tasks_seen": int(state["tasks_seen"]),
                "recipe": {k: cfg[k] for k in RECIPE_RECORD if k in cfg}}
    except (KeyError, TypeError, ValueError):
        raise WeightsError(f"checkpoint {checkpoint} lacks the step count of its run") from None


def _log_summary(weights: Path) -> dict:
    """Without a checkpoint (a lent GPU's run returns weights and logs only): the training log's
    last step, `NETWORK.log` or `log.jsonl` beside the weights."""
    for name in (f"{weights.stem}.log", "log.jsonl"):
        path = weights.parent / name
        if path.is_file():
            steps = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "tasks_seen" in record:
                    steps.append(record)
            if steps:
                return {"steps_done": int(steps[-1]["step"]), "tasks_seen": int(steps[-1]["tasks_seen"]), "from_log": name}
    return {}


def _bundle_summary(weights: Path) -> dict:
    """Weights taken from a shipped bundle (one network replaced, the other kept): that bundle's
    training record of this file, so re-bundling never loses how the kept network was trained."""
    path = weights.parent / MANIFEST
    if not path.is_file():
        return {}
    manifest = read_manifest(path)
    for network, entry in manifest["networks"].items():
        if entry.get("file") == weights.name and network in manifest.get("training", {}):
            record = {**manifest["training"][network], "from_bundle": manifest.get("name", "")}
            if "warm_start" in manifest:
                record["warm_start"] = manifest["warm_start"]
            return record
    return {}


def _network_config(network: str, source: Path) -> NetworkConfig:
    if not source.is_file():
        raise InputError(f"{network} weights {source} do not exist")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
        return NetworkConfig.from_dict(payload["config"])
    except (InputError, KeyError, TypeError) as exc:
        raise WeightsError(f"{network} weights {source} have no valid configuration: {exc}") from None
    except Exception as exc:  # UnpicklingError (foreign objects) and the many errors of a damaged file
        raise WeightsError(f"{network} weights {source} cannot be loaded safely: {type(exc).__name__}") from None


def make_bundle(name: str, weights: dict[str, Path], out_dir: Path, extra: dict | None = None,
                *, force: bool = False) -> Path:
    """Copy the weights into `out_dir` and write its manifest; existing files only with force.

    Everything is checked (sources, names, outputs) before the first file is written."""
    if not BUNDLE_NAME.fullmatch(name):
        raise InputError(f"model name {name!r} must be letters, digits, '_', '-' or '.', not starting with '.'")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir} is a file, expected a folder")
    configs, files, training = {}, {}, {}
    for network in NETWORKS:
        source = Path(weights[network])
        configs[network] = _network_config(network, source)
        files[network] = f"{name}_{network}.pt"
        training[network] = _run_summary(source)
    targets = [out_dir / MANIFEST] + [
        out_dir / files[n] for n in NETWORKS if Path(weights[n]).resolve() != (out_dir / files[n]).resolve()
    ]
    for target in targets:
        if target.exists() and not force:
            raise InputError(f"bundle file {target} already exists; pass --force to replace the bundle")
    out_dir.mkdir(parents=True, exist_ok=True)
    for network in NETWORKS:
        source, target = Path(weights[network]), out_dir / files[network]
        if source.resolve() != target.resolve():
            with atomic_path(target, replace=force) as tmp:
                shutil.copyfile(source, tmp)
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
