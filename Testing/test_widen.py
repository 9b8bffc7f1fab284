"""A wider PropMask warm-started from a trained narrower one (training/widen.py) begins as the
narrow one did, and its new channels learn."""

from dataclasses import replace

import pytest
import torch

from conftest import REPO
from propsam.config import NetworkConfig
from propsam.errors import InputError
from propsam.modeling import build_network
from propsam.training.widen import widen_state, widen_tensor

SHIPPED_PROPMASK = REPO / "PropSAMSlicer" / "Resources" / "Models" / "lite" / "lite_propmask.pt"
# lite_deep.json: lite's deep stages at 1.5x (its widths 16, 32, 64, 128, 256, 256), lite's positional codes kept
WIDE = {"prompt_memory": True, "stage_channels": [16, 32, 64, 192, 384, 384], "positional_channels": [64, 128, 256, 256]}


def _inputs(seed: int = 0, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    return (rand(2, 1, 96, 96), (rand(2, 1, 96, 96) > 0.5).float(), rand(2, k, 1, 96, 96),
            rand(2, 1, 1, 96, 96), (rand(2, 1, 96, 96) > 0.5).float())


def _wide_trainer(tmp_path, overrides=WIDE):
    from propsam.training.train import Trainer
    from test_training import tiny_config

    return Trainer(tiny_config(tmp_path / "wide", init_from=str(SHIPPED_PROPMASK), network_overrides=overrides))


def _shipped_config() -> NetworkConfig:
    return NetworkConfig.from_dict(torch.load(SHIPPED_PROPMASK, weights_only=True)["config"])


def _shipped(config: NetworkConfig):
    net = build_network(replace(config, stage_channels=None, positional_channels=None))
    net.load_state_dict(torch.load(SHIPPED_PROPMASK, weights_only=True)["state_dict"])
    return net.eval()


@pytest.mark.parametrize("widths", [WIDE["stage_channels"], [24, 48, 96, 192, 384, 384]])  # lite_deep; every stage at 1.5x
def test_a_widened_propmask_begins_as_the_shipped_one(tmp_path, widths):
    trainer = _wide_trainer(tmp_path, {**WIDE, "stage_channels": widths})
    wide, narrow = trainer.net.eval(), _shipped(trainer.net_config)
    assert sum(p.numel() for p in wide.parameters()) > 1.3 * sum(p.numel() for p in narrow.parameters())
    with torch.no_grad():
        got, want = wide(*_inputs()), narrow(*_inputs())
    for stage, (a, b) in enumerate(zip(got["masks"], want["masks"])):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=0, msg=f"decoder stage {stage}")
    torch.testing.assert_close(got["presence"], want["presence"], atol=2e-4, rtol=0)
    # the new channels are live: a widened layer's new outputs start from the wide network's own draw
    bottleneck = wide.image_encoder.stages[5][0][0].weight.detach()
    assert bottleneck.shape[0] == widths[5] and float(bottleneck[256:].abs().mean()) > 1e-3


def test_without_the_source_positional_codes_it_would_not(tmp_path):
    """The sinusoidal code depends on a stage's width: widened without positional_channels, the old
    channels get another code and the output moves, so the warm start refuses it."""
    config = NetworkConfig.from_dict({**_shipped_config().to_dict(), **WIDE, "positional_channels": None})
    wide = build_network(config)
    state, widened = widen_state(torch.load(SHIPPED_PROPMASK, weights_only=True)["state_dict"], wide.state_dict())
    wide.load_state_dict(state)
    assert widened > 0
    with torch.no_grad():
        got, want = wide.eval()(*_inputs()), _shipped(config)(*_inputs())
    assert float((got["masks"][0] - want["masks"][0]).abs().max()) > 1e-2
    with pytest.raises(InputError, match=r"positional_channels to \[64, 128, 256, 256\]"):
        _wide_trainer(tmp_path, {**WIDE, "positional_channels": None})


def test_a_widening_that_changes_the_heads_is_refused(tmp_path):
    """Stage 2 at 80 channels would split into 2 heads of 40 instead of 2 of 32."""
    with pytest.raises(InputError, match="attention stage 0: 64 -> 80"):
        _wide_trainer(tmp_path, {**WIDE, "stage_channels": [16, 32, 80, 160, 320, 320]})


def test_the_new_channels_get_gradients_where_the_old_outputs_read_them(tmp_path):
    trainer = _wide_trainer(tmp_path)
    net = trainer.net.train()
    out = net(*_inputs(1))
    (out["masks"][0].sigmoid().mean() + out["presence"].sigmoid().mean()).backward()
    conv = net.decoder.stages[0].convs[0][0]  # reads (upsampled 384, skip 384): the old outputs' new inputs start at 0
    weight = conv.weight.detach()
    assert float(weight[:256, 256:384].abs().sum()) == 0 and float(weight[:256, 640:].abs().sum()) == 0
    assert float(conv.weight.grad[:256, 256:384].abs().sum()) > 0
    assert float(net.presence.weight.grad[0, 256:384].abs().sum()) > 0


def test_widening_refuses_a_narrower_or_reshaped_tensor():
    with pytest.raises(InputError, match="cannot be widened"):
        widen_tensor("image_encoder.stages.1.0.0.weight", torch.zeros(32, 16, 3, 3), torch.zeros(24, 16, 3, 3))
    with pytest.raises(InputError, match="kernel"):
        widen_tensor("image_encoder.stages.1.0.0.weight", torch.zeros(32, 16, 3, 3), torch.zeros(40, 16, 1, 1))


@pytest.mark.parametrize("bad, match", [
    (dict(stage_channels=[16, 32, 64, 128, 256]), "stage_channels"),
    (dict(positional_channels=[64, 128, 256]), "positional_channels"),
    (dict(positional_channels=[64, 128, 300, 256]), "positional_channels"),
])
def test_configs_refuse_bad_widths(bad, match):
    with pytest.raises(InputError, match=match):
        NetworkConfig(network="propmask", image_size=96, base_channels=16, max_channels=256, **bad).validate()


def test_a_lite_deep_bundle_loads_in_the_engine_and_segments(tmp_path):
    """The widened configuration travels in a bundle's manifest like any other (widths as JSON
    lists) and the engine runs it."""
    from phantom_volumes import sphere_volume
    from propsam.engine.prompts import MaskPrompt
    from propsam.engine.segmenter import Segmenter
    from propsam.evaluation.objects import largest_slice
    from propsam.training.bundle import random_bundle

    random_bundle(tmp_path / "deep", "lite_deep")
    seg = Segmenter.load(str(tmp_path / "deep"), "cpu", threads=1)
    assert seg.config.propmask.channels == [16, 32, 64, 192, 384, 384]
    volume, truth = sphere_volume(shape=(12, 40, 40), spacing=(2.0, 1.0, 1.0), radius_mm=8)
    z = largest_slice(truth)
    result = seg.segment(volume, MaskPrompt(z, truth[z] > 0))
    assert result.mask.shape == truth.shape and result.mask[z].any()


def test_lite_deep_is_lite_with_the_widths_tested_here():
    from propsam.config import named_config

    assert named_config("lite_deep").propmask == replace(named_config("lite").propmask, **WIDE).validate()
    assert named_config("lite_deep").box2mask == named_config("lite").box2mask
