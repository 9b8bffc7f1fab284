"""2.5D input (engine/slice_context.py): each slice read with its neighbours along the propagation,
the same in the engine, both training samplers and a warm start from a 2D network."""

import numpy as np
import pytest
import torch

from conftest import REPO
from engine_doubles import ThresholdBox2Mask, ThresholdPropMask
from phantom_volumes import sphere_volume
from propsam.config import NetworkConfig, named_config
from propsam.engine.prompts import MaskPrompt
from propsam.engine.roi import slice_extent
from propsam.engine.segmenter import Segmenter
from propsam.engine.slice_context import context_slices
from propsam.errors import InputError
from propsam.evaluation.objects import largest_slice
from propsam.training.tasks import TaskOptions, collate, sample_propmask_task

SHIPPED_PROPMASK = REPO / "PropSAMSlicer" / "Resources" / "Models" / "lite" / "lite_propmask.pt"


def test_neighbours_follow_the_direction_and_repeat_the_edge_slice():
    index, direction = np.array([0, 5, 9]), np.array([1, -1, 1])
    got = context_slices(index, direction, 3, 10)
    assert got.tolist() == [[0, 0, 1], [6, 5, 4], [8, 9, 9]]  # behind, the slice, ahead
    as_tensor = context_slices(torch.tensor(index), torch.tensor(direction), 3, torch.tensor([10, 10, 10]))
    assert as_tensor.tolist() == got.tolist()
    assert context_slices(index, direction, 1, 10).tolist() == [[0], [5], [9]]  # 2D: the slice alone


@pytest.mark.parametrize("bad", [
    dict(network="propmask", in_channels=2), dict(network="propmask", in_channels=0), dict(network="box2mask", in_channels=3)])
def test_configs_refuse_an_even_or_a_2_5d_box2mask_input(bad):
    with pytest.raises(InputError, match="in_channels"):
        NetworkConfig(image_size=96, base_channels=8, max_channels=64, **bad).validate()


@pytest.mark.parametrize("reads, grows", [(1, 0), (2, -1), (0, 1)])
def test_engine_hands_each_side_its_own_ahead(reads, grows):
    """A double that segments only the channel it reads: "ahead" ends each side one slice early,
    "behind" one slice late. Were one side's neighbours ordered the other way round, that side
    would end one slice off the other way."""
    volume, truth = sphere_volume(shape=(30, 48, 48), spacing=(1.0, 1.0, 1.0), radius_mm=10)
    z = largest_slice(truth)
    reference = Segmenter(named_config("lite"), {"box2mask": ThresholdBox2Mask(), "propmask": ThresholdPropMask()},
                          torch.device("cpu")).segment(volume, MaskPrompt(z, truth[z] > 0))
    nets = {"box2mask": ThresholdBox2Mask(), "propmask": ThresholdPropMask(in_channels=3, reads=reads)}
    result = Segmenter(named_config("lite"), nets, torch.device("cpu")).segment(volume, MaskPrompt(z, truth[z] > 0))
    lo, hi = slice_extent(reference.mask, 0)
    assert slice_extent(result.mask, 0) == (lo - grows, hi + grows)


def _phantom_sources():
    from propsam.training.phantom_sources import phantom_source

    return [phantom_source(s, 1.0) for s in (3, 4)]


def test_a_2_5d_task_is_the_2d_task_with_neighbours_around_each_slice():
    sources = _phantom_sources()
    flat = sample_propmask_task(sources, np.random.default_rng(7), TaskOptions(memory=True, adjacent=3))
    wide = sample_propmask_task(sources, np.random.default_rng(7), TaskOptions(memory=True, adjacent=3, in_channels=3))
    assert wide["guide_image"].shape == (3, 96, 96) and wide["adjacent"].shape == (3, 3, 96, 96)
    assert wide["memory_image"].shape == (1, 3, 96, 96)
    torch.testing.assert_close(wide["guide_image"][1:2], flat["guide_image"])  # the same draws: the centre is the 2D input
    torch.testing.assert_close(wide["adjacent"][:, 1:2], flat["adjacent"])
    torch.testing.assert_close(wide["memory_image"][:, 1:2], flat["memory_image"])
    for key in ("guide_mask", "target", "memory_mask", "presence", "position"):
        torch.testing.assert_close(wide[key], flat[key])
    assert not torch.equal(wide["adjacent"][:, 0], wide["adjacent"][:, 2])  # neighbours are other slices


def _share_reading_ahead(batch) -> float:
    """With a window of exactly K slices the adjacent slices are the next K in the direction of
    propagation: the guide's "ahead" channel is then the first adjacent slice (same crop, same
    window). The share of tasks where it is (not 1: an edge of the volume can break the run)."""
    same = (batch["guide_image"][:, 2] - batch["adjacent"][:, 0, 1]).abs().flatten(1).amax(1) < 1e-5
    differs = (batch["guide_image"][:, 0] - batch["adjacent"][:, 0, 1]).abs().flatten(1).amax(1) > 1e-3
    return float((same & differs).float().mean())


CONSECUTIVE = dict(adjacent=4, max_window=4, thickness_mm=(100.0, 100.0), memory=True, in_channels=3)


def test_device_batches_are_the_cpu_tasks_in_2_5d():
    from propsam.training.device_data import pack_atlas, sample_propmask_batch
    from test_device_training import _phantom_volumes

    opt = TaskOptions(image_size=32, **CONSECUTIVE)
    cpu = collate([sample_propmask_task(_phantom_sources(), np.random.default_rng(i), opt) for i in range(24)])
    dev = sample_propmask_batch(pack_atlas(_phantom_volumes([3, 4]), "cpu"), 24, torch.Generator().manual_seed(0), opt)
    assert {k: (v.shape[1:], v.dtype) for k, v in dev.items()} == {k: (v.shape[1:], v.dtype) for k, v in cpu.items()}
    # both directions occur; reading "behind" as "ahead" on either would fail about half the tasks
    assert _share_reading_ahead(cpu) > 0.8 and _share_reading_ahead(dev) > 0.8


@pytest.mark.parametrize("in_channels, mask_hint", [(3, False), (1, True), (3, True)])
def test_warm_start_from_a_2d_network_begins_unchanged(tmp_path, in_channels, mask_hint):
    """Warm-started from a 2D PropMask, a 2.5D one and/or one with the mask hint (config.mask_hint)
    gives the 2D network's output: the slice's own channel keeps its weights, the rest start at 0."""
    from dataclasses import replace

    from propsam.modeling import build_network
    from propsam.training.train import Trainer
    from test_training import tiny_config

    trainer = Trainer(tiny_config(tmp_path / "wide", init_from=str(SHIPPED_PROPMASK),
                                  network_overrides={"prompt_memory": True, "in_channels": in_channels, "mask_hint": mask_hint}))
    flat = build_network(replace(trainer.net_config, in_channels=1, mask_hint=False))
    flat.load_state_dict(torch.load(SHIPPED_PROPMASK, weights_only=True)["state_dict"])
    torch.manual_seed(0)
    c, own = in_channels, in_channels // 2
    g, m, adj = torch.rand(1, c, 96, 96), (torch.rand(1, 1, 96, 96) > 0.5).float(), torch.rand(1, 2, c, 96, 96)
    mem_i, mem_m = torch.rand(1, 1, c, 96, 96), (torch.rand(1, 1, 96, 96) > 0.5).float()
    with torch.no_grad():
        wide_out = trainer.net.eval()(g, m, adj, mem_i, mem_m)
        flat_out = flat.eval()(g[:, own : own + 1], m, adj[:, :, own : own + 1], mem_i[:, :, own : own + 1], mem_m)
    torch.testing.assert_close(wide_out["masks"][0], flat_out["masks"][0], atol=1e-4, rtol=0)
    torch.testing.assert_close(wide_out["presence"], flat_out["presence"], atol=1e-4, rtol=0)
    first = trainer.net.image_encoder.stages[0][0][0].weight.detach()
    others = [i for i in range(c + int(mask_hint)) if i != own]
    assert first.shape[1] == c + int(mask_hint) and float(first[:, others].abs().sum()) == 0  # the rest start at zero


def test_the_mask_hint_reads_the_guides_mask_next_to_each_adjacent_slice():
    """With mask_hint the output depends on the guide's mask through the first convolution too:
    a network whose attention is silenced still sees where the guide's outline was."""
    from propsam.modeling import build_network

    config = NetworkConfig(network="propmask", image_size=32, base_channels=4, max_channels=8, stages=3,
                           attention_stages=1, mask_hint=True)
    net = build_network(config).eval()
    with torch.no_grad():
        for block in net.attention:  # no path for the mask but the hint
            for p in block.parameters():
                p.zero_()
    torch.manual_seed(0)
    g, adj = torch.rand(1, 1, 32, 32), torch.rand(1, 2, 1, 32, 32)
    left, right = torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
    left[..., :16], right[..., 16:] = 1, 1
    with torch.no_grad():
        a, b = net(g, left, adj)["masks"][0], net(g, right, adj)["masks"][0]
    assert not torch.allclose(a, b)
    with pytest.raises(InputError, match="mask_hint"):
        NetworkConfig(network="box2mask", image_size=32, base_channels=4, max_channels=8, mask_hint=True).validate()


def test_hint_init_starts_the_hint_channel_from_the_slices_weights(tmp_path):
    """hint_init s: the hint's first-layer weights start at s x the slice's, so the network reads
    the guide's region as brighter from the first step; refused where there is no new channel."""
    from propsam.training.train import HINT_WEIGHT, Trainer
    from test_training import tiny_config

    trainer = Trainer(tiny_config(tmp_path / "hint", init_from=str(SHIPPED_PROPMASK), hint_init=0.5,
                                  network_overrides={"prompt_memory": True, "mask_hint": True}))
    first = trainer.net.state_dict()[HINT_WEIGHT]
    shipped = torch.load(SHIPPED_PROPMASK, weights_only=True)["state_dict"][HINT_WEIGHT].float()
    torch.testing.assert_close(first[:, 0], shipped[:, 0])
    torch.testing.assert_close(first[:, 1], 0.5 * shipped[:, 0])
    with pytest.raises(RuntimeError, match="hint_init"):
        Trainer(tiny_config(tmp_path / "no_hint", init_from=str(SHIPPED_PROPMASK), hint_init=0.5,
                            network_overrides={"prompt_memory": True}))
