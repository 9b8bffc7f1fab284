"""Anatomy-driven synthesis, lesion planting, the prompt memory and warm starts."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from propsam.config import named_config
from propsam.modeling import build_network
from propsam.training.synthesis import LabelMap, SynthPool, anatomy_objects, plant_lesions, synthesize_image, synthetic_source
from propsam.training.tasks import TaskOptions, sample_propmask_task
from propsam.training.train import Trainer
from propsam.weights import SHIPPED_MODELS_DIR
from test_training import tiny_config


def block_map() -> LabelMap:
    """Three touching boxes and a separate one: real-looking neighbours without real data."""
    labels = np.zeros((24, 48, 48), np.int16)
    labels[4:20, 8:24, 8:20] = 1
    labels[4:20, 8:24, 20:32] = 2  # touches 1
    labels[6:18, 26:40, 10:30] = 3  # touches 1 and 2 along rows
    labels[8:16, 8:16, 36:44] = 4
    return LabelMap("blocks", labels, (2.0, 1.0, 1.0), np.random.default_rng(0).normal(100, 10, labels.shape).astype(np.float32))


def test_synthesis_is_seeded_and_keeps_label_shapes():
    maps = [block_map()]
    a, b, c = synthetic_source(maps, 7), synthetic_source(maps, 7), synthetic_source(maps, 8)
    assert np.array_equal(a.image, b.image) and a.spacing_zyx == b.spacing_zyx
    assert not (a.image.shape == c.image.shape and np.array_equal(a.image, c.image))
    assert a.objects and all(o.mask.sum() >= 60 for o in a.objects)


@pytest.mark.parametrize("style", ["ct", "mr", "pet"])
def test_each_style_gives_objects_including_neighbour_unions(style):
    lm = block_map()
    image, labels, spacing = synthesize_image(lm.labels.astype(np.int32), lm.spacing_zyx, style, np.random.default_rng(3))
    assert image.shape == labels.shape and np.isfinite(image).all() and image.std() > 0
    assert spacing[1:] == lm.spacing_zyx[1:] and spacing[0] >= lm.spacing_zyx[0]
    names = {o.name for o in anatomy_objects(labels, np.random.default_rng(0))}
    assert {"label_1", "label_2"} <= names and any(n.startswith("union_") for n in names)


def test_thick_slices_keep_image_and_labels_aligned():
    lm = block_map()
    for seed in range(10):
        image, labels, spacing = synthesize_image(lm.labels.astype(np.int32), (1.0, 1.0, 1.0), "mr", np.random.default_rng(seed))
        assert labels.shape[0] == image.shape[0] and spacing[0] == pytest.approx(24 / 24 * round(spacing[0]))


def test_planted_lesion_chains_touch_and_are_split_in_the_truth():
    image = np.random.default_rng(1).normal(0, 1, (40, 64, 64)).astype(np.float32)
    found_chain = False
    for seed in range(12):
        out, labels = plant_lesions(image, (1.0, 1.0, 1.0), np.random.default_rng(seed))
        assert out.shape == image.shape and (out != image).any() == (labels.max() > 0)
        for a in range(1, int(labels.max())):  # consecutive blobs of one chain share a face
            grown = np.zeros_like(labels, bool)
            grown[1:] |= labels[:-1] == a
            grown[:-1] |= labels[1:] == a
            grown[:, 1:] |= labels[:, :-1] == a
            grown[:, :-1] |= labels[:, 1:] == a
            if (grown & (labels == a + 1)).any():
                found_chain = True
    assert found_chain


def _axis_extents(labels, value):
    box = ndimage.find_objects((labels == value).astype(np.int8))[0]
    return np.array([b.stop - b.start for b in box])


def _plant_on_cpu(image, seed, kinds):
    return plant_lesions(image, (1.0, 1.0, 1.0), np.random.default_rng(seed), kinds=kinds)


def _plant_on_device(image, seed, kinds):
    from propsam.training.device_synth import plant_lesions as plant_in_torch

    out, labels = plant_in_torch(torch.from_numpy(image), (1.0, 1.0, 1.0), torch.Generator().manual_seed(seed), kinds)
    return out.numpy(), labels.numpy()


PLANTERS = pytest.mark.parametrize("plant", [_plant_on_cpu, _plant_on_device], ids=["numpy", "torch"])


@PLANTERS
def test_tapering_lesions_thin_and_fade_towards_their_tails(plant):
    """The last slices along a tapering lesion's long axis are smaller and fainter than its middle,
    and are still labelled as the lesion."""
    image = np.zeros((48, 64, 64), np.float32)
    image[0, 0, 0], image[-1, -1, -1] = -1.0, 1.0  # a spread for the contrast, no texture to blur the reading
    ratios = []
    for seed in range(8):
        out, labels = plant(image, seed, ("tapering",))
        for value in range(1, int(labels.max()) + 1):
            extents = _axis_extents(labels, value)
            axis = int(extents.argmax())
            if extents[axis] < 2 * np.sort(extents)[1] * 1.2:  # touching the border or too round to read
                continue
            mask = np.moveaxis(labels == value, axis, 0)
            signal = np.abs(np.moveaxis(out - image, axis, 0))
            present = np.flatnonzero(mask.any((1, 2)))
            mid, tail = present[len(present) // 2], present[[0, -1]]
            area = mask.sum((1, 2))
            assert (area[tail] < 0.5 * area[mid]).all()
            ratios += [signal[i][mask[i]].max() / signal[mid][mask[mid]].max() for i in tail]
    assert len(ratios) >= 6 and min(ratios) > 0
    assert np.mean(ratios) < 0.33  # the soft edge alone leaves about 0.45 at the tips: the contrast fades


@PLANTERS
def test_stacked_objects_are_alike_and_parted_by_discs(plant):
    """A stack's objects have one size and one intensity; consecutive ones never touch; a disc
    (its own label) touches both."""
    image = np.zeros((64, 64, 64), np.float32)
    image[0, 0, 0], image[-1, -1, -1] = -1.0, 1.0
    stacks = 0
    for seed in range(6):
        out, labels = plant(image, seed, ("stack",))
        sizes = np.bincount(labels.ravel())[1:]
        touching = {tuple(sorted(p)) for p in _touching_label_pairs(labels)}
        big = [v for v in range(1, len(sizes) + 1) if sizes[v - 1] >= 0.6 * sizes.max()]
        for a, b in zip(big, big[1:]):
            if b != a + 1:
                continue
            assert (a, b) not in touching  # never face to face: a disc lies between
            assert any((a, d) in touching and (b, d) in touching for d in range(1, len(sizes) + 1) if d not in big)
            stacks += 1
    assert stacks >= 3


def _touching_label_pairs(labels):
    pairs = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        lo, hi = a[:-1], a[1:]
        hit = (lo != hi) & (lo > 0) & (hi > 0)
        pairs |= set(zip(lo[hit].tolist(), hi[hit].tolist()))
    return pairs


def test_unknown_lesion_kinds_are_refused_and_kinds_reach_the_pool():
    image = np.zeros((16, 32, 32), np.float32)
    for plant in (_plant_on_cpu, _plant_on_device):
        with pytest.raises(ValueError, match="lesion kinds"):
            plant(image, 0, ("comet",))
    maps = [block_map()]
    planted = SynthPool(maps, 4, first_seed=10, weight=1.0, lesion_kinds=("stack",), lesion_share=1.0)
    plain = SynthPool(maps, 4, first_seed=10, weight=1.0, lesion_share=1.0)
    assert all(s.modality == "MR" for s in planted.sources)
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(planted.sources, plain.sources))
    again = SynthPool(maps, 4, first_seed=10, weight=1.0, state=planted.state(), lesion_kinds=("stack",), lesion_share=1.0)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(again.sources, planted.sources))


def test_synth_pool_state_rebuilds_the_same_pool():
    maps = [block_map()]
    pool = SynthPool(maps, 3, first_seed=10, weight=1.0)
    pool.refresh(2, np.random.default_rng(0))
    again = SynthPool(maps, 3, first_seed=10, weight=1.0, state=pool.state())
    assert [s.id for s in again.sources] == [s.id for s in pool.sources]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(again.sources, pool.sources))


def memory_config():
    from dataclasses import replace

    return replace(named_config("lite").propmask, prompt_memory=True, base_channels=8, max_channels=32, image_size=32, stages=4, attention_stages=2)


def test_prompt_memory_starts_as_a_no_op_and_then_matters():
    torch.manual_seed(0)
    net = build_network(memory_config()).eval()
    g, m, adj = torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float(), torch.rand(2, 3, 1, 32, 32)
    mem_i, mem_m = torch.rand(2, 1, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    with torch.no_grad():
        without = net(g, m, adj)["masks"][0]
        with_memory = net(g, m, adj, mem_i, mem_m)["masks"][0]
        torch.testing.assert_close(without, with_memory)  # zero-initialised output projection
        for block in net.memory_attention:
            block.out_proj.weight.normal_(0, 0.1)
        changed = net(g, m, adj, mem_i, mem_m)["masks"][0]
    assert changed.shape == (2, 3, 1, 32, 32) and not torch.allclose(changed, without)


def test_memory_tasks_carry_the_prompt_slice():
    from propsam.training.phantom_sources import phantom_source

    sources = [phantom_source(s, 1.0) for s in range(2)]
    opt = TaskOptions(memory=True, perturb_guide=1.0, adjacent=3)
    task = sample_propmask_task(sources, np.random.default_rng(2), opt)
    assert task["memory_image"].shape == (1, 1, 96, 96) and task["memory_mask"].sum() > 0
    assert task["adjacent"].shape == (3, 1, 96, 96) and task["presence"].shape == (3,)


def test_warm_start_from_shipped_weights_adds_only_the_memory(tmp_path):
    weights = SHIPPED_MODELS_DIR / "lite_v1" / "lite_propmask.pt"  # v1: no memory
    if not weights.exists():
        pytest.skip("shipped weights missing")
    trainer = Trainer(tiny_config(tmp_path / "w", steps=1, network_overrides={"prompt_memory": True}, init_from=str(weights)))
    shipped = torch.load(weights, weights_only=True)["state_dict"]
    own = trainer.net.state_dict()
    same = [k for k in shipped if torch.equal(own[k].half(), shipped[k])]
    assert len(same) == len(shipped)
    assert any(k.startswith("memory_attention.") for k in own) and not any(k.startswith("memory_attention.") for k in shipped)
    with pytest.raises(RuntimeError, match="does not fit"):
        Trainer(tiny_config(tmp_path / "x", steps=1, network="box2mask", init_from=str(weights)))


def test_synthetic_evaluation_objects_stay_out_of_the_real_pool(shared_data, tmp_path):
    from propsam.evaluation.harness import headline_means, run_evaluation
    from propsam.evaluation.synthetic import SYNTHETIC_DATASET, synthetic_objects
    from propsam.engine.segmenter import Segmenter

    objects = list(synthetic_objects(shared_data("totalseg-examples").parent, 2))
    assert objects and all(o.dataset == SYNTHETIC_DATASET and o.slices >= 3 for o in objects)
    again = list(synthetic_objects(shared_data("totalseg-examples").parent, 2))
    assert [o.key for o in again] == [o.key for o in objects]  # seeded
    rows = run_evaluation(objects[:1], Segmenter.load("lite", "cpu"), tmp_path, methods=("copy",))
    assert "real objects" not in headline_means(rows).get("copy", {}) or headline_means(rows)["copy"]["real objects"]["n"] == 0


def test_previous_guides_lie_a_window_apart_and_never_past_the_prompt():
    from propsam.training.tasks import previous_guides

    assert previous_guides(20, 10, +1, 4, 3) == [16, 12]
    assert previous_guides(20, 10, +1, 8, 3) == [12, 10]  # the prompt, where a window back would pass it
    assert previous_guides(5, 10, -1, 4, 3) == [9, 10]
    assert previous_guides(20, 10, +1, 4, 1) == []
    got = previous_guides(torch.tensor([20, 20, 5]), torch.tensor([10, 10, 10]), torch.tensor([1, 1, -1]), torch.tensor([4, 8, 4]), 3)
    assert [g.tolist() for g in got] == [[16, 12, 9], [12, 10, 10]]  # the same arithmetic on tensors


def test_a_memory_of_several_slices_is_one_key_value_set():
    """Repeating the prompt in the memory changes nothing (attention over duplicated tokens is the
    same), so a side's first round, which has no previous guide yet, sees what a one-slice memory
    sees; a different previous guide does change the result."""
    from dataclasses import replace

    torch.manual_seed(0)
    net = build_network(replace(memory_config(), memory_slices=2)).eval()
    for block in net.memory_attention:
        torch.nn.init.normal_(block.out_proj.weight, 0, 0.1)
    g, m, adj = torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float(), torch.rand(2, 3, 1, 32, 32)
    mem_i, mem_m = torch.rand(2, 1, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    other_i, other_m = torch.rand(2, 1, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    with torch.no_grad():
        one = net(g, m, adj, mem_i, mem_m)["masks"][0]
        twice = net(g, m, adj, torch.cat([mem_i, mem_i], 1), torch.cat([mem_m, mem_m], 1))["masks"][0]
        other = net(g, m, adj, torch.cat([mem_i, other_i], 1), torch.cat([mem_m, other_m], 1))["masks"][0]
    torch.testing.assert_close(one, twice, atol=1e-5, rtol=0)
    assert not torch.allclose(one, other, atol=1e-3)


def test_memory_tasks_carry_the_previous_guides():
    from propsam.training.phantom_sources import phantom_source

    sources = [phantom_source(s, 1.0) for s in range(2)]
    opt = TaskOptions(memory=True, memory_slices=3, adjacent=3)
    task = sample_propmask_task(sources, np.random.default_rng(2), opt)
    assert task["memory_image"].shape == (3, 1, 96, 96) and task["memory_mask"].shape == (3, 96, 96)
    assert task["memory_mask"][0].sum() > 0  # the prompt slice holds the object


def test_propagation_shows_a_side_its_previous_guides(monkeypatch):
    """With a two-slice memory, the first round's memory is the prompt twice; later rounds hold
    the side's previous guide, whose mask is what propagation accepted there."""
    from dataclasses import replace

    from propsam.engine.propagation import PropagationOptions, propagate
    from propsam.training.phantom_sources import phantom_source

    torch.manual_seed(0)
    net = build_network(replace(memory_config(), memory_slices=2, presence_head=False)).eval()
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append((args[3].clone(), args[4].clone())))
    source = phantom_source(3, 1.0)
    obj = max(source.objects, key=lambda o: o.mask.sum())
    truth = obj.full_mask(source.image.shape)
    k = int(truth.reshape(truth.shape[0], -1).sum(1).argmax())
    # a network that copies the guide keeps every slice present: several rounds per side
    monkeypatch.setattr(net, "forward", _copying_forward(net.forward))
    mask, stats = propagate(net, 32, source.image, tuple(source.spacing_zyx), k, truth[k], torch.device("cpu"),
                            PropagationOptions(thickness_mm=2.0, max_window=2))
    assert stats.rounds >= 2 and mask.shape == source.image.shape
    first_images, _ = seen[0]
    assert first_images.shape[1] == 2 and torch.equal(first_images[:, 0], first_images[:, 1])
    later_images, _ = seen[-1]
    assert not torch.equal(later_images[:, 0], later_images[:, 1])  # a previous guide, not the prompt


def _copying_forward(forward):
    def run(guide_image, guide_mask, adjacent, memory_image=None, memory_mask=None):
        out = forward(guide_image, guide_mask, adjacent, memory_image, memory_mask)
        b, k = adjacent.shape[:2]
        full = (guide_mask * 20 - 10)[:, None].expand(b, k, 1, *guide_mask.shape[-2:])
        return {**out, "masks": [full] + out["masks"][1:]}
    return run
