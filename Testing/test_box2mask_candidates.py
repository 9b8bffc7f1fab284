"""Box2Mask's candidate masks with a predicted quality (issue 9.4): the network, its loss, the choice."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from propsam.config import named_config
from propsam.engine.box2mask_predictor import WindowSearch, box_to_mask
from propsam.modeling import build_network
from propsam.training.losses import box2mask_loss, candidate_losses
from propsam.weights import SHIPPED_MODELS_DIR


def tiny(candidates: int):
    return replace(named_config("lite").box2mask, mask_candidates=candidates, base_channels=4, max_channels=16,
                   image_size=32, stages=4)


def test_candidates_start_with_the_main_mask_and_each_has_a_quality():
    torch.manual_seed(0)
    net = build_network(tiny(3)).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 32, 32))
    assert out["candidates"].shape == (2, 3, 32, 32) and out["quality"].shape == (2, 3)
    torch.testing.assert_close(out["candidates"][:, :1], out["masks"][0])
    assert "candidates" not in build_network(tiny(1))(torch.rand(1, 1, 32, 32))  # one candidate: as before


def test_only_the_best_alternative_learns_and_quality_learns_the_hard_dice():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    good = target * 20 - 10  # logits of the exact mask
    half = torch.full_like(target, -10.0)
    half[..., 2:6, 2:4] = 10  # half the object
    candidates = torch.cat([half, half, good], dim=1)  # main, a poor and a perfect alternative
    losses = candidate_losses(candidates, torch.zeros(1, 3), target)
    perfect = candidate_losses(torch.cat([half, good], 1), torch.zeros(1, 2), target)["alternatives"]
    assert float(losses["alternatives"]) == pytest.approx(float(perfect))  # the minimum over the alternatives
    assert float(losses["alternatives"]) < 0.01
    hard_dice = torch.tensor([[(2 * 8 + 1) / (8 + 16 + 1)] * 2 + [1.0]])
    assert float(losses["quality"]) == pytest.approx(float(((0.5 - hard_dice) ** 2).mean()))  # sigmoid(0) = 0.5
    out = {"masks": [half], "candidates": candidates, "quality": torch.zeros(1, 3)}
    assert set(box2mask_loss(out, {"target": target})) == {"mask", "alternatives", "quality"}


class TwoReadings(nn.Module):
    """Candidate 0 is the whole crop, candidate 1 its central square; quality prefers `favourite`."""

    def __init__(self, favourite: int):
        super().__init__()
        self.favourite = favourite

    def forward(self, image):
        n, _, s, _ = image.shape
        whole = torch.full((n, 1, s, s), 10.0)
        core = torch.full((n, 1, s, s), -10.0)
        core[..., s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 10.0
        quality = torch.full((n, 2), -3.0)
        quality[:, self.favourite] = 3.0
        return {"masks": [whole], "candidates": torch.cat([whole, core], 1), "quality": quality}


@pytest.mark.parametrize("orientations", [1, 8])
def test_the_engine_keeps_the_candidate_of_highest_quality(orientations):
    plane = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    box = (16, 16, 47, 47)
    kw = dict(size=32, device=torch.device("cpu"), search=WindowSearch(), box_scale=1.0, orientations=orientations)
    whole = box_to_mask(TwoReadings(0), plane, box, **kw)
    core = box_to_mask(TwoReadings(1), plane, box, **kw)
    assert whole[16:48, 16:48].all() and whole.sum() == 32 * 32  # the whole box (clipped to it)
    assert core[24:40, 24:40].all() and 200 < core.sum() < 400  # the central square only


def test_warm_start_from_the_shipped_box2mask_adds_only_the_candidate_heads(tmp_path):
    from propsam.training.train import TrainConfig, Trainer

    weights = SHIPPED_MODELS_DIR / "lite" / "lite_box2mask.pt"
    if not weights.exists():
        pytest.skip("shipped weights missing")
    config = TrainConfig(out_dir=str(tmp_path / "w"), network="box2mask", steps=1, batch_size=1, data_dir="/nonexistent",
                         phantom_pool=2, threads=1, warmup_steps=1, network_overrides={"mask_candidates": 3},
                         init_from=str(weights))
    trainer = Trainer(config)
    shipped = torch.load(weights, weights_only=True)["state_dict"]
    own = trainer.net.state_dict()
    assert all(torch.equal(own[k].half(), shipped[k]) for k in shipped)
    assert sorted({k.split(".")[0] for k in own if k not in shipped}) == ["alternatives", "quality"]
    trainer.run()  # one step with the candidate losses
