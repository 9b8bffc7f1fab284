"""Issue 12, untrusted files: pickled code, model folders, bundle overwrites (items 9, 13, 14, 16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from propsam.cli import main
from propsam.errors import WeightsError
from propsam.training.checkpoint import load_checkpoint, save_checkpoint
from propsam.weights import SHIPPED_MODELS_DIR, load_bundle, resolve_model, sha256_of


class PlantedCode:
    """Unpickling this calls open(marker, "w"): a file appears if the loader runs pickled code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path: Path, marker: Path, payload: dict | None = None) -> None:
    torch.save({**(payload or {}), "step": 1, "tasks_seen": 1, "extra": PlantedCode(marker)}, path)


@pytest.fixture
def bundle_copy(random_model, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(random_model.parent, folder)
    return folder


def edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest = edit(manifest) or manifest
    path.write_text(json.dumps(manifest))


def bundle_args(source: Path, out: Path, *extra: str) -> list[str]:
    return ["bundle", "--name", "t", "--box2mask", str(source / "box2mask.pt"),
            "--propmask", str(source / "propmask.pt"), "--out-dir", str(out), *extra]


# --- item 13: every load of a file a user may have been given refuses pickled code -------------------


def test_checkpoint_module_round_trips_plain_state_and_refuses_planted_code(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "rng": [{"state": {"state": 2**127 + 5}}], "step": 3}
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path / "checkpoint.pt")["rng"][0]["state"]["state"] == 2**127 + 5
    with pytest.raises(WeightsError, match="cannot be loaded safely"):
        save_checkpoint({"step": 1, "bad": PlantedCode(tmp_path / "never")}, tmp_path / "c2.pt")
    assert not (tmp_path / "never").exists() and not (tmp_path / "c2.pt").exists()


def test_train_resume_refuses_a_planted_checkpoint(tmp_path):
    from test_training import tiny_config
    from propsam.training.train import Trainer

    run, marker = tmp_path / "run", tmp_path / "pwned"
    run.mkdir()
    plant(run / "checkpoint.pt", marker)
    with pytest.raises(WeightsError, match="cannot be loaded safely"):
        Trainer(tiny_config(run))
    assert not marker.exists()


def test_train_checkpoint_loads_with_weights_only(tmp_path):
    from test_training import tiny_config
    from propsam.training.train import Trainer

    Trainer(tiny_config(tmp_path / "run", steps=1)).run()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)  # optimizer and RNG included
    assert state["step"] == 1 and state["optimizer"]["state"]


def test_bundle_refuses_a_planted_checkpoint_beside_the_weights(random_model, tmp_path):
    source, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(random_model.parent, source)
    plant(source / "checkpoint.pt", marker)
    assert main(bundle_args(source, tmp_path / "out")) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_bundle_refuses_planted_weights(random_model, tmp_path):
    source, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(random_model.parent, source)
    plant(source / "propmask.pt", marker)
    assert main(bundle_args(source, tmp_path / "out")) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_engine_refuses_planted_weights_even_with_a_matching_sha256(bundle_copy, tmp_path):
    marker = tmp_path / "pwned"
    plant(bundle_copy / "box2mask.pt", marker)
    edit_manifest(bundle_copy, lambda m: m["networks"]["box2mask"].update(sha256=sha256_of(bundle_copy / "box2mask.pt")))
    with pytest.raises(WeightsError, match="cannot be read"):
        load_bundle(str(bundle_copy))
    assert not marker.exists()


# --- item 9: bundle never replaces an existing bundle without --force --------------------------------


def test_bundle_out_dir_is_not_overwritten_without_force(random_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(bundle_args(random_model.parent, out)) == 0
    manifest = (out / "manifest.json").read_bytes()
    (out / "t_propmask.pt").write_bytes(b"a reader's own file")
    assert main(bundle_args(random_model.parent, out)) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == manifest
    assert (out / "t_propmask.pt").read_bytes() == b"a reader's own file"
    assert main(bundle_args(random_model.parent, out, "--force")) == 0
    assert load_bundle(str(out))[0].name == "t"


def test_bundle_name_cannot_leave_the_out_dir(random_model, tmp_path):
    args = bundle_args(random_model.parent, tmp_path / "out")
    args[args.index("t")] = "../escape"
    assert main(args) == 2
    assert not list(tmp_path.glob("*escape*"))


# --- item 14: a model folder is confined to itself and to finite, hashed weights ---------------------


@pytest.mark.parametrize("file", ["../../../../etc/passwd", "/etc/passwd", "sub/../../box2mask.pt", ".."])
def test_manifest_paths_must_stay_inside_the_bundle(bundle_copy, file):
    edit_manifest(bundle_copy, lambda m: m["networks"]["box2mask"].update(file=file))
    with pytest.raises(WeightsError, match="bundle folder"):
        load_bundle(str(bundle_copy))


def test_a_link_out_of_the_bundle_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "outside.pt"
    shutil.move(bundle_copy / "box2mask.pt", outside)
    (bundle_copy / "box2mask.pt").symlink_to(outside)
    with pytest.raises(WeightsError, match="outside the bundle folder"):
        load_bundle(str(bundle_copy))


@pytest.mark.parametrize("sha256", [None, "", "abc", 12])
def test_sha256_is_required(bundle_copy, sha256):
    def edit(m):
        if sha256 is None:
            del m["networks"]["propmask"]["sha256"]
        else:
            m["networks"]["propmask"]["sha256"] = sha256
    edit_manifest(bundle_copy, edit)
    with pytest.raises(WeightsError, match="sha256"):
        load_bundle(str(bundle_copy))


def test_a_model_name_never_means_a_folder_in_the_working_directory(bundle_copy, tmp_path, monkeypatch):
    planted = tmp_path / "cwd" / "lite"
    shutil.copytree(bundle_copy, planted)
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_model("lite") == SHIPPED_MODELS_DIR / "lite" / "manifest.json"
    assert resolve_model("./lite").resolve() == planted / "manifest.json"
    shutil.copytree(bundle_copy, tmp_path / "cwd" / "paper")
    with pytest.raises(WeightsError, match="no paper-size weights ship"):
        resolve_model("paper")


def test_non_finite_weights_are_refused(bundle_copy):
    path = bundle_copy / "propmask.pt"
    payload = torch.load(path, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name][0] = float("nan")
    torch.save(payload, path)
    edit_manifest(bundle_copy, lambda m: m["networks"]["propmask"].update(sha256=sha256_of(path)))
    with pytest.raises(WeightsError, match="NaN or infinite"):
        load_bundle(str(bundle_copy))


# --- item 16: a malformed manifest is a one-line error, not a traceback ------------------------------


@pytest.mark.parametrize("content", [
    "[]", "null", "3",
    lambda m: m.update(networks=[m["networks"]["box2mask"], m["networks"]["propmask"]]),
    lambda m: m["networks"]["box2mask"].update(file=7),
    lambda m: m["networks"].pop("propmask"),
    lambda m: m.update(config=None),
    lambda m: m["config"].update(box2mask=[1, 2]),
])
def test_malformed_manifest_is_a_weights_error(bundle_copy, content):
    if isinstance(content, str):
        (bundle_copy / "manifest.json").write_text(content)
    else:
        edit_manifest(bundle_copy, content)
    with pytest.raises(WeightsError, match="manifest"):
        load_bundle(str(bundle_copy))
