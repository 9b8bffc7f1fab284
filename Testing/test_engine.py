"""The propagation engine on volumes with exact truth, using threshold networks as doubles."""

import numpy as np
import pytest
import torch

from engine_doubles import ThresholdBox2Mask, ThresholdPropMask
from phantom_volumes import sphere_volume
from propsam.config import named_config
from propsam.engine.control import CancelToken
from propsam.engine.prompts import BoxPrompt, MaskPrompt, TwoViewBoxPrompt
from propsam.engine.segmenter import Segmenter
from propsam.errors import Cancelled, InputError
from propsam.engine.roi import slice_extent
from propsam.evaluation.metrics import dice


@pytest.fixture
def segmenter():
    nets = {"box2mask": ThresholdBox2Mask(), "propmask": ThresholdPropMask()}
    return Segmenter(named_config("lite"), nets, torch.device("cpu"))


def largest_slice(truth, axis):
    return int(np.moveaxis(truth, axis, 0).reshape(truth.shape[axis], -1).sum(1).argmax())


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mask_prompt_propagates_both_ways_along_any_axis(segmenter, axis):
    volume, truth = sphere_volume(shape=(40, 64, 60), spacing=(0.8, 1.0, 2.0))
    k = largest_slice(truth, axis)
    result = segmenter.segment(volume, MaskPrompt(k, np.take(truth, k, axis=axis) > 0, axis))
    assert result.mask.shape == truth.shape and result.mask.dtype == np.uint8
    assert dice(result.mask, truth) > 0.93  # resampling a 2 mm axis through the 96 px ROI blurs edges
    got, want = slice_extent(result.mask, axis), slice_extent(truth, axis)
    assert abs(got[0] - want[0]) <= 1 and abs(got[1] - want[1]) <= 1


def test_box_prompt_uses_box2mask_then_propagates(segmenter):
    volume, truth = sphere_volume()
    z = largest_slice(truth, 0)
    ys, xs = np.nonzero(truth[z])
    result = segmenter.segment(volume, BoxPrompt(z, (xs.min(), ys.min(), xs.max(), ys.max())))
    assert dice(result.mask, truth) > 0.85
    assert result.prompt_mask.sum() > 0


def test_both_directions_share_one_batch(segmenter):
    volume, truth = sphere_volume(shape=(30, 48, 48), spacing=(1.0, 1.0, 1.0), radius_mm=10)
    z = largest_slice(truth, 0)
    segmenter.propmask.calls = 0
    result = segmenter.segment(volume, MaskPrompt(z, truth[z] > 0))
    # 21 slices, 20 mm window: one round covers both sides, the second finds the ends
    assert result.stats.rounds == segmenter.propmask.calls <= 2
    assert set(result.stats.stop_reasons) == {1, -1}


def test_two_view_box_bounds_propagation(segmenter):
    volume, truth = sphere_volume(shape=(40, 64, 64), spacing=(1.0, 1.0, 1.0))
    zs, ys, xs = np.nonzero(truth)
    z0, z1 = int(zs.min()) + 4, int(zs.max()) - 4
    result = segmenter.segment(volume, TwoViewBoxPrompt((int(xs.min()), int(ys.min()), z0, int(xs.max()), int(ys.max()), z1)))
    assert slice_extent(result.mask, 0) == (z0, z1)


def test_object_touching_the_volume_edge_stops_at_the_edge(segmenter):
    volume, truth = sphere_volume(shape=(20, 64, 64), spacing=(1.0, 1.0, 2.0), centre_index=(2, 32, 32), radius_mm=16)
    z = largest_slice(truth, 0)
    result = segmenter.segment(volume, MaskPrompt(z, truth[z] > 0))
    assert result.stats.stop_reasons[-1] == "edge"
    assert dice(result.mask, truth) > 0.93


def test_only_components_touching_the_prompt_are_kept(segmenter):
    volume, truth = sphere_volume(shape=(40, 64, 64), spacing=(1.0, 1.0, 1.0), radius_mm=8)
    volume.array[5:10, 5:10, 5:10] = 200  # a bright blob far away, never connected
    z = largest_slice(truth, 0)
    result = segmenter.segment(volume, MaskPrompt(z, truth[z] > 0))
    assert result.mask[5:10, 5:10, 5:10].sum() == 0


def test_deterministic(segmenter):
    volume, truth = sphere_volume()
    z = largest_slice(truth, 0)
    a = segmenter.segment(volume, MaskPrompt(z, truth[z] > 0)).mask
    b = segmenter.segment(volume, MaskPrompt(z, truth[z] > 0)).mask
    assert np.array_equal(a, b)


def test_progress_is_reported_and_reaches_the_total(segmenter):
    volume, truth = sphere_volume(shape=(60, 48, 48), spacing=(1.0, 1.0, 1.0), radius_mm=20)
    z = largest_slice(truth, 0)
    seen = []
    segmenter.segment(volume, MaskPrompt(z, truth[z] > 0), progress=lambda d, t: seen.append((d, t)))
    assert seen and all(d <= t for d, t in seen)
    assert seen[-1][0] == seen[-1][1]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_cancel_mid_run_raises_and_returns_nothing(segmenter):
    volume, truth = sphere_volume(shape=(60, 48, 48), spacing=(1.0, 1.0, 1.0), radius_mm=22)
    before = volume.array.copy()
    token = CancelToken()
    with pytest.raises(Cancelled):
        segmenter.segment(volume, MaskPrompt(30, truth[30] > 0), progress=lambda d, t: token.cancel(), cancel=token)
    assert np.array_equal(volume.array, before)


def test_input_volume_is_never_modified(segmenter):
    volume, truth = sphere_volume()
    before = volume.array.copy()
    segmenter.segment(volume, MaskPrompt(20, truth[20] > 0))
    assert np.array_equal(volume.array, before)


@pytest.mark.parametrize(
    "prompt, message",
    [
        (BoxPrompt(20, (10, 10, 70, 30)), "outside the slice"),
        (BoxPrompt(20, (30, 10, 20, 30)), "inverted"),
        (BoxPrompt(20, (10, 10, 10, 30)), "zero width"),
        (BoxPrompt(99, (10, 10, 20, 30)), "slice index 99 is outside"),
        (BoxPrompt(-1, (10, 10, 20, 30)), "slice index -1 is outside"),
        (MaskPrompt(20, np.zeros((64, 64), bool)), "empty"),
        (MaskPrompt(20, np.ones((10, 10), bool)), "shape"),
        (TwoViewBoxPrompt((10, 10, 5, 30, 30, 50)), "outside the volume"),
    ],
)
def test_bad_prompts_are_refused_clearly(segmenter, prompt, message):
    volume, _ = sphere_volume()
    with pytest.raises(InputError, match=message):
        segmenter.segment(volume, prompt)


def test_constant_and_non_finite_images_are_refused(segmenter):
    volume, truth = sphere_volume()
    volume.array[:] = 7
    with pytest.raises(InputError, match="constant"):
        segmenter.segment(volume, MaskPrompt(20, truth[20] > 0))
    volume.array[3, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        segmenter.segment(volume, MaskPrompt(20, truth[20] > 0))


def test_mask_prompt_axis_is_inferred_from_the_single_slice():
    mask = np.zeros((10, 12, 14), np.uint8)
    mask[:, 5, 3:8] = 1
    prompt = MaskPrompt.from_volume_mask(mask)
    assert (prompt.axis, prompt.slice_index, prompt.mask.shape) == (1, 5, (10, 14))
    mask[:, 6, 3:8] = 1
    with pytest.raises(InputError, match="several slices"):
        MaskPrompt.from_volume_mask(mask)


@pytest.mark.parametrize("prompt_kind", ["box", "mask", "two_view"])
def test_result_does_not_depend_on_how_the_array_is_stored(random_model, prompt_kind):
    """The same physical grid stored with x and z reversed (as Slicer does for left-handed
    volumes) gives the same physical result, even with random weights that are not flip-equivariant."""
    from propsam.engine.orientation import flip_array, flip_prompt
    from propsam.io.volume import Volume

    segmenter = Segmenter.load(str(random_model), "cpu")
    segmenter.box2mask = ThresholdBox2Mask()  # random Box2Mask may find nothing; PropMask stays random
    volume, truth = sphere_volume(shape=(24, 40, 36), spacing=(0.9, 1.1, 2.0))
    flips = (True, False, True)
    d = np.diag([-1.0, 1.0, -1.0])  # x and z axes reversed
    far_corner = np.array(volume.origin) + np.array([(volume.shape[2] - 1) * 0.9, 0, (volume.shape[0] - 1) * 2.0])
    stored = Volume(np.ascontiguousarray(flip_array(volume.array, flips)), volume.spacing, tuple(far_corner * [1, 1, 1]),
                    tuple(d.ravel()))
    z = 12
    ys, xs = np.nonzero(truth[z])
    prompt = {"box": BoxPrompt(z, (xs.min(), ys.min(), xs.max(), ys.max())), "mask": MaskPrompt(z, truth[z] > 0),
              "two_view": TwoViewBoxPrompt((int(xs.min()), int(ys.min()), 8, int(xs.max()), int(ys.max()), 16))}[prompt_kind]
    a = segmenter.segment(volume, prompt)
    b = segmenter.segment(stored, flip_prompt(prompt, flips, volume.shape))
    assert a.mask.sum() > 0
    assert np.array_equal(a.mask, flip_array(b.mask, flips))
    assert b.slice_index == volume.shape[0] - 1 - a.slice_index


def test_the_mask_threshold_cuts_propmasks_probability(segmenter):
    """mask_threshold is the level of PropMask's averaged probability that is the object: a lower
    one grows every propagated slice, a higher one shrinks it; the prompt slice stays the user's."""
    from dataclasses import replace

    from propsam.engine.propagation import PropagationOptions
    from propsam.engine.segmenter import SegmentOptions

    volume, truth = sphere_volume(shape=(30, 48, 48), spacing=(1.0, 1.0, 1.0), radius_mm=10)
    z = largest_slice(truth, 0)
    masks = [segmenter.segment(volume, MaskPrompt(z, truth[z] > 0),
                               SegmentOptions(propagation=replace(PropagationOptions(), mask_threshold=t, max_area_ratio=0))).mask
             for t in (0.2, 0.5, 0.8)]
    low, mid, high = (int(m.sum()) for m in masks)  # (not nested voxel by voxel: each level guides its own rounds)
    assert low > mid > high
    assert all(np.array_equal(m[z], truth[z]) for m in masks)


def test_window_per_radius_shortens_the_rounds_of_a_thin_object_only(segmenter):
    """window_per_radius caps a round's reach at that x the prompt's radius: a 10 mm ball at 0.5x
    goes 5 slices a round instead of 16 (more rounds, the same result); it never lengthens one."""
    from dataclasses import replace

    from propsam.engine.propagation import PropagationOptions
    from propsam.engine.segmenter import SegmentOptions

    volume, truth = sphere_volume(shape=(30, 48, 48), spacing=(1.0, 1.0, 1.0), radius_mm=10)
    z = largest_slice(truth, 0)
    runs = {f: segmenter.segment(volume, MaskPrompt(z, truth[z] > 0),
                                 SegmentOptions(propagation=replace(PropagationOptions(), window_per_radius=f)))
            for f in (0.0, 0.5, 100.0)}
    assert runs[0.5].stats.rounds >= 3 > runs[0.0].stats.rounds == runs[100.0].stats.rounds
    assert dice(runs[0.5].mask, truth) > 0.93 and np.array_equal(runs[0.0].mask, runs[100.0].mask)
