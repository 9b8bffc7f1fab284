"""The stop rule: presence, area bounds, and patience over dips."""

import numpy as np
import pytest

from propsam.engine.propagation import FADED, GROWTH, LEAK, TOO_SMALL, PropagationOptions, _judge


def planes(*areas):
    out = []
    for a in areas:
        p = np.zeros((20, 20), np.float32)
        p.flat[:a] = 1.0
        out.append(p)
    return out


@pytest.mark.parametrize("presence, patience, expected", [
    ([1, 0, 1, 1], 1, (1, True, FADED)),  # today's rule: the first absent slice ends the object
    ([1, 0, 1, 1], 2, (4, False, "")),  # a one-slice dip is looked past, and kept
    ([1, 0, 0, 1], 2, (1, True, FADED)),  # two in a row end it
    ([1, 1, 0], 2, (2, False, "")),  # a pending failure at the window's end: the next round looks again
    ([0], 2, (0, True, FADED)),  # nothing accepted: ended (never loops on the same guide)
])
def test_patience(presence, patience, expected):
    opt = PropagationOptions(stop_patience=patience)
    accepted, ended, _, why = _judge(planes(*[30] * len(presence)), np.array(presence, float), 3, np.inf, opt)
    assert (accepted, ended, why) == expected


def test_area_bounds_fail_a_slice():
    opt = PropagationOptions()
    assert _judge(planes(30, 2, 30), np.ones(3), 3, np.inf, opt) == (1, True, 2, TOO_SMALL)
    assert _judge(planes(30, 90, 30), np.ones(3), 3, 60, opt) == (1, True, 2, LEAK)  # a leak: larger than allowed
    assert _judge(planes(30, 90, 30), np.ones(3), 3, np.inf, opt) == (3, False, 3, "")


def test_growth_limit_fails_a_slice_that_jumps_into_a_neighbour():
    opt = PropagationOptions(max_growth=1.5)
    assert _judge(planes(40, 50, 90), np.ones(3), 3, np.inf, opt, guide_area=40) == (2, True, 3, GROWTH)  # 90 > 1.5 x 50
    assert _judge(planes(70, 50), np.ones(2), 3, np.inf, opt, guide_area=40) == (0, True, 1, GROWTH)  # against the guide first
    assert _judge(planes(20, 30, 40), np.ones(3), 3, np.inf, opt, guide_area=10) == (3, False, 3, "")  # small: floor of 16 px
    assert _judge(planes(40, 50, 90), np.ones(3), 3, np.inf, PropagationOptions(), guide_area=40) == (3, False, 3, "")  # off


def _disk_into_slab():
    """A bright disk (slices 4-25) that runs into a bright slab of the same intensity from slice 16."""
    z, y, x = np.mgrid[:30, :64, :64]
    disk = ((y - 32) ** 2 + (x - 32) ** 2 <= 25) & (z >= 4) & (z <= 25)
    slab = ((y - 32) ** 2 + (x - 40) ** 2 <= 400) & (z >= 16) & (z <= 25)
    volume = np.where(disk | slab, 100.0, 0.0).astype(np.float32)  # noise-free: the threshold double is exact
    return volume, disk


@pytest.mark.parametrize("leak_limit", [2.0, 0.0])
def test_the_leak_limit_stops_at_a_neighbour_of_the_same_intensity(leak_limit):
    import torch
    from engine_doubles import ThresholdPropMask

    from propsam.engine.propagation import propagate

    volume, disk = _disk_into_slab()
    options = PropagationOptions(max_area_ratio=leak_limit, thickness_mm=2.0)
    mask, stats = propagate(ThresholdPropMask(), 32, volume, (1.0, 1.0, 1.0), 10, disk[10], torch.device("cpu"), options)
    assert (mask[4:16] >= disk[4:16]).all() and mask[4:16].sum() < 1.5 * disk[4:16].sum()  # the disk, down to its lower end
    if leak_limit:
        assert not mask[16:].any() and stats.extent == (4, 15)  # stopped where the slab begins
        assert stats.stop_reasons == {1: LEAK, -1: FADED}  # the panel and the CLI say so
    else:
        assert mask[16:].sum() > 2 * disk[16:].sum()  # without the limit it runs on into the slab


def test_a_correction_larger_than_the_prompt_is_not_cut_by_the_leak_limit():
    """The limit is against the larger of the prompt and the guide: re-propagating from a painted
    slice six times the prompt's area (a correction) still runs on."""
    import torch
    from engine_doubles import ThresholdPropMask

    from propsam.engine.propagation import propagate

    z, y, x = np.mgrid[:24, :64, :64]
    radius = np.where(z < 10, 4, 10)
    obj = ((y - 32) ** 2 + (x - 32) ** 2 <= radius**2) & (z >= 2) & (z <= 21)
    volume = np.where(obj, 100.0, 0.0).astype(np.float32)
    options = PropagationOptions(thickness_mm=2.0)
    device = torch.device("cpu")
    first, _ = propagate(ThresholdPropMask(), 32, volume, (1.0, 1.0, 1.0), 5, obj[5], device, options)
    assert first[2:10].any(axis=(1, 2)).all() and not first[10:].any()  # the prompt's run stops where it grows 6x
    corrected, stats = propagate(ThresholdPropMask(), 32, volume, (1.0, 1.0, 1.0), 12, obj[12], device, options,
                                 bounds=(12, 23), reference=(5, obj[5]))
    assert corrected[12:22].any(axis=(1, 2)).all() and stats.extent == (12, 21)


@pytest.mark.parametrize("presence, expected", [
    ([1, 1, 0, 1], (2, False, 2, "")),  # an end two slices from the guide: judged again from slice 2
    ([0, 1], (0, True, 1, FADED)),  # the guide's own neighbour fails: ended
])
def test_confirm_end_judges_an_end_again_from_its_neighbour(presence, expected):
    opt = PropagationOptions(confirm_end=True)
    assert _judge(planes(*[30] * len(presence)), np.array(presence, float), 3, np.inf, opt) == expected
    assert _judge(planes(*[30] * len(presence)), np.array(presence, float), 3, np.inf, PropagationOptions())[1]  # off: ended


@pytest.mark.parametrize("confirm", [False, True])
def test_confirm_end_follows_an_object_a_far_guide_loses(confirm):
    import torch
    from engine_doubles import NearSightedPropMask

    from propsam.engine.propagation import propagate

    z, y, x = np.mgrid[:30, :64, :64]
    obj = ((y - 32) ** 2 + (x - 32) ** 2 <= 36) & (z >= 5) & (z <= 24)
    volume = np.where(obj, 100.0, 0.0).astype(np.float32)
    options = PropagationOptions(thickness_mm=4.0, confirm_end=confirm)
    mask, stats = propagate(NearSightedPropMask(), 32, volume, (1.0, 1.0, 1.0), 12, obj[12], torch.device("cpu"), options)
    if confirm:
        assert (mask >= obj).all() and mask.sum() < 1.5 * obj.sum()  # the object (resampled edges), ...
        assert stats.extent == (5, 24)  # ... slice by slice to both true ends
        assert stats.stop_reasons == {1: FADED, -1: FADED}
    else:
        assert stats.extent == (11, 13)  # each side ends after one slice, seen from too far


def _cone_with_faint_tails():
    """A bright disk (slices 8-16, radius 6) whose ends taper over three slices each at a fainter
    intensity (60 against 100): faint enough for the network's window to lose, bright enough to
    stand out from the dark background."""
    z, y, x = np.mgrid[:26, :64, :64]
    r2 = (y - 32) ** 2 + (x - 32) ** 2
    core = (r2 <= 36) & (z >= 8) & (z <= 16)
    radius = np.select([z == 7, z == 6, z == 5, z == 17, z == 18, z == 19], [5, 4, 3, 5, 4, 3], 0)
    tails = (r2 <= radius ** 2) & ~core
    volume = np.where(core, 100.0, np.where(tails, 60.0, 0.0)).astype(np.float32)
    return volume, core, core | tails


@pytest.mark.parametrize("tail", [0, 8])
def test_intensity_tail_follows_a_faint_end_the_network_lets_go_of(tail):
    import torch
    from engine_doubles import ThresholdPropMask

    from propsam.engine.propagation import propagate

    volume, core, whole = _cone_with_faint_tails()
    options = PropagationOptions(thickness_mm=3.0, intensity_tail=tail)
    mask, stats = propagate(ThresholdPropMask(level=0.2), 32, volume, (1.0, 1.0, 1.0), 12, core[12], torch.device("cpu"), options)
    if tail:
        assert stats.stop_reasons == {d: f"{FADED}, then 3 slices by intensity" for d in (1, -1)}  # the CLI and panel say so
        assert stats.extent == (5, 19) and (mask[5:8] == whole[5:8]).all() and (mask[17:20] == whole[17:20]).all()
    else:
        assert stats.stop_reasons == {1: FADED, -1: FADED}
        assert stats.extent == (8, 16)  # the network's own ends


def test_intensity_tail_neither_grows_nor_follows_a_hidden_outline():
    from propsam.engine.propagation import intensity_tail, tail_cut

    volume, core, whole = _cone_with_faint_tails()
    cut = tail_cut(volume[12], core[12], PropagationOptions())
    assert cut == (50.0, True)  # half-way between the ring (0) and the object (100), a bright object
    assert [t for t, _ in intensity_tail(volume, 16, 1, core[16], cut, (0, 25), 8, 3)] == [17, 18, 19]
    assert [t for t, _ in intensity_tail(volume, 16, 1, core[16], cut, (0, 18), 8, 3)] == [17, 18]  # the bounds
    assert [t for t, _ in intensity_tail(volume, 16, 1, core[16], cut, (0, 25), 2, 3)] == [17, 18]  # the limit
    grown = volume.copy()
    grown[17] = np.where(whole[16] | np.roll(whole[16], 2, axis=1), 100.0, 0.0)  # larger than slice 16
    assert intensity_tail(grown, 16, 1, core[16], cut, (0, 25), 8, 3) == []  # an end tapers: a larger slice is not a tail
    flat = np.full((64, 64), 100.0, np.float32)  # the object's intensity all around: nothing to follow
    assert tail_cut(flat, core[12], PropagationOptions()) is None
