"""Network structure: paper parameter counts, attention roles, any number of adjacent slices."""

import pytest
import torch

from propsam.config import NetworkConfig, named_config
from propsam.errors import InputError
from propsam.modeling import build_network


def count(net):
    return sum(p.numel() for p in net.parameters())


def test_paper_parameter_counts_match_the_paper():
    config = named_config("paper")
    assert config.propmask.channels == [32, 64, 128, 256, 512, 512]
    assert count(build_network(config.propmask)) / 1e6 == pytest.approx(32.5, abs=0.15)
    assert count(build_network(config.box2mask)) / 1e6 == pytest.approx(20.6, abs=0.15)


def test_paper_attention_is_at_the_four_lowest_resolutions():
    config = named_config("paper").propmask
    net = build_network(config)
    sizes = [config.image_size // 2**i for i in range(config.stages)]
    attended = sizes[net.first_attention_stage:]
    assert attended == [56, 28, 14, 7]


def test_attention_roles_q_adjacent_k_guide_v_mask():
    torch.manual_seed(0)
    config = named_config("lite").propmask
    net = build_network(config).eval()
    s = config.image_size
    guide, mask, adjacent = torch.rand(1, 1, s, s), (torch.rand(1, 1, s, s) > 0.5).float(), torch.rand(1, 3, 1, s, s)
    seen = {}
    attention = net.attention[-1]
    for role in ("q_proj", "k_proj", "v_proj"):
        getattr(attention, role).register_forward_hook(lambda m, inp, out, role=role: seen.__setitem__(role, inp[0]))
    with torch.no_grad():
        net(guide, mask, adjacent)
        image_feats = net.image_encoder(torch.cat([guide, adjacent.flatten(0, 1)]))[-1]
        mask_feats = net.mask_encoder(mask)[-1]
    c, h, w = image_feats.shape[1:]
    pos = __import__("propsam.modeling.attention", fromlist=["x"]).sinusoidal_position_2d(c, h, w, "cpu", torch.float32)
    expected_q = image_feats[1:].permute(0, 2, 3, 1).reshape(1, 3 * h * w, c) + pos.repeat(3, 1)
    expected_k = image_feats[:1].flatten(2).transpose(1, 2) + pos
    expected_v = mask_feats.flatten(2).transpose(1, 2)
    torch.testing.assert_close(seen["q_proj"], expected_q)
    torch.testing.assert_close(seen["k_proj"], expected_k)
    torch.testing.assert_close(seen["v_proj"], expected_v)


def test_guiding_mask_changes_the_prediction():
    torch.manual_seed(1)
    config = named_config("lite").propmask
    net = build_network(config).eval()
    s = config.image_size
    guide, adjacent = torch.rand(1, 1, s, s), torch.rand(1, 2, 1, s, s)
    with torch.no_grad():
        a = net(guide, torch.zeros(1, 1, s, s), adjacent)["masks"][0]
        b = net(guide, torch.ones(1, 1, s, s), adjacent)["masks"][0]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("k", [1, 3, 16])
def test_any_number_of_adjacent_slices_and_slices_are_independent(k):
    torch.manual_seed(2)
    config = named_config("lite").propmask
    net = build_network(config).eval()
    s = config.image_size
    guide, mask, adjacent = torch.rand(2, 1, s, s), torch.rand(2, 1, s, s), torch.rand(2, k, 1, s, s)
    with torch.no_grad():
        out = net(guide, mask, adjacent)
        flipped = net(guide, mask, adjacent.flip(1))
    assert out["masks"][0].shape == (2, k, 1, s, s)
    assert out["presence"].shape == (2, k)
    torch.testing.assert_close(out["masks"][0], flipped["masks"][0].flip(1), atol=1e-4, rtol=1e-4)


def test_box2mask_outputs_every_decoder_stage():
    config = named_config("lite").box2mask
    out = build_network(config)(torch.rand(2, 1, config.image_size, config.image_size))
    assert [o.shape[-1] for o in out["masks"]] == [96, 48, 24, 12, 6]


def test_optional_heads_bd_and_srpp():
    config = NetworkConfig.from_dict({**named_config("lite").propmask.to_dict(), "boundary_head": True, "position_head": True})
    s = config.image_size
    out = build_network(config)(torch.rand(1, 1, s, s), torch.rand(1, 1, s, s), torch.rand(1, 4, 1, s, s))
    assert out["boundary"].shape == (1, 4, 1, s, s) and out["position"].shape == (1, 4)


def test_bad_configurations_are_refused():
    with pytest.raises(InputError, match="divisible"):
        NetworkConfig("propmask", 100, 16, 256).validate()
    with pytest.raises(InputError, match="unknown network configuration keys"):
        NetworkConfig.from_dict({"network": "propmask", "image_size": 96, "base_channels": 16, "max_channels": 256, "colour": 1})
    with pytest.raises(InputError, match="no model configuration named"):
        named_config("huge")
