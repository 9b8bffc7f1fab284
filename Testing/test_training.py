"""Training: phantoms, task sampling, losses, exact resume, DDP on CPU, bundling."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from propsam.training.phantoms import make_phantom
from propsam.training.phantom_sources import phantom_source
from propsam.training.tasks import TaskOptions, sample_box2mask, sample_propmask_task
from propsam.training.train import TrainConfig, Trainer, cosine_lr

REPO = Path(__file__).resolve().parents[1]


def test_phantoms_are_seeded_and_labelled():
    a, b = make_phantom(3), make_phantom(3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.labels.max() == len(a.shapes) >= 1
    assert not np.array_equal(make_phantom(4).image.shape + (0,), a.image.shape + (1,))


def test_propmask_tasks_include_empty_targets_near_object_ends():
    sources = [phantom_source(s, 1.0) for s in range(4)]
    rng = np.random.default_rng(0)
    opt = TaskOptions(end_fraction=1.0)
    tasks = [sample_propmask_task(sources, rng, opt) for _ in range(20)]
    assert tasks[0]["adjacent"].shape == (8, 1, 96, 96) and tasks[0]["guide_mask"].sum() > 0
    presence = torch.cat([t["presence"] for t in tasks])
    assert 0 < presence.mean() < 1  # both present and absent targets
    for t in tasks:  # presence agrees with the target masks (up to sub-pixel objects lost by resampling)
        assert bool(((t["target"].flatten(1).sum(1) > 0) <= (t["presence"] > 0)).all())


def test_box2mask_samples():
    sources = [phantom_source(s, 1.0) for s in range(2)]
    sample = sample_box2mask(sources, np.random.default_rng(1), TaskOptions())
    assert sample["image"].shape == (1, 96, 96) and 0 < sample["target"].mean() < 1


def test_cosine_schedule_warms_up_and_ends_at_lr_min():
    cfg = TrainConfig(out_dir="x", steps=100, warmup_steps=10, lr=1e-3, lr_min=1e-5)
    assert cosine_lr(0, cfg) == pytest.approx(1e-4)
    assert cosine_lr(10, cfg) == pytest.approx(1e-3)
    assert cosine_lr(100, cfg) == pytest.approx(1e-5)


def tiny_config(out_dir, **kw):
    base = dict(out_dir=str(out_dir), network="propmask", steps=4, batch_size=1, adjacent=2, data_dir="/nonexistent",
                phantom_pool=2, checkpoint_every=2, log_every=1, threads=1, warmup_steps=1)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_is_exact(tmp_path):
    straight = Trainer(tiny_config(tmp_path / "a"))
    straight.run()
    first = Trainer(tiny_config(tmp_path / "b", steps=2))
    first.run()
    resumed = Trainer(tiny_config(tmp_path / "b"))
    assert resumed.step == 2
    resumed.run()
    for (name, p), q in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


def test_ddp_on_cpu_with_gloo_two_processes(tmp_path):
    cfg = tiny_config(tmp_path / "ddp", steps=2)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(cfg.__dict__))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "propsam.cli", "train", "--config", str(recipe)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and log[-1]["tasks_seen"] == 4  # 2 processes x 1 task x 2 steps
    assert (tmp_path / "ddp" / "propmask.pt").exists()


def test_bundle_from_trained_runs_loads_in_the_engine(tmp_path):
    from propsam.cli import main
    from propsam.engine.segmenter import Segmenter

    Trainer(tiny_config(tmp_path / "pm", steps=1)).run()
    Trainer(tiny_config(tmp_path / "bm", steps=1, network="box2mask", batch_size=2)).run()
    out = tmp_path / "bundle"
    code = main(["bundle", "--name", "tiny", "--box2mask", str(tmp_path / "bm" / "box2mask.pt"),
                 "--propmask", str(tmp_path / "pm" / "propmask.pt"), "--out-dir", str(out)])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["propmask"]["steps_done"] == 1
    assert Segmenter.load(str(out), "cpu").config.name == "tiny"

    results = tmp_path / "results.csv"
    results.write_text(
        "dataset,volume,object,headline,method,setting,dice,hd95_mm\n"
        "brats,a,t,True,propsam-mask,default,0.8000,4.0\n"
        "cord,b,c,True,propsam-mask,default,0.9000,inf\n"
        "cord,b,c,True,propsam-mask,slice+5%,0.1000,9.0\n"
        "cord,b,thin,False,propsam-mask,default,0.1000,9.0\n"
        "phantom,p,o,True,propsam-mask,default,0.5000,2.0\n")
    assert main(["bundle", "--name", "tiny", "--box2mask", str(tmp_path / "bm" / "box2mask.pt"), "--propmask",
                 str(tmp_path / "pm" / "propmask.pt"), "--out-dir", str(out), "--evaluation", str(results), "--force"]) == 0
    table = json.loads((out / "manifest.json").read_text())["evaluation"]["headline_means"]["propsam-mask"]
    assert table["real objects"] == {"n": 2, "dice": 0.85, "hd95_mm": 4.0}
    assert table["phantom"]["n"] == 1 and table["cord"]["dice"] == 0.9
    assert main(["bundle", "--name", "tiny", "--box2mask", str(tmp_path / "bm" / "box2mask.pt"), "--propmask",
                 str(tmp_path / "pm" / "propmask.pt"), "--out-dir", str(out), "--evaluation", str(tmp_path / "no.csv"), "--force"]) == 2


def test_bundle_reads_steps_from_the_log_when_no_checkpoint_came_back(tmp_path):
    """A lent GPU returns weights and logs only; the manifest still says how far they were trained."""
    from propsam.training.bundle import _run_summary

    Trainer(tiny_config(tmp_path / "pm", steps=2)).run()
    weights = tmp_path / "back" / "propmask.pt"
    weights.parent.mkdir()
    weights.write_bytes((tmp_path / "pm" / "propmask.pt").read_bytes())
    assert _run_summary(weights) == {}
    (tmp_path / "back" / "propmask.log").write_text("warming up\n" + (tmp_path / "pm" / "log.jsonl").read_text())
    assert _run_summary(weights) == {"steps_done": 2, "tasks_seen": 2, "from_log": "propmask.log"}


def test_every_recipe_is_a_valid_training_configuration():
    """Recipes are data: a misspelt key or an unknown lesion kind fails here, not an hour into a run."""
    from propsam.training.synthesis import LESION_KINDS
    from propsam.training.train import TrainConfig

    recipes = sorted((Path(__file__).resolve().parents[1] / "PropSAMSlicer/propsam/training/recipes").rglob("*.json"))
    assert len(recipes) >= 10
    for path in recipes:
        cfg = TrainConfig.from_file(path)
        cfg.network_config()
        assert set(cfg.lesion_kinds) <= set(LESION_KINDS) and 0 <= cfg.lesion_share <= 1, path.name
        assert 0 <= cfg.end_fraction <= 1, path.name


def test_the_recipes_end_fraction_reaches_the_tasks(tmp_path):
    """end_fraction (the share of guides taken near an object's end) is a recipe setting."""
    from propsam.training.tasks import TaskOptions

    assert Trainer(tiny_config(tmp_path / "a")).options.end_fraction == TaskOptions().end_fraction
    assert Trainer(tiny_config(tmp_path / "b", end_fraction=0.5)).options.end_fraction == 0.5


def test_rebundling_keeps_the_kept_networks_record_and_the_lineage(tmp_path):
    """Shipping a new PropMask beside the shipped Box2Mask: the Box2Mask's training record comes
    from the bundle it already ships in, and --warm-start-from keeps the whole lineage."""
    from propsam.cli import main

    Trainer(tiny_config(tmp_path / "pm", steps=1)).run()
    Trainer(tiny_config(tmp_path / "bm", steps=2, network="box2mask", batch_size=2, lesion_share=0.5, end_fraction=0.4)).run()
    first = tmp_path / "first"
    assert main(["bundle", "--name", "tiny", "--box2mask", str(tmp_path / "bm" / "box2mask.pt"),
                 "--propmask", str(tmp_path / "pm" / "propmask.pt"), "--out-dir", str(first)]) == 0
    recorded = json.loads((first / "manifest.json").read_text())["training"]["box2mask"]
    assert recorded["steps_done"] == 2 and recorded["recipe"]["lesion_share"] == 0.5 and recorded["recipe"]["end_fraction"] == 0.4
    second = tmp_path / "second"
    assert main(["bundle", "--name", "tiny", "--box2mask", str(first / "tiny_box2mask.pt"), "--propmask",
                 str(tmp_path / "pm" / "propmask.pt"), "--out-dir", str(second), "--warm-start-from", str(first)]) == 0
    again = json.loads((second / "manifest.json").read_text())
    assert again["training"]["box2mask"]["steps_done"] == 2 and again["training"]["box2mask"]["from_bundle"] == "tiny"
    assert again["warm_start"]["training"]["box2mask"]["steps_done"] == 2
    assert again["warm_start"]["networks"] == json.loads((first / "manifest.json").read_text())["networks"]  # which files, by sha256
    third = tmp_path / "third"
    assert main(["bundle", "--name", "tiny", "--box2mask", str(second / "tiny_box2mask.pt"), "--propmask",
                 str(tmp_path / "pm" / "propmask.pt"), "--out-dir", str(third), "--warm-start-from", str(second)]) == 0
    assert json.loads((third / "manifest.json").read_text())["warm_start"]["warm_start"]["model"] == str(first)


def test_a_missing_warm_start_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="init_from .*nowhere.pt does not exist"):
        Trainer(tiny_config(tmp_path / "a", init_from=str(tmp_path / "nowhere.pt")))


def _one_big_one_small_object():
    """A volume with a 20x20-pixel box (400 px on a z slice) and a thin rod along z: 3x3 = 9 px on
    a z slice, 3 x 30 = 90 px on a y or x slice."""
    from propsam.training.sources import LabelledObject, SourceVolume

    image = np.zeros((40, 64, 64), np.float32)
    image[5:35, 5:25, 5:25] = 1.0
    image[5:35, 40:43, 40:43] = 1.0
    big = LabelledObject("big", (slice(5, 35), slice(5, 25), slice(5, 25)), np.ones((30, 20, 20), bool))
    rod = LabelledObject("rod", (slice(5, 35), slice(40, 43), slice(40, 43)), np.ones((30, 3, 3), bool))
    return SourceVolume("two", image, (1.0, 1.0, 1.0), "CT", 1.0, [big, rod])


def test_small_share_draws_small_objects_with_guides_below_the_usual_minimum():
    """small_share's tasks come from objects whose slices are all at most small_area pixels, with
    guides down to SMALL_GUIDE_AREA pixels; the others never take a guide under MIN_GUIDE_AREA
    (so without small_share the 9-pixel rod's z slices never guide a task)."""
    from propsam.training.tasks import MIN_GUIDE_AREA, SMALL_GUIDE_AREA, _pick_guided

    sources, rng = [_one_big_one_small_object()], np.random.default_rng(0)
    small = [_pick_guided(sources, rng, True, 100) for _ in range(40)]
    assert {obj.name for _, obj, _, _, _ in small} == {"rod"}
    assert any(areas[valid].min() < MIN_GUIDE_AREA for _, _, _, areas, valid in small)  # the rod's 9-pixel z slices
    assert all(areas[valid].min() >= SMALL_GUIDE_AREA for _, _, _, areas, valid in small)
    usual = [_pick_guided(sources, rng, False, 100) for _ in range(40)]
    assert {obj.name for _, obj, _, _, _ in usual} == {"big", "rod"}
    assert all(areas[valid].min() >= MIN_GUIDE_AREA for _, _, _, areas, valid in usual)
    assert _pick_guided([_one_big_one_small_object()], rng, True, 5) is None  # nothing that small: the caller falls back
    task = sample_propmask_task(sources, rng, TaskOptions(small_share=1.0, memory=True))
    assert task["guide_mask"].sum() > 0


def test_the_recipes_small_share_reaches_the_tasks(tmp_path):
    """small_share is a recipe setting; both samplers read it from the task options."""
    assert Trainer(tiny_config(tmp_path / "a")).options.small_share == 0.0
    assert Trainer(tiny_config(tmp_path / "b", small_share=0.3)).options.small_share == 0.3


def test_data_time_waits_for_the_gpu_only_on_cuda(monkeypatch):
    """The log's data_share times the sampler alone: on CUDA the trainer lets the GPU finish the
    last step first (else the sampler's first read-back waits for it and counts as data)."""
    from propsam.training.train import wait_for_device

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    wait_for_device(torch.device("cpu"))
    assert calls == []
    wait_for_device(torch.device("cuda", 0))
    assert calls == [torch.device("cuda", 0)]


def test_a_freesurfer_mgh_pair_reads_in_the_projects_axis_order(tmp_path):
    """FreeSurfer's .mgz (SimpleITK cannot read it) through nibabel: arrays in (z, y, x) order as
    SimpleITK gives them, the spacing reversed to match, labels aligned with the image; a pair on
    different grids is refused."""
    import nibabel

    from propsam.training.sources import entry_files, read_pair

    image = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # (i, j, k)
    labels = (image % 7 == 0).astype(np.int32) * 3
    affine = np.diag([0.8, 1.0, 2.5, 1.0])
    nibabel.MGHImage(image, affine).to_filename(tmp_path / "t1.mgz")
    nibabel.MGHImage(labels, affine).to_filename(tmp_path / "seg.mgz")
    entry = {"id": "fs", "mgh": {"image": "t1.mgz", "labels": "seg.mgz"}}
    assert entry_files(entry) == ("t1.mgz", "seg.mgz")
    got_image, got_labels, spacing_zyx = read_pair(entry, tmp_path)
    assert got_image.shape == (6, 5, 4) and spacing_zyx == pytest.approx((2.5, 1.0, 0.8))
    assert got_image[5, 4, 3] == image[3, 4, 5] and np.array_equal(got_labels > 0, got_image % 7 == 0)
    nibabel.MGHImage(labels, np.diag([0.8, 1.0, 2.0, 1.0])).to_filename(tmp_path / "other.mgz")
    with pytest.raises(ValueError, match="different grids"):
        read_pair({"id": "fs", "mgh": {"image": "t1.mgz", "labels": "other.mgz"}}, tmp_path)


def test_the_freesurfer_brain_reads_with_its_structures_and_stays_out_of_training(shared_data):
    """The manifest's FreeSurfer entry: the T1 with its ~190 automatic labels; split 'extra' (its
    arm lost on the tuning objects, results/freesurfer_cpu/), so neither training nor evaluation."""
    from propsam.training.sources import load_source, manifest_entries

    data_dir = shared_data("freesurfer-niivue").parent
    entry = next(e for e in manifest_entries(data_dir, "extra") if e["id"] == "freesurfer_t1")
    assert not any(e["id"] == "freesurfer_t1" for e in manifest_entries(data_dir, "train") + manifest_entries(data_dir, "eval"))
    source = load_source(entry, data_dir)
    assert source.image.shape == (256, 256, 256) and source.spacing_zyx == (1.0, 1.0, 1.0)
    assert len(source.objects) > 150
    inside = [source.image[o.bbox][o.mask].mean() for o in source.objects[:20]]
    assert np.mean(inside) > 2 * np.mean(source.image)  # the labels lie on the brain, not on the empty background


def test_self_guided_tasks_carry_a_true_slice_a_round_behind_the_guide():
    """self_guide: a task whose guide lies past the prompt carries the slice a round behind it
    (image and true mask) and a flag; a guide that is the prompt itself has nothing behind it."""
    sources, rng = [phantom_source(s, 1.0) for s in range(4)], np.random.default_rng(3)
    opt = TaskOptions(memory=True, self_guide=1.0, adjacent=3)
    tasks = [sample_propmask_task(sources, rng, opt) for _ in range(40)]
    flags = [float(t["self_guide"]) for t in tasks]
    assert 0 < np.mean(flags) < 1
    for t, flag in zip(tasks, flags):
        assert t["source_image"].shape == t["guide_image"].shape and t["source_mask"].shape == t["guide_mask"].shape
        if flag:
            assert t["source_mask"].sum() > 0
    plain = sample_propmask_task(sources, np.random.default_rng(3), TaskOptions(memory=True, adjacent=3))
    assert not {"source_image", "source_mask", "self_guide"} & set(plain)


class _FixedReading(torch.nn.Module):
    """A stand-in PropMask whose reading of the guide slice is fixed: logits > 0 on `square`."""

    def __init__(self, squares):
        super().__init__()
        self.squares = squares

    def forward(self, guide_image, guide_mask, adjacent, memory_image=None, memory_mask=None):
        logits = -torch.ones(adjacent.shape[0], 1, 1, *adjacent.shape[-2:])
        for i, (r0, r1) in enumerate(self.squares):
            logits[i, 0, 0, r0:r1, r0:r1] = 1.0
        assert memory_image is not None and adjacent.shape[1] == 1  # the guide slice read with the prompt memory
        return {"masks": [logits]}


def test_own_guides_replace_only_flagged_tasks_with_a_usable_reading():
    from propsam.training.tasks import MIN_GUIDE_AREA
    from propsam.training.train import own_guides

    b, s = 3, 16
    true = torch.zeros(b, 1, s, s)
    true[:, :, 2:6, 2:6] = 1
    batch = {"guide_image": torch.rand(b, 1, s, s), "guide_mask": true, "source_image": torch.rand(b, 1, s, s),
             "source_mask": true, "memory_image": torch.rand(b, 1, 1, s, s), "memory_mask": true[:, None, 0],
             "self_guide": torch.tensor([1.0, 1.0, 0.0])}
    net = _FixedReading([(4, 12), (4, 4 + int(MIN_GUIDE_AREA ** 0.5) - 1), (4, 12)])  # 64 px, under the minimum, 64 px
    got, used = own_guides(net, batch, torch.autocast("cpu", enabled=False))
    assert used.tolist() == [True, False, False]
    assert got[0].sum() == 64 and got[0, 0, 4:12, 4:12].all()  # its own reading
    assert torch.equal(got[1], true[1])  # too small a reading: propagation would have stopped, the true guide stays
    assert torch.equal(got[2], true[2])  # not flagged


def test_self_guide_trains_and_refuses_what_it_cannot_do(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "a", steps=2, batch_size=2, self_guide=1.0,
                                  network_overrides={"prompt_memory": True}))
    assert trainer.options.self_guide == 1.0
    trainer.run()
    assert (tmp_path / "a" / "propmask.pt").exists()
    logged = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert all(0 <= r["own_guide_share"] <= 1 for r in logged if "step" in r)
    with pytest.raises(ValueError, match="needs prompt_memory"):
        Trainer(tiny_config(tmp_path / "b", self_guide=0.5))


def test_slice_dice_weighs_a_small_missed_slice_as_much_as_a_large_one():
    from propsam.training.losses import slice_dice_loss, soft_dice_loss

    target = torch.zeros(1, 3, 1, 16, 16)
    target[0, 0, 0, :, :] = 1  # a large slice (256 px)
    target[0, 1, 0, 7:9, 7:9] = 1  # the object tapering to 4 px; slice 2 is past its end
    logits = torch.where(target > 0, 20.0, -20.0)
    logits[0, 1] = -20.0  # the small slice missed
    stack = float(soft_dice_loss(logits.flatten(1), target.flatten(1)))
    per_slice = float(slice_dice_loss(logits, target))
    assert stack < 0.01 and per_slice == pytest.approx(0.4, abs=0.01)  # (0 + (1 - 1/5)) / 2 slices with the object
    assert float(slice_dice_loss(logits, torch.zeros_like(target))) == 0.0


def test_the_recipes_slice_dice_reaches_the_loss(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "a", steps=1, slice_dice=0.5))
    trainer.run()
    logged = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert "slice_dice" in logged[-1]
