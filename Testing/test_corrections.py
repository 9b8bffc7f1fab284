"""Corrections (re-propagate from a corrected slice, stop, continue) and per-slice confidence.

The threshold doubles make the right answer known: re-propagation from a correct slice must
recover the true shape beyond it, and everything on the prompt's side of it must stay as it was.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from engine_doubles import ThresholdBox2Mask, ThresholdPropMask
from phantom_volumes import sphere_volume
from propsam import cli
from propsam.config import named_config
from propsam.engine.confidence import slice_confidence
from propsam.engine.control import CancelToken
from propsam.engine.corrections import (
    USER_STOP, Correction, apply_correction, apply_corrections, corrections_document, read_corrections,
)
from propsam.engine.orientation import flip_array
from propsam.engine.prompts import MaskPrompt
from propsam.engine.roi import slice_extent
from propsam.engine.segmenter import SegmentResult, Segmenter
from propsam.errors import Cancelled, InputError
from propsam.evaluation.metrics import dice
from propsam.io.volume import Volume


@pytest.fixture
def segmenter():
    nets = {"box2mask": ThresholdBox2Mask(), "propmask": ThresholdPropMask()}
    return Segmenter(named_config("lite"), nets, torch.device("cpu"))


@pytest.fixture
def sphere():
    volume, truth = sphere_volume(shape=(60, 48, 48), spacing=(1.0, 1.0, 1.0), radius_mm=22)
    return volume, truth, 30  # prompt slice: the largest


def result_from(mask, prompt_index, prompt_mask, axis=0) -> SegmentResult:
    """A result as if the engine had returned `mask` (e.g. a wrong one), to be corrected."""
    from propsam.engine.propagation import PropagationStats

    extent = slice_extent(mask, axis)
    return SegmentResult(mask.astype(np.uint8), prompt_mask, axis, prompt_index, 0.0, PropagationStats(extent=extent))


def wrong_beyond(truth, k, direction):
    """The truth with every slice beyond k (on one side) replaced by a wrong shape."""
    wrong = truth.copy()
    for t in range(truth.shape[0]):
        if (t - k) * direction > 0:
            wrong[t] = 0
            wrong[t, 5:9, 5:9] = 1  # a blob where the object is not
    return wrong


@pytest.mark.parametrize("direction", [1, -1])
def test_mask_correction_repropagates_only_beyond_the_slice(segmenter, sphere, direction):
    volume, truth, p = sphere
    k = p + direction * 8
    current = wrong_beyond(truth, k, direction)
    current[p + direction * 3, 40:44, 40:44] = 1  # a hand edit between prompt and k: must survive
    before = current.copy()
    fixed = apply_correction(segmenter, volume, result_from(current, p, truth[p] > 0), Correction("mask", k, mask=truth[k] > 0))
    assert np.array_equal(current, before)  # the input result is not modified
    between = [t for t in range(60) if (t - k) * direction <= 0]
    assert np.array_equal(fixed.mask[between], current[between])
    outside = [t for t in range(60) if (t - k) * direction > 0]
    assert dice(fixed.mask[outside], truth[outside]) > 0.93
    want = slice_extent(truth)
    assert abs(fixed.stats.extent[0] - want[0]) <= 1 and abs(fixed.stats.extent[1] - want[1]) <= 1
    assert fixed.stats.rounds >= 1 and fixed.stats.presence  # re-propagated, with confidence


def test_mask_correction_on_the_prompt_slice_goes_both_ways_and_replaces_the_prompt(segmenter, sphere):
    volume, truth, p = sphere
    current = np.zeros_like(truth)
    current[p, 20:24, 20:24] = 1
    fixed = apply_correction(segmenter, volume, result_from(current, p, current[p] > 0), Correction("mask", p, mask=truth[p] > 0))
    assert dice(fixed.mask, truth) > 0.95
    assert np.array_equal(fixed.prompt_mask, truth[p] > 0)


def test_box_correction_goes_through_box2mask(segmenter, sphere):
    volume, truth, p = sphere
    k = p + 10
    current = wrong_beyond(truth, k, 1)
    current[k] = 0
    ys, xs = np.nonzero(truth[k])
    fixed = apply_correction(segmenter, volume, result_from(current, p, truth[p] > 0),
                             Correction("box", k, box=(xs.min(), ys.min(), xs.max(), ys.max())))
    assert dice(fixed.mask[k:], truth[k:]) > 0.9
    assert np.array_equal(fixed.mask[:k], current[:k])


def test_stop_clears_beyond_the_slice_without_running_the_network(segmenter, sphere):
    volume, truth, p = sphere
    first, last = slice_extent(truth)
    current = truth.copy()
    current[last + 1 : last + 6] = truth[last]  # ran on past the true end
    segmenter.propmask.calls = 0
    fixed = apply_correction(segmenter, volume, result_from(current, p, truth[p] > 0), Correction("stop", last))
    assert np.array_equal(fixed.mask, truth)
    assert segmenter.propmask.calls == 0
    assert fixed.stats.stop_reasons[1] == USER_STOP and fixed.stats.extent == (first, last)


def test_a_stop_holds_for_later_corrections_on_its_side_until_continue(segmenter, sphere):
    volume, truth, p = sphere
    first, last = slice_extent(truth)
    run = segmenter.segment(volume, MaskPrompt(p, truth[p] > 0))
    stopped = apply_correction(segmenter, volume, run, Correction("stop", last - 6))
    again = apply_correction(segmenter, volume, stopped, Correction("mask", p + 4, mask=truth[p + 4] > 0))
    assert again.stats.extent[1] == last - 6 and again.stats.stop_reasons[1] == USER_STOP
    both = apply_correction(segmenter, volume, again, Correction("mask", p, mask=truth[p] > 0))
    assert both.stats.extent[1] == last - 6 and abs(both.stats.extent[0] - first) <= 1
    on = apply_correction(segmenter, volume, both, Correction("continue", last - 6))
    assert abs(on.stats.extent[1] - last) <= 1


def test_stop_on_the_prompt_slice_needs_a_direction(segmenter, sphere):
    volume, truth, p = sphere
    result = result_from(truth, p, truth[p] > 0)
    with pytest.raises(InputError, match="needs a direction"):
        apply_correction(segmenter, volume, result, Correction("stop", p))
    fixed = apply_correction(segmenter, volume, result, Correction("stop", p, direction=-1))
    assert not fixed.mask[:p].any() and np.array_equal(fixed.mask[p:], truth[p:])


def test_continue_extends_a_result_that_stopped_short(segmenter, sphere):
    volume, truth, p = sphere
    first, last = slice_extent(truth)
    k = p - 12
    current = truth.copy()
    current[:k] = 0
    fixed = apply_correction(segmenter, volume, result_from(current, p, truth[p] > 0), Correction("continue", k))
    assert abs(fixed.stats.extent[0] - first) <= 1
    assert np.array_equal(fixed.mask[k:], current[k:])
    assert dice(fixed.mask, truth) > 0.95


def test_continue_passes_a_stop_the_network_insists_on(sphere):
    """Presence says 'absent' everywhere: a run never leaves the prompt slice, but 'continue'
    still adds one window past the slice (the user said the object goes on)."""
    volume, truth, p = sphere
    segmenter = Segmenter(named_config("lite"), {"box2mask": ThresholdBox2Mask(), "propmask": AbsentPropMask()},
                          torch.device("cpu"))
    run = segmenter.segment(volume, MaskPrompt(p, truth[p] > 0))
    assert slice_extent(run.mask) == (p, p)
    fixed = apply_correction(segmenter, volume, run, Correction("continue", p, direction=1))
    assert slice_extent(fixed.mask) == (p, p + 16)  # 1 mm slices, 20 mm thickness: the 16-slice cap
    assert dice(fixed.mask[p:p + 17], truth[p:p + 17]) > 0.9
    assert slice_confidence(fixed.mask, 0, fixed.stats.presence, fixed.stats.agreement).suspects(1)[0] in range(p + 1, p + 17)


def test_continue_passes_the_leak_limit():
    """The object widens 6x past slice 9, so a run from the narrow part stops there (the leak
    limit); 'continue' says the object goes on, and its window is not judged by the limit."""
    z, y, x = np.mgrid[:24, :64, :64]
    radius = np.where(z < 10, 4, 10)
    truth = (((y - 32) ** 2 + (x - 32) ** 2 <= radius**2) & (z >= 2) & (z <= 21)).astype(np.uint8)
    volume = Volume(np.where(truth > 0, 100.0, 0.0).astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    segmenter = Segmenter(named_config("lite"), {"box2mask": ThresholdBox2Mask(), "propmask": ThresholdPropMask()},
                          torch.device("cpu"))
    run = segmenter.segment(volume, MaskPrompt(5, truth[5] > 0))
    assert slice_extent(run.mask) == (2, 9)
    fixed = apply_correction(segmenter, volume, run, Correction("continue", 9, direction=1))
    assert slice_extent(fixed.mask) == (2, 21) and fixed.mask[10:22].any(axis=(1, 2)).all()
    assert (fixed.mask & (1 - truth)).sum() < 0.05 * fixed.mask.sum()  # the object's own voxels


class AbsentPropMask(ThresholdPropMask):
    def forward(self, guide_image, guide_mask, adjacent):
        out = super().forward(guide_image, guide_mask, adjacent)
        out["presence"] = torch.full_like(out["presence"], -5.0)
        return out


def test_corrections_stack_reproducibly(segmenter, sphere):
    volume, truth, p = sphere
    run = segmenter.segment(volume, MaskPrompt(p, truth[p] > 0))
    fixes = [Correction("stop", p + 15), Correction("mask", p - 5, mask=truth[p - 5] > 0), Correction("continue", p + 15)]
    one_by_one = run
    for c in fixes:
        one_by_one = apply_correction(segmenter, volume, one_by_one, c)
    again = apply_corrections(segmenter, volume, segmenter.segment(volume, MaskPrompt(p, truth[p] > 0)), fixes)
    assert np.array_equal(one_by_one.mask, again.mask)
    assert one_by_one.stats.presence == again.stats.presence


def test_result_does_not_depend_on_how_the_array_is_stored(random_model, sphere):
    volume, truth, p = sphere
    segmenter = Segmenter.load(str(random_model), "cpu")
    flips = (True, False, True)
    stored = Volume(np.ascontiguousarray(flip_array(volume.array, flips)), volume.spacing, volume.origin,
                    tuple(np.diag([-1.0, 1.0, -1.0]).ravel()))
    k = p + 6
    current = wrong_beyond(truth, k, 1)
    a = apply_correction(segmenter, volume, result_from(current, p, truth[p] > 0), Correction("mask", k, mask=truth[k] > 0))
    flipped_current = flip_array(current, flips)
    b = apply_correction(segmenter, stored, result_from(flipped_current, 59 - p, flipped_current[59 - p] > 0),
                         Correction("mask", 59 - k, mask=flipped_current[59 - k] > 0))
    assert a.mask[k + 1:].any()
    assert np.array_equal(a.mask, flip_array(b.mask, flips))
    assert {59 - t: v for t, v in b.stats.presence.items()} == a.stats.presence


def test_cancelled_correction_raises_and_changes_nothing(segmenter, sphere):
    volume, truth, p = sphere
    current = wrong_beyond(truth, p + 4, 1)
    before = current.copy()
    token = CancelToken()
    with pytest.raises(Cancelled):
        apply_correction(segmenter, volume, result_from(current, p, truth[p] > 0), Correction("mask", p + 4, mask=truth[p + 4] > 0),
                         progress=lambda d, t: token.cancel(), cancel=token)
    assert np.array_equal(current, before)


@pytest.mark.parametrize("correction, message", [
    (Correction("erase", 35), "unknown correction kind"),
    (Correction("stop", 99), "slice index 99 is outside"),
    (Correction("stop", 35, axis=1), "propagated along z"),
    (Correction("stop", 35, direction=-1), "away from the prompt"),
    (Correction("mask", 35, mask=np.zeros((48, 48), bool)), "empty"),
    (Correction("mask", 35, mask=np.ones((4, 4), bool)), "shape"),
    (Correction("box", 35, box=(30, 10, 20, 30)), "inverted"),
    (Correction("continue", 58), "nothing to continue from"),
])
def test_bad_corrections_are_refused_clearly(segmenter, sphere, correction, message):
    volume, truth, p = sphere
    with pytest.raises(InputError, match=message):
        apply_correction(segmenter, volume, result_from(truth, p, truth[p] > 0), correction)


# --- confidence ---------------------------------------------------------------------------------
def test_every_run_returns_per_slice_presence_and_agreement(segmenter, sphere):
    volume, truth, p = sphere
    run = segmenter.segment(volume, MaskPrompt(p, truth[p] > 0))
    first, last = run.stats.extent
    kept = set(range(first, last + 1)) - {p}
    assert kept <= set(run.stats.agreement) and kept <= set(run.stats.presence)
    assert {first - 1, last + 1} <= set(run.stats.presence)  # the slices that ended each side
    assert all(0 <= v <= 1 for v in run.stats.agreement.values())


class SharpPropMask(ThresholdPropMask):
    """Ten times steeper than the threshold double: a certain answer wherever the image is clear
    (the plain double gives the dark background a probability of 0.3)."""

    def forward(self, guide_image, guide_mask, adjacent):
        out = super().forward(guide_image, guide_mask, adjacent)
        out["masks"] = [400 * (adjacent - self.level)]
        return out


def test_confidence_names_the_slice_the_network_hesitates_on(sphere):
    from propsam.engine.intensity import window_from_values

    volume, truth, p = sphere
    segmenter = Segmenter(named_config("lite"), {"box2mask": ThresholdBox2Mask(), "propmask": SharpPropMask()},
                          torch.device("cpu"))
    dim = p + 7
    lo, hi = window_from_values(volume.array[p][truth[p] > 0])
    barely = lo + 0.0225 * (hi - lo)  # windowed just above the double's level 0.02: probability ~0.7
    volume.array[dim] = np.where(truth[dim] > 0, barely, volume.array[dim])
    run = segmenter.segment(volume, MaskPrompt(p, truth[p] > 0))
    confidence = slice_confidence(run.mask, run.axis, run.stats.presence, run.stats.agreement)
    assert confidence.suspects(1) == [dim]
    assert confidence.score[p] == 1.0  # the prompt slice was given


def test_confidence_follows_the_storage_flip(random_model, sphere):
    volume, truth, p = sphere
    segmenter = Segmenter.load(str(random_model), "cpu")
    stored = Volume(np.ascontiguousarray(volume.array[::-1]), volume.spacing, volume.origin,
                    tuple(np.diag([1.0, 1.0, -1.0]).ravel()))
    a = segmenter.segment(volume, MaskPrompt(p, truth[p] > 0))
    b = segmenter.segment(stored, MaskPrompt(59 - p, truth[p] > 0))
    assert a.stats.presence == {59 - t: v for t, v in b.stats.presence.items()}
    assert a.stats.stop_reasons == {-d: why for d, why in b.stats.stop_reasons.items()}


# --- file and CLI -------------------------------------------------------------------------------
def write_image(volume, array, path):
    sitk.WriteImage(volume.to_sitk(array), str(path))
    return path


def test_corrections_file_round_trip_and_errors(tmp_path, sphere):
    volume, truth, p = sphere
    write_image(volume, truth, tmp_path / "fix.nii.gz")
    fixes = [Correction("mask", 40, mask=truth[40] > 0), Correction("box", 20, box=(10, 12, 30, 33)),
             Correction("stop", p, direction=-1)]
    document = corrections_document(fixes, {0: "fix.nii.gz"})
    path = tmp_path / "corrections.json"
    path.write_text(json.dumps(document))
    back = read_corrections(path, volume)
    assert [(c.kind, c.slice_index, c.box, c.direction) for c in back] == [(c.kind, c.slice_index, c.box, c.direction) for c in fixes]
    assert np.array_equal(back[0].mask, truth[40] > 0)
    for bad, message in [({**document, "version": 2}, "version 2"), ({"corrections": []}, "not a corrections file"),
                         ({**document, "corrections": [{"kind": "stop", "slice_index": "3"}]}, "must be an integer"),
                         ({**document, "corrections": [{"kind": "box", "slice_index": 3, "box": [1, 2]}]}, "4 integers"),
                         ({**document, "corrections": [{"kind": "mask", "slice_index": 3, "mask_file": "no.nii"}]}, "does not exist")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=message):
            read_corrections(path, volume)


def test_cli_corrections_give_the_python_api_result(tmp_path, random_model, sphere, capsys):
    volume, truth, p = sphere
    image = write_image(volume, volume.array, tmp_path / "image.nii.gz")
    prompt = write_image(volume, np.where(np.arange(60)[:, None, None] == p, truth, 0).astype(np.uint8), tmp_path / "prompt.nii.gz")
    write_image(volume, truth, tmp_path / "truth.nii.gz")
    fixes = [Correction("mask", p + 8, mask=truth[p + 8] > 0), Correction("stop", p - 12)]
    (tmp_path / "c.json").write_text(json.dumps(corrections_document(fixes, {0: "truth.nii.gz"})))
    args = ["segment", "--image", str(image), "--mask-prompt", str(prompt), "--model", str(random_model),
            "--device", "cpu", "--quiet", "--out"]
    assert cli.main(args + [str(tmp_path / "plain.nii.gz")]) == 0
    assert cli.main(args + [str(tmp_path / "fixed.nii.gz"), "--corrections", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "least confident slices" in out and "ends (lower: stopped by user, upper: " in out  # the stop correction
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "fixed.nii.gz")))
    segmenter = Segmenter.load(str(random_model), "cpu")
    want = apply_corrections(segmenter, volume, segmenter.segment(volume, MaskPrompt(p, truth[p] > 0)), fixes).mask
    assert np.array_equal(got, want)
    assert not np.array_equal(got, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "plain.nii.gz"))))
    # bad corrections: exit 2, nothing written
    (tmp_path / "bad.json").write_text(json.dumps({"format": "propsam-corrections", "version": 1,
                                                    "corrections": [{"kind": "stop", "slice_index": 999}]}))
    assert cli.main(args + [str(tmp_path / "never.nii.gz"), "--corrections", str(tmp_path / "bad.json")]) == 2
    assert not (tmp_path / "never.nii.gz").exists()
