"""The shipped lite model: it loads from the repository, and it segments real and generated
objects well enough to guard against a broken or swapped checkpoint (thresholds sit below the
accuracy measured in MODEL.md, so they catch regressions, not noise)."""

import pytest

from propsam.engine.prompts import BoxPrompt, MaskPrompt
from propsam.engine.roi import mask_bbox
from propsam.engine.segmenter import Segmenter
from propsam.evaluation.harness import headline_means, read_results
from propsam.evaluation.metrics import dice
from propsam.evaluation.objects import largest_slice
from propsam.io.volume import read_volume
from propsam.weights import SHIPPED_MODELS_DIR, load_bundle, read_manifest


@pytest.fixture(scope="module")
def lite():
    return Segmenter.load("lite", "cpu")


def test_manifest_records_config_checksums_and_training():
    manifest = read_manifest(SHIPPED_MODELS_DIR / "lite" / "manifest.json")
    assert manifest["name"] == "lite"
    assert manifest["training"]["propmask"]["tasks_seen"] > 1000
    for entry in manifest["networks"].values():
        path = SHIPPED_MODELS_DIR / "lite" / entry["file"]
        assert path.stat().st_size < 20 * 2**20
    load_bundle("lite")  # sha256 and shapes verified


def test_manifest_evaluation_table_is_the_committed_results():
    manifest = read_manifest(SHIPPED_MODELS_DIR / "lite" / "manifest.json")
    results = SHIPPED_MODELS_DIR.parents[2] / manifest["evaluation"]["results"]
    assert manifest["evaluation"]["headline_means"] == headline_means(read_results(results))


def largest_axial(truth):
    z = largest_slice(truth)
    r0, c0, r1, c1 = mask_bbox(truth[z])
    return z, (c0, r0, c1, r1)


def test_spleen_from_mask_and_box(lite, shared_data):
    volume = read_volume(shared_data("msd-spleen2-crop", "sub-spleen2_ct.nii.gz"))
    truth = read_volume(shared_data("msd-spleen2-crop", "sub-spleen2_ct_seg-manual.nii.gz")).array > 0
    z, box = largest_axial(truth)
    assert dice(lite.segment(volume, MaskPrompt(z, truth[z])).mask, truth) > 0.75
    assert dice(lite.segment(volume, BoxPrompt(z, box)).mask, truth) > 0.70


def test_demo_writes_mask_preview_and_a_sensible_result(tmp_path, capsys):
    from propsam.demo import main

    assert main(["--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "sample_mask.nii.gz").exists()
    assert (tmp_path / "sample_preview.png").read_bytes()[:4] == b"\x89PNG"
    score = float(out.rsplit("Dice against the phantom's truth:", 1)[1].split()[0])
    assert score > 0.7, out


def test_v1_stays_loadable_and_its_manifest_matches_its_results():
    manifest = read_manifest(SHIPPED_MODELS_DIR / "lite_v1" / "manifest.json")
    assert manifest["name"] == "lite_v1" and not manifest["config"]["propmask"].get("prompt_memory")
    results = SHIPPED_MODELS_DIR.parents[2] / manifest["evaluation"]["results"]
    assert manifest["evaluation"]["headline_means"] == headline_means(read_results(results))
    assert load_bundle("lite_v1")[0].name == "lite_v1"


def test_shipped_v2_records_its_warm_start_and_memory():
    """The manifest keeps the whole lineage: v2.1's PropMask continues v2's, which continued v1's."""
    manifest = read_manifest(SHIPPED_MODELS_DIR / "lite" / "manifest.json")
    assert manifest["config"]["propmask"]["prompt_memory"]
    chain, link, tasks = [], manifest, manifest["training"]["propmask"]["tasks_seen"]
    while "warm_start" in link:
        link = link["warm_start"]
        chain.append(link["model"])
        tasks += link["training"]["propmask"]["tasks_seen"]
    assert chain == ["lite", "lite_v1"] and tasks > 100_000
    assert manifest["training"]["propmask"]["recipe"]["end_fraction"] == 0.5


def test_shipped_weights_hold_cpu_tensors_only():
    """Weights trained on a GPU were once written with CUDA storages: they loaded only through our
    map_location, and a plain torch.load on a machine without CUDA failed."""
    import torch

    for folder in sorted(p for p in SHIPPED_MODELS_DIR.iterdir() if (p / "manifest.json").exists()):
        for entry in read_manifest(folder / "manifest.json")["networks"].values():
            payload = torch.load(folder / entry["file"], weights_only=True)  # no map_location on purpose
            assert all(t.device.type == "cpu" for t in payload["state_dict"].values()), entry["file"]
