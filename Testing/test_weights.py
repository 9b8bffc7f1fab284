"""Weights carry their configuration and sha256; every kind of damage gives a clear error."""

import json
import shutil

import pytest
import torch

from propsam.engine.segmenter import Segmenter
from propsam.errors import WeightsError
from propsam.weights import load_bundle, resolve_model, sha256_of


@pytest.fixture
def bundle_copy(random_model, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(random_model.parent, folder)
    return folder


def test_round_trip_loads_fp16_weights_into_fp32_networks(bundle_copy):
    config, manifest, nets = load_bundle(str(bundle_copy))
    assert config.name == "lite"
    assert next(nets["propmask"].parameters()).dtype == torch.float32
    assert not nets["propmask"].training


def test_corrupt_weights_are_refused_by_checksum(bundle_copy):
    path = bundle_copy / "propmask.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 does not match"):
        load_bundle(str(bundle_copy))


def test_truncated_file_with_a_matching_checksum_is_refused_as_unreadable(bundle_copy):
    path = bundle_copy / "box2mask.pt"
    path.write_bytes(path.read_bytes()[:1000])
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["networks"]["box2mask"]["sha256"] = sha256_of(path)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="cannot be read"):
        load_bundle(str(bundle_copy))


def test_missing_weights_file(bundle_copy):
    (bundle_copy / "box2mask.pt").unlink()
    with pytest.raises(WeightsError, match="missing"):
        load_bundle(str(bundle_copy))


def test_configuration_mismatch_between_manifest_and_file(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["config"]["propmask"]["base_channels"] = 8
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="another configuration"):
        load_bundle(str(bundle_copy))


def test_unknown_model_and_paper_without_checkpoint(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        resolve_model(str(tmp_path / "nothing"))
    with pytest.raises(WeightsError, match="paper-size weights"):
        resolve_model("paper")


def test_manifest_garbage(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(WeightsError, match="unreadable"):
        Segmenter.load(str(bundle_copy), "cpu")
