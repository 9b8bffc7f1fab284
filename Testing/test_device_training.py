"""The device training path on the CPU: training pack, on-device batches and synthesis, a tiny run
through the Trainer, and no SimpleITK on that path (the lent GPU machine has none)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from propsam.engine.intensity import apply_window
from propsam.engine.roi import Roi, crop_to_model, roi_grid
from propsam.training.device_data import (
    pack_atlas, roi_points, sample_box2mask_batch, sample_planes, sample_propmask_batch,
)
from propsam.training.device_synth import SynthOptions, SynthPoolGPU
from propsam.training.pack import PackedVolume, build_pack, load_pack, pack_meta, quantise
from propsam.training.phantoms import make_phantom
from propsam.training.phantom_sources import phantom_source
from propsam.training.tasks import TaskOptions, collate, sample_box2mask, sample_propmask_task

REPO = Path(__file__).resolve().parents[1]


def _blobs(seed: int, shape=(20, 40, 40)) -> tuple[np.ndarray, np.ndarray]:
    """A small image with two touching labels and a separate one."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int16)
    labels[4:14, 8:20, 8:20] = 1
    labels[4:14, 20:30, 8:20] = 2
    labels[8:16, 28:36, 26:36] = 5
    image = (100 + 50 * labels + 5 * rng.standard_normal(shape)).astype(np.float32)
    return image, labels


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data folder with a training-split manifest of npz volumes and one evaluation volume."""
    root = tmp_path_factory.mktemp("data")
    for name, seed in (("a", 0), ("b", 1), ("held_out", 2)):
        image, labels = _blobs(seed)
        np.savez(root / f"{name}.npz", vol=image, seg=labels)
    manifest = {"volumes": [
        {"id": "a", "npz": "a.npz", "objects": "each", "modality": "MR", "split": "train", "weight": 2.0},
        {"id": "b", "npz": "b.npz", "objects": "components", "modality": "CT", "split": "train"},
        {"id": "held_out", "npz": "held_out.npz", "objects": "each", "modality": "MR", "split": "eval"},
    ]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def pack(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pack") / "train_pack.npz"
    build_pack(data_dir, out, ["a"], phantoms=2, manifest_path=data_dir / "manifest.json")
    return out


def test_pack_round_trip_holds_the_training_split_only(pack, data_dir):
    volumes, maps = load_pack(pack)
    assert [v.id for v in volumes] == ["a", "b", "phantom_1000000", "phantom_1000001"]
    assert maps == ["a"] and "held_out" in pack_meta(pack)["eval_ids_excluded"]
    a = volumes[0]
    image, labels = _blobs(0)
    crop = tuple(slice(*c) for c in pack_meta(pack)["volumes"][0]["crop"])
    assert np.array_equal(a.labels, labels[crop]) and a.spacing_zyx == (1.0, 1.0, 1.0) and a.weight == 2.0
    assert np.abs(a.image - image[crop]).max() < 0.02 * np.ptp(image)  # 8 bits over the range, and finer where values are
    phantom = make_phantom(1_000_000)
    assert np.array_equal(volumes[2].labels, phantom.labels) and volumes[2].kind == "phantom"
    voxels = sum(v.image.size for v in volumes)
    assert pack.stat().st_size < 1.2 * voxels  # 8-bit images + labels, compressed
    with pytest.raises(ValueError, match="not in the training split"):
        build_pack(data_dir, pack.parent / "x.npz", ["held_out"], phantoms=0, manifest_path=data_dir / "manifest.json")


def test_quantisation_keeps_narrow_soft_tissue_windows():
    """A CT-like volume: air, soft tissue in a 100 HU band, bone. 8-bit linear steps would be ~10 HU;
    the quantile levels keep the soft-tissue band to about a HU."""
    rng = np.random.default_rng(0)
    values = np.concatenate([np.full(50_000, -1000.0), rng.normal(40, 20, 40_000), rng.uniform(200, 1500, 10_000)])
    codes, table = quantise(values.astype(np.float32).reshape(10, 100, 100))
    decoded = table[codes].ravel()
    soft = (values > 0) & (values < 80)
    linear = np.round((values - values.min()) / np.ptp(values) * 255) / 255 * np.ptp(values) + values.min()
    assert np.abs(linear[soft] - values[soft]).mean() > 2.0  # what plain 8-bit scaling would keep
    assert codes.dtype == np.uint8 and np.abs(decoded[soft] - values[soft]).mean() < 0.8


def _phantom_volumes(seeds) -> list[PackedVolume]:
    out = []
    for s in seeds:
        p = make_phantom(s)
        out.append(PackedVolume(f"p{s}", p.image, p.labels, tuple(p.spacing[::-1]), p.modality, 1.0, "each", "exact", "phantom"))
    return out


def test_device_planes_match_the_engine_crop():
    """sample_planes + windowing read the same pixels as engine.roi.roi_grid + crop_to_model."""
    vols = _phantom_volumes([5])
    atlas = pack_atlas(vols, "cpu")
    image = vols[0].image
    roi = Roi(40.3, 37.8, 21.5, 17.2)
    for axis, index, rotation, flip in ((0, 7, 0.0, False), (1, 50, 90.0, True), (2, 33, 17.0, True)):
        plane = np.take(image, [index], axis=axis)
        plane = np.moveaxis(plane, axis, 0)
        grid = roi_grid(roi, 32, plane.shape[1:], rotation_deg=rotation, flip_rows=flip)
        expected = crop_to_model(apply_window(torch.from_numpy(plane), 0.0, 300.0), grid)[0]
        t = lambda v: torch.tensor([v])  # noqa: E731
        rows, cols = roi_points(t(roi.centre_row), t(roi.centre_col), t(roi.half_rows), t(roi.half_cols), 32,
                                t(rotation), torch.tensor([flip]))
        planes = sample_planes(atlas, torch.tensor([0]), torch.tensor([axis]), torch.tensor([[index]]), rows, cols)
        got = planes.windowed(torch.tensor([0.0]), torch.tensor([300.0]))[0, 0]
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("memory_slices, self_guide", [(1, 0.0), (2, 0.0), (1, 1.0)])
def test_device_batches_have_the_cpu_tasks_keys_shapes_and_ranges(memory_slices, self_guide):
    seeds = [3, 4, 6]
    atlas = pack_atlas(_phantom_volumes(seeds), "cpu")
    sources = [phantom_source(s, 1.0) for s in seeds]
    gen = torch.Generator().manual_seed(0)
    opt = TaskOptions(image_size=32, adjacent=4, memory=True, memory_slices=memory_slices, perturb_guide=0.5,
                      self_guide=self_guide)
    cpu = collate([sample_propmask_task(sources, np.random.default_rng(i), opt) for i in range(2)])
    dev = sample_propmask_batch(atlas, 24, gen, opt)
    assert {k: (v.shape[1:], v.dtype) for k, v in dev.items()} == {k: (v.shape[1:], v.dtype) for k, v in cpu.items()}
    assert dev["adjacent"].shape[0] == 24
    for key in ("guide_image", "adjacent", "memory_image"):
        assert 0 <= float(dev[key].min()) and float(dev[key].max()) <= 1 and float(dev[key].std()) > 0.05
    for key in ("guide_mask", "target", "memory_mask", "presence"):
        assert set(dev[key].unique().tolist()) <= {0.0, 1.0}
    assert bool((dev["guide_mask"].flatten(1).sum(1) > 0).all())
    assert 0 < float(dev["presence"].mean()) < 1  # both present and absent slices (ends are sampled)
    # presence agrees with the targets, up to sub-pixel objects lost by resampling
    assert bool(((dev["target"].flatten(2).sum(2) > 0) <= (dev["presence"] > 0)).all())
    assert float(dev["position"].abs().min()) > 0 and float(dev["position"].abs().max()) <= 1
    if self_guide:  # some guides lie past the prompt (a source behind them), some are the prompt
        assert 0 < float(dev["self_guide"].mean()) < 1
        assert bool((dev["source_mask"][dev["self_guide"] > 0].flatten(1).sum(1) >= 16).all())

    cpu_b = collate([sample_box2mask(sources, np.random.default_rng(1), opt)])
    dev_b = sample_box2mask_batch(atlas, 16, gen, opt)
    assert {k: (v.shape[1:], v.dtype) for k, v in dev_b.items()} == {k: (v.shape[1:], v.dtype) for k, v in cpu_b.items()}
    assert 0.05 < float(dev_b["target"].mean()) < 0.95 and float(dev_b["image"].max()) <= 1


def test_device_synthesis_is_seeded_and_labels_its_objects():
    image, labels = _blobs(3, shape=(24, 48, 48))
    maps = [PackedVolume("m", image, labels, (1.0, 1.0, 1.0), "MR", 1.0, "each", "exact", "real")]
    options = SynthOptions(volumes=3, groups=2, max_crop=(24, 48, 48))

    def pool(seed):
        p = SynthPoolGPU(maps, "cpu", options, total_weight=2.0)
        p.refresh(torch.Generator().manual_seed(seed))
        return p

    a, b = pool(0), pool(0)
    assert len(a.atlases) == 2 and torch.equal(a.atlases[0].image, b.atlases[0].image)
    assert not torch.equal(a.atlases[0].image, pool(1).atlases[0].image)
    atlas = a.atlases[0]
    assert bool(torch.isfinite(atlas.image).all()) and atlas.obj_volume.numel() > 0
    assert abs(sum(x.total_weight for x in a.atlases) - 2.0) < 1e-5
    # each object's area table counts the voxels of its labels
    for o in range(atlas.obj_volume.numel()):
        v = int(atlas.obj_volume[o])
        n = int(atlas.shape[v].prod())
        lab = atlas.labels[atlas.offset[v] : atlas.offset[v] + n].long()
        inside = atlas.members[o][lab].sum()
        assert int(atlas.areas[o, 0].sum()) == int(inside) == int(atlas.areas[o, 2].sum())
    batch = sample_propmask_batch(atlas, 4, torch.Generator().manual_seed(2), TaskOptions(image_size=32, adjacent=2))
    assert batch["adjacent"].shape == (4, 2, 1, 32, 32)


def tiny_recipe(shipped: str, pack: Path, out_dir: Path, in_channels: int = 1, mask_hint: bool = False) -> dict:
    """A shipped GPU recipe shrunk to seconds on the CPU: tiny network, batches and synthesis, the
    test's pack, no warm start."""
    recipe = json.loads((REPO / "PropSAMSlicer/propsam/training/recipes" / shipped).read_text())
    network = {"image_size": 32, "base_channels": 4, "max_channels": 16, "stages": 4}
    if recipe["network"] == "propmask":
        network.update(prompt_memory=True, attention_stages=2, in_channels=in_channels, mask_hint=mask_hint)
    recipe.update(out_dir=str(out_dir), pack=str(pack), synthesis_maps=["a"], init_from="", batch_size=2,
                  adjacent=2, max_minutes=0.1, checkpoint_minutes=0.02, warmup_steps=2, log_every=1, threads=1,
                  device_sampler={"synth_refresh_every": 3, "synthesis": {"volumes": 2, "groups": 1, "max_crop": [16, 32, 32]}},
                  network_overrides=network)
    return recipe


@pytest.mark.parametrize("in_channels, mask_hint", [(1, False), (3, True)])
def test_tiny_device_training_stops_by_its_budget_without_simpleitk(pack, tmp_path, in_channels, mask_hint):
    """The device command's path (training CLI, pack, device sampler) in a process where SimpleITK,
    pydicom and highdicom cannot be imported, as on the lent GPU machine; 2D, and 2.5D with the mask hint."""
    recipe = tiny_recipe("lite_v2_propmask_gpu.json", pack, tmp_path / "run", in_channels=in_channels, mask_hint=mask_hint)
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    block = "import sys, runpy; [sys.modules.__setitem__(m, None) for m in ('SimpleITK', 'pydicom', 'highdicom')]; "
    run = (f"{block}sys.argv = ['x', 'train', '--config', {str(tmp_path / 'recipe.json')!r}, '--weights-dir', "
           f"{str(tmp_path / 'out')!r}]; runpy.run_module('propsam.training.cli', run_name='__main__')")
    env = {"PYTHONPATH": str(REPO / "PropSAMSlicer"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1] == {"stopped": "max_minutes", "step": log[-2]["step"]} and log[-2]["step"] >= 2
    assert log[-2]["lr"] < 0.5 * max(r.get("lr", 0) for r in log)  # the cosine runs over the time budget
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    from propsam.config import NetworkConfig
    from propsam.weights import load_network, sha256_of

    weights = tmp_path / "out" / "propmask.pt"
    config = NetworkConfig.from_dict(torch.load(weights, weights_only=True)["config"])
    assert config.prompt_memory and config.in_channels == in_channels and config.mask_hint == mask_hint
    assert load_network(weights, config, sha256_of(weights)) is not None
    assert "SimpleITK" not in result.stdout + result.stderr


def test_cosine_over_the_time_budget_reaches_lr_min():
    from propsam.training.train import TrainConfig, cosine_lr

    cfg = TrainConfig(out_dir="x", steps=10**6, warmup_steps=10, lr=1e-3, lr_min=1e-5)
    assert cosine_lr(20, cfg, time_fraction=0.0) == pytest.approx(1e-3, rel=1e-3)
    assert cosine_lr(20, cfg, time_fraction=0.5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert cosine_lr(20, cfg, time_fraction=1.0) == pytest.approx(1e-5)


def test_pack_data_refuses_to_overwrite_and_checks_its_recipe(tmp_path):
    from propsam.cli import main

    existing = tmp_path / "pack.npz"
    existing.write_bytes(b"user data")
    assert main(["pack-data", "--out", str(existing)]) == 2 and existing.read_bytes() == b"user data"
    assert main(["pack-data", "--out", str(tmp_path / "new.npz"), "--recipe", str(tmp_path / "none.json")]) == 2
    assert not (tmp_path / "new.npz").exists()


def test_device_sampler_takes_the_recipes_lesion_settings(pack, tmp_path):
    """lesion_kinds and lesion_share are read from the recipe's top level, as the CPU sampler reads
    them; the same keys under device_sampler.synthesis would be a second, silent way: refused."""
    from propsam.training.device_data import DeviceSampler
    from propsam.training.train import TrainConfig

    common = dict(out_dir=str(tmp_path), network="propmask", sampler="device", pack=str(pack), synthesis_maps=["a"],
                  device_sampler={"synthesis": {"volumes": 2, "groups": 1, "max_crop": [16, 32, 32]}})
    cfg = TrainConfig(**common, lesion_kinds=["stack", "tapering"], lesion_share=1.0)
    sampler = DeviceSampler(cfg, torch.device("cpu"), TaskOptions(image_size=32, adjacent=2))
    assert sampler.synth.options.lesion_kinds == ("stack", "tapering") and sampler.synth.options.lesion_share == 1.0
    nested = TrainConfig(**{**common, "device_sampler": {"synthesis": {"volumes": 2, "lesion_share": 0.5}}})
    with pytest.raises(ValueError, match="top level"):
        DeviceSampler(nested, torch.device("cpu"), TaskOptions(image_size=32, adjacent=2))


def test_device_small_share_draws_small_objects_with_small_guides():
    """As tasks._pick_guided: small_share's draws are an object and axis whose slices are all at
    most small_area pixels, guided from SMALL_GUIDE_AREA up; the others from MIN_GUIDE_AREA."""
    from propsam.training.atlas import build_atlas
    from propsam.training.device_data import _pick_pairs
    from propsam.training.tasks import MIN_GUIDE_AREA, SMALL_GUIDE_AREA

    labels = torch.zeros((40, 64, 64), dtype=torch.int16)
    labels[5:35, 5:25, 5:25] = 1  # 400 px on a z slice
    labels[5:35, 40:43, 40:43] = 2  # a rod: 9 px on a z slice, 90 on a y or x slice
    atlas = build_atlas([(100.0 * labels.float(), labels, (1.0, 1.0, 1.0), 1.0, [[1], [2]])], "cpu")
    gen = torch.Generator().manual_seed(0)
    obj, axis, areas, least = _pick_pairs(atlas, 200, gen, small_share=1.0, small_area=100)
    assert set(obj.tolist()) == {1} and bool((areas.amax(1) <= 100).all()) and bool((least == SMALL_GUIDE_AREA).all())
    assert bool((axis == 0).any())  # the rod's 9-pixel z slices are guides now
    obj, axis, areas, least = _pick_pairs(atlas, 200, gen)
    assert set(obj.tolist()) == {0, 1} and bool((least == MIN_GUIDE_AREA).all())
    batch = sample_propmask_batch(atlas, 16, gen, TaskOptions(image_size=32, adjacent=2, small_share=1.0))
    assert bool((batch["guide_mask"].flatten(1).sum(1) > 0).all())


def _device_script(tmp_path, pack, runs: str, **env) -> subprocess.CompletedProcess:
    """scripts/train_device.sh as the device command runs it, on the CPU with tiny recipes."""
    recipes = tmp_path / "recipes"
    recipes.mkdir(exist_ok=True)
    for shipped in ("lite_v2_propmask_gpu.json", "lite_v2_box2mask_gpu.json"):
        (recipes / shipped).write_text(json.dumps(tiny_recipe(shipped, pack, tmp_path / "unused")))
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "PREFLIGHT": "0",
           "RECIPES": str(recipes), "RUNS": runs, "PACK": str(pack), "RUNS_DIR": str(tmp_path / "runs"), **env}
    return subprocess.run(["bash", str(REPO / "scripts/train_device.sh"), str(tmp_path / "out"), "0.1"],
                          capture_output=True, text=True, env=env, timeout=300)


def test_the_device_command_trains_runs_side_by_side_and_returns_each_runs_weights(pack, tmp_path):
    """The one command a lent GPU runs: two runs side by side (2D PropMask, Box2Mask), each one's
    weights, log and summary line in OUT; weights over the per-file limit come back in parts that
    join to the file the summary's sha256 names."""
    import hashlib

    result = _device_script(tmp_path, pack, "pm:lite_v2_propmask_gpu.json b2m:lite_v2_box2mask_gpu.json",
                            PART_BYTES="20000")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = tmp_path / "out"
    summary = (out / "summary.txt").read_text()
    for name in ("pm", "b2m"):
        line = next(l for l in summary.splitlines() if l.startswith(f"{name}.pt "))
        digest, size = line.split()[1], int(line.split()[2])
        parts = sorted(out.glob(f"{name}.pt.part*"))
        assert size > 20000 and len(parts) >= 2 and not (out / f"{name}.pt").exists()  # split below the limit
        joined = b"".join(p.read_bytes() for p in parts)
        assert len(joined) == size and hashlib.sha256(joined).hexdigest() == digest
        assert f"{name}: steps " in summary and (out / f"{name}.log").read_text().count('"tasks_per_s"') >= 2
    assert "torch " in summary and (tmp_path / "runs" / "device_pm" / "checkpoint.pt").exists()  # the device's line heads it


def test_the_device_command_refuses_without_its_pack_before_anything(pack, tmp_path):
    result = _device_script(tmp_path, pack, "pm:lite_v2_propmask_gpu.json", PACK=str(tmp_path / "missing.npz"))
    assert result.returncode == 2 and "missing.npz is missing" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_the_device_command_refuses_more_runs_than_can_come_back(pack, tmp_path):
    """Three runs would write up to 11 files; the device tool returns 8: refused before training."""
    result = _device_script(tmp_path, pack, "a:lite_v2_propmask_gpu.json b:lite_v2_propmask_gpu.json c:lite_v2_box2mask_gpu.json")
    assert result.returncode == 2 and "at most 2" in result.stderr
    assert not (tmp_path / "runs").exists()



@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs the git checkout to list the tracked files")
def test_the_slimmed_checkout_and_the_pack_fit_what_the_device_tool_sends():
    """The device tool sends at most 64 MiB: tracked files without v1's weights plus the pack
    (22 MiB counted where cache/ is not built). Fails when the tracked tree grows past that."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "device_slim.sh"), "--dry-run"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    total = float(result.stdout.split(": ")[-1].split(" MiB")[0])
    assert 20 < total <= 64
    assert all((REPO / "PropSAMSlicer/Resources/Models/lite_v1" / f).exists() for f in ("lite_propmask.pt", "lite_box2mask.pt"))
