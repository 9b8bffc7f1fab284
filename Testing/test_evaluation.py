"""`propsam evaluate`: descriptors, metrics, baselines, evaluation objects, the harness and its CLI."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_doubles import ThresholdBox2Mask, ThresholdPropMask
from phantom_volumes import sphere_volume
from propsam.cli import main
from propsam.config import named_config
from propsam.engine.segmenter import Segmenter
from propsam.evaluation.baselines import box2mask_chain, copy_baseline, registration_baseline
from propsam.evaluation.descriptors import box_ratio, convex_ratio, describe, inverse_inertia
from propsam.evaluation.harness import (
    METHODS, SLICE_SHIFTS, THICKNESSES_MM, Run, _cropped_pair, evaluate_object, labelled, run_evaluation, score,
)
from propsam.engine.roi import mask_bbox
from propsam.engine.roi import slice_extent
from propsam.evaluation.metrics import average_surface_distance, dice, edge_separability, hd95
from propsam.evaluation.objects import eval_datasets, largest_slice, objects_of
from propsam.training.sources import SourceVolume, entry_files, manifest_entries, objects_from_labels


@pytest.fixture
def segmenter():
    nets = {"box2mask": ThresholdBox2Mask(), "propmask": ThresholdPropMask()}
    return Segmenter(named_config("lite"), nets, torch.device("cpu"))


def sphere_objects(thin: bool = False):
    """The bright sphere as an evaluation object; with `thin`, also a 3-slice bright plate."""
    volume, truth = sphere_volume(shape=(40, 56, 56), spacing=(1.0, 1.0, 2.0), radius_mm=14)
    labels = truth.copy()
    if thin:
        volume.array[2:5, 4:12, 4:14] = 200
        labels[2:5, 4:12, 4:14] = 2
    source = SourceVolume("sphere0001_t1", volume.array, tuple(volume.spacing[::-1]), "CT", 1.0,
                          objects_from_labels(labels, "each"), "exact")
    return list(objects_of(source, "sphere"))


# descriptors ------------------------------------------------------------------------------------

def test_cube_descriptors_are_exact():
    cube = np.zeros((12, 12, 12), np.uint8)
    cube[2:10, 2:10, 2:10] = 1
    shape = describe(cube, (1.5, 1.5, 1.5))
    # a ball of the cube's volume over the cube's polar moment: (3/5)(3/4pi)^(2/3) * 4
    assert shape.box_ratio == 1.0 and shape.convex_ratio == 1.0
    assert shape.inverse_inertia == pytest.approx(0.6 * (3 / (4 * math.pi)) ** (2 / 3) * 4, rel=1e-6)


def test_sphere_descriptors_in_physical_units():
    _, truth = sphere_volume(shape=(30, 64, 64), spacing=(0.8, 0.8, 2.0), radius_mm=20)
    assert inverse_inertia(truth, (2.0, 0.8, 0.8)) == pytest.approx(1.0, abs=0.02)
    assert convex_ratio(truth) == pytest.approx(1.0, abs=0.01)
    assert box_ratio(truth) == pytest.approx(math.pi / 6, abs=0.03)
    # the same voxels read with the wrong spacing are an ellipsoid, no longer optimal
    assert inverse_inertia(truth, (0.8, 0.8, 2.0)) < 0.8


def test_l_shape_ratios_are_known():
    shape = np.zeros((6, 12, 12), np.uint8)
    shape[:, :4, :] = 1
    shape[:, :, :4] = 1
    # hull cuts the square along y + x <= 14: 144 - 36 grid points per slice
    assert box_ratio(shape) == pytest.approx(80 / 144)
    assert convex_ratio(shape) == pytest.approx(80 / 108)
    assert inverse_inertia(shape, (1, 1, 1)) < 0.7


def test_flat_or_linear_objects_do_not_crash():
    plate = np.zeros((5, 10, 10), np.uint8)
    plate[2, 3:7, 2:8] = 1
    assert convex_ratio(plate) == 1.0
    line = np.zeros((5, 10, 10), np.uint8)
    line[1, np.arange(8), np.arange(8)] = 1
    assert convex_ratio(line) == 1.0 and 0 < inverse_inertia(line, (1, 1, 1)) < 0.2


# metrics ----------------------------------------------------------------------------------------

SPACING = (3.0, 0.7, 1.3)  # z, y, x mm


def test_plate_shifted_along_z_is_two_slices_of_3_mm_away():
    a = np.zeros((10, 20, 20), np.uint8)
    b = np.zeros_like(a)
    a[3, 5:15, 5:15] = 1
    b[5, 5:15, 5:15] = 1
    assert hd95(a, b, SPACING) == pytest.approx(6.0)
    assert average_surface_distance(a, b, SPACING) == pytest.approx(6.0)
    assert dice(a, b) == 0.0


def test_wall_shifted_along_y_uses_the_y_spacing():
    a = np.zeros((10, 20, 20), np.uint8)
    b = np.zeros_like(a)
    a[2:8, 4, 5:15] = 1
    b[2:8, 7, 5:15] = 1
    assert hd95(a, b, SPACING) == pytest.approx(3 * 0.7)


def test_cube_shift_dice_and_cropping_keeps_distances():
    a = np.zeros((16, 20, 20), np.uint8)
    a[0:10, 4:14, 4:14] = 1  # touches the volume edge: its face there is still surface
    b = np.roll(a, 2, axis=0)
    assert dice(a, b) == pytest.approx(0.8)
    ca, cb = _cropped_pair(a, b)
    assert ca.size < a.size
    assert hd95(ca, cb, SPACING) == pytest.approx(hd95(a, b, SPACING))
    assert average_surface_distance(ca, cb, SPACING) == pytest.approx(average_surface_distance(a, b, SPACING))


def test_edge_separability_tells_a_hidden_outline_from_a_clear_one():
    """0.5-ish when the object's intensities match its surroundings (a touching neighbour of the
    same intensity), 1 when they are apart, whichever is brighter; a partly overlapping range
    lies between."""
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 40), bool)
    mask[12:28, 12:28] = True
    same = rng.normal(100, 10, mask.shape)
    assert 0.5 <= edge_separability(same, mask) < 0.6
    brighter = same + 200 * mask
    assert edge_separability(brighter, mask) == pytest.approx(1.0)
    assert edge_separability(same - 200 * mask, mask) == pytest.approx(1.0)
    partly = same + 12 * mask
    assert 0.7 < edge_separability(partly, mask) < 0.95
    assert np.isnan(edge_separability(same, np.zeros_like(mask)))


# baselines --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, min_dice, end_tolerance", [
    ("copy", 0.8, 3), ("registration", 0.85, 2), ("box2mask-chain", 0.85, 2),
])
def test_baselines_follow_the_sphere_and_stop_near_its_ends(segmenter, method, min_dice, end_tolerance):
    volume, truth = sphere_volume(shape=(40, 56, 56), spacing=(1.0, 1.0, 2.0), radius_mm=14)
    volume.array[2:5, 5:10, 5:10] = 200  # bright, far, never reached
    z = largest_slice(truth)
    run = {
        "copy": lambda: copy_baseline(volume, z, truth[z] > 0),
        "registration": lambda: registration_baseline(volume, z, truth[z] > 0),
        "box2mask-chain": lambda: box2mask_chain(volume, z, truth[z] > 0, segmenter),
    }[method]
    mask = run()
    assert mask.dtype == np.uint8 and mask.shape == truth.shape
    assert dice(mask, truth) > min_dice
    (lo, hi), (true_lo, true_hi) = slice_extent(mask), slice_extent(truth)
    assert abs(lo - true_lo) <= end_tolerance and abs(hi - true_hi) <= end_tolerance
    assert mask[2:5].sum() == 0


def test_copy_stops_at_the_volume_edge():
    volume, truth = sphere_volume(shape=(12, 48, 48), spacing=(1.0, 1.0, 2.0), centre_index=(1, 24, 24), radius_mm=14)
    mask = copy_baseline(volume, 1, truth[1] > 0)
    assert slice_extent(mask)[0] == 0


# evaluation objects -----------------------------------------------------------------------------

def test_objects_prompt_on_the_largest_slice_with_tight_and_jittered_boxes():
    sphere, plate = sphere_objects(thin=True)
    p = sphere.prompts
    assert p.slice_index == largest_slice(sphere.truth)
    ys, xs = np.nonzero(sphere.truth[p.slice_index])
    assert p.box == (xs.min(), ys.min(), xs.max(), ys.max())
    c0, r0, c1, r1 = p.jittered_box
    assert c0 <= p.box[0] and r0 <= p.box[1] and c1 >= p.box[2] and r1 >= p.box[3]
    assert (c1 - c0 + 1) <= 1.25 * (p.box[2] - p.box[0] + 1) + 1
    assert np.array_equal(p.mask, sphere.truth[p.slice_index] > 0)
    assert sphere.headline and not plate.headline and plate.slices == 3
    assert sphere_objects()[0].prompts.jittered_box == p.jittered_box  # seeded


def test_manifest_names_datasets_and_keeps_evaluation_subjects_out_of_training(shared_data):
    data_dir = shared_data()
    train, held_out = manifest_entries(data_dir, "train"), manifest_entries(data_dir, "eval")
    assert train and held_out and all(e["dataset"] for e in train + held_out)
    assert {"brats", "cord", "spleen2", "deeplesion", "sunnybrook_lv", "ms_lesion"} <= set(eval_datasets(data_dir))

    def subject(entry):  # the manifest names subjects where several volumes share one folder
        if "subject" in entry:
            return f"{entry['dataset']}/{entry['subject']}"
        return str(Path(entry_files(entry)[0]).parent) if "image" in entry or "mgh" in entry else entry["npz"]

    assert not {subject(e) for e in held_out} & {subject(e) for e in train}
    assert not {e["image"] for e in held_out if "image" in e} & {e["image"] for e in train if "image" in e}


# harness ----------------------------------------------------------------------------------------

def test_extent_errors_are_signed_per_end():
    obj = sphere_objects()[0]
    lo, hi = obj.extent
    prediction = np.zeros_like(obj.truth)
    prediction[lo - 2 : hi - 3 + 1] = obj.truth[obj.prompts.slice_index]
    row = score(Run("copy", "default", obj.prompts), obj, prediction, 0.0)
    assert (row["over_lower"], row["over_upper"]) == (2, -3)
    assert (row["pred_first"], row["pred_last"]) == (lo - 2, hi - 3)


def test_harness_end_to_end_writes_every_output(segmenter, tmp_path, capsys):
    rows = run_evaluation(sphere_objects(thin=True), segmenter, tmp_path)
    assert len(rows) == 2 * len(METHODS)
    assert {r["method"] for r in rows} == set(METHODS)
    for r in rows:
        assert r["over_lower"] == r["true_first"] - r["pred_first"]
        assert r["over_upper"] == r["pred_last"] - r["true_last"]
    sphere_rows = [r for r in rows if r["headline"]]
    assert min(r["dice"] for r in sphere_rows) > 0.8
    assert all(abs(r["over_lower"]) <= 3 and abs(r["over_upper"]) <= 3 for r in sphere_rows)

    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and float(table[0]["box_ratio"]) > 0
    summary = (tmp_path / "summary.md").read_text()
    assert "### sphere: 1 object(s) (1 under 5 slices left out)" in summary
    assert all(f"| {m} | default | 1 |" in summary for m in METHODS)
    assert (tmp_path / "dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    progress = capsys.readouterr().err.splitlines()
    assert len(progress) == 2 and "thin: not in the means" in progress[1]


def test_robustness_settings_and_determinism(segmenter):
    obj = sphere_objects()[0]
    methods = ("propsam-mask", "copy")
    rows = evaluate_object(obj, segmenter, methods, robustness=True)
    assert len(rows) == len(methods) * (1 + len(SLICE_SHIFTS)) + len(THICKNESSES_MM)
    shifted = {r["setting"]: r["prompt_slice"] for r in rows if r["method"] == "copy"}
    assert shifted["slice+20%"] > shifted["slice+5%"] > shifted["default"] > shifted["slice-20%"]
    again = evaluate_object(obj, segmenter, methods, robustness=True)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(again)


def test_robustness_outputs_pool_mean_dice_per_shift_and_thickness(segmenter, tmp_path):
    rows = run_evaluation(sphere_objects(), segmenter, tmp_path, ("propsam-mask", "copy"), robustness=True)
    summary = (tmp_path / "summary.md").read_text()
    table = summary[summary.index("### Robustness"):]
    assert "| method | -20 % | -15 % | -10 % | -5 % | +0 % | +5 % | +10 % | +15 % | +20 % |" in table
    for method in ("propsam-mask", "copy"):
        expected = [r["dice"] for r in rows if r["method"] == method and r["setting"] in ("slice-20%", "slice+10%")]
        line = next(li for li in table.splitlines() if li.startswith(f"| {method} |")).split("|")[2:-1]
        assert [float(line[0]), float(line[6])] == pytest.approx(expected, abs=5e-4)
    thick = {r["thickness_mm"]: r["dice"] for r in rows if r["setting"].startswith("thickness")}
    assert "| 10 mm | 20 mm | 30 mm | 40 mm |" in table
    assert table.rstrip().splitlines()[-1] == "| " + " | ".join(f"{thick[t]:.3f}" for t in THICKNESSES_MM) + " |"
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# CLI --------------------------------------------------------------------------------------------

def test_cli_runs_on_a_phantom_with_a_model_bundle(random_model, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--out-dir", str(out), "--model", str(random_model.parent), "--device", "cpu",
                 "--datasets", "phantom", "--phantoms", "1", "--max-objects", "1", "--methods", "copy,propsam-mask"])
    text = capsys.readouterr()
    assert code == 0, text.err
    assert "### phantom" in text.out and "| propsam-mask | default |" in text.out
    assert sorted(p.name for p in out.iterdir()) == ["dice.png", "results.csv", "summary.md"]
    assert main(["evaluate", "--out-dir", str(out), "--datasets", "phantom", "--phantoms", "1", "--methods", "copy"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--datasets", "spleen2,nope"], "unknown dataset nope"),
    (["--methods", "copy,magic"], "unknown method magic"),
    (["--datasets", "spleen2", "--data-dir", "/does/not/exist"], "data folder /does/not/exist does not exist"),
    (["--datasets", "phantom"], "needs --phantoms"),
    (["--tta", "8x3"], "--tta expects"),
    (["--model", "lite", "--model", "lite"], "--model given twice"),
    (["--leak-limit", "0.5"], "--leak-limit must be 0 (off) or within (1, 100]"),
    (["--leak-limit", "2", "--leak-limit", "2"], "--leak-limit given twice"),
])
def test_cli_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "eval"
    assert main(["evaluate", "--out-dir", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# orientations, test-time averaging ----------------------------------------------------------------

def test_orientations_invert_turn_boxes_and_form_groups():
    from propsam.engine.tta import COUNTS, ORIENTATIONS, orientations

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 5))
    mask = np.zeros((7, 5), bool)
    mask[1:4, 2:5] = True
    names = set()
    for o in ORIENTATIONS:
        names.add(o.apply(x).tobytes())
        assert np.array_equal(o.invert(o.apply(x)), x)
        assert torch.equal(o.invert(o.apply(torch.from_numpy(x))), torch.from_numpy(x))
        assert np.array_equal(o.apply(torch.from_numpy(x)).numpy(), o.apply(x))
        r0, c0, r1, c1 = mask_bbox(o.apply(mask))
        assert o.box((2, 1, 4, 3), mask.shape) == (c0, r0, c1, r1)
    assert len(names) == 8  # eight different orientations
    probe = rng.normal(size=(6, 6))
    for n in COUNTS:  # every prefix is closed under composition: a group
        turned = {o.apply(probe).tobytes() for o in orientations(n)}
        assert {a.apply(b.apply(probe)).tobytes() for a in orientations(n) for b in orientations(n)} == turned


def test_averaging_over_all_orientations_makes_a_network_invariant():
    from propsam.engine.tta import ORIENTATIONS, mean_turned_back, stack_turned

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 5, padding=2))
    x = torch.rand(2, 1, 16, 16)

    def averaged(inp, n):
        with torch.no_grad():
            return mean_turned_back(net(stack_turned(inp, n)), n)

    for n, invariant in ((1, False), (8, True)):
        errors = [float((averaged(o.apply(x), n) - o.apply(averaged(x, n))).abs().max()) for o in ORIENTATIONS]
        assert (max(errors) < 1e-5) == invariant, (n, errors)


def test_box2mask_and_propmask_tta_are_deterministic_and_switchable(segmenter):
    from propsam.engine.prompts import BoxPrompt
    from propsam.engine.segmenter import SegmentOptions
    from propsam.engine.tta import OFF, TestTimeAugmentation, parse_tta
    from propsam.errors import InputError

    obj = sphere_objects()[0]
    p = obj.prompts
    full = SegmentOptions(tta=TestTimeAugmentation(8, 8))
    a = segmenter.segment(obj.volume, BoxPrompt(p.slice_index, p.box), full).mask
    b = segmenter.segment(obj.volume, BoxPrompt(p.slice_index, p.box), full).mask
    off = segmenter.segment(obj.volume, BoxPrompt(p.slice_index, p.box), SegmentOptions(tta=OFF)).mask
    assert np.array_equal(a, b) and dice(a, obj.truth) > 0.8 and dice(off, obj.truth) > 0.8
    assert parse_tta("8x2") == TestTimeAugmentation(8, 2) and parse_tta("off") == OFF
    with pytest.raises(InputError, match="--tta expects"):
        parse_tta("3x1")


def test_propmask_averaging_left_to_the_device_is_two_on_a_gpu_and_one_on_the_cpu(monkeypatch):
    """The default averages PropMask over 2 orientations on a GPU and 1 on the CPU; a set count
    holds everywhere. The engine passes the resolved count to the propagation (a GPU is only named
    here: the captured call is all that runs)."""
    from propsam.engine import segmenter as segmenter_module
    from propsam.engine.prompts import MaskPrompt
    from propsam.engine.segmenter import SegmentOptions
    from propsam.engine.tta import AUTO, TestTimeAugmentation, parse_tta, propmask_orientations, tta_name
    from propsam.errors import InputError

    default = TestTimeAugmentation()
    assert default.propmask == AUTO and parse_tta("8xauto") == default and tta_name(default) == "8xauto"
    assert [propmask_orientations(default, d) for d in ("cpu", "cuda", "cuda:1", "mps")] == [1, 2, 2, 2]
    assert [propmask_orientations(parse_tta("8x4"), d) for d in ("cpu", "cuda")] == [4, 4]
    with pytest.raises(InputError, match="--tta expects"):
        parse_tta("8x0")

    seen = []

    def captured(*args, orientations, **kwargs):
        seen.append(orientations)
        return np.zeros(args[2].shape, np.uint8), segmenter_module.PropagationStats()

    monkeypatch.setattr(segmenter_module, "propagate", captured)
    obj = sphere_objects()[0]
    prompt = MaskPrompt(obj.prompts.slice_index, obj.prompts.mask)
    for device in ("cpu", "cuda"):
        engine = Segmenter(named_config("lite"), {"box2mask": None, "propmask": None}, torch.device(device))
        engine.segment(obj.volume, prompt)
        engine.segment(obj.volume, prompt, SegmentOptions(tta=parse_tta("8x4")))
    assert seen == [1, 4, 2, 4]


def test_segment_cli_refuses_a_bad_tta_before_reading_anything(tmp_path, capsys):
    out = tmp_path / "m.nii.gz"
    assert main(["segment", "--image", str(tmp_path / "missing.nii.gz"), "--out", str(out), "--box", "1,1,5,5",
                 "--slice-index", "0", "--tta", "9x1"]) == 2
    err = capsys.readouterr().err
    assert "--tta expects" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_turned_objects_keep_prompts_on_the_turned_truth():
    from propsam.engine.tta import ORIENTATIONS
    from propsam.evaluation.objects import prompts_on
    from propsam.evaluation.orientations import turn_object

    obj = sphere_objects()[0]
    obj.truth[:, 20:26, 30:40] = 1  # break the sphere's symmetry
    for o in ORIENTATIONS:
        turned = turn_object(obj, o)
        assert np.array_equal(o.invert(turned.truth), obj.truth)
        assert turned.prompts.box == prompts_on(turned.truth, obj.prompts.slice_index, 0).box
        assert np.array_equal(turned.prompts.mask, turned.truth[obj.prompts.slice_index] > 0)
        sx, sy, sz = obj.volume.spacing
        assert turned.volume.spacing == ((sy, sx, sz) if o.transpose else (sx, sy, sz))


def test_orientation_mode_reports_spread_and_agreement(segmenter, tmp_path):
    from propsam.evaluation.orientations import spread_rows

    rows = run_evaluation(sphere_objects(), segmenter, tmp_path, ("propsam-mask",), orientations=True)
    assert len(rows) == 8 and len({r["setting"] for r in rows}) == 8
    spreads = spread_rows(labelled(rows))
    assert len(spreads) == 1 and spreads[0]["n"] == 8
    d = [r["dice"] for r in rows]
    assert spreads[0]["spread"] == pytest.approx(max(d) - min(d)) and 0.8 < spreads[0]["agreement"] <= 1.0
    assert "### In-plane orientations" in (tmp_path / "summary.md").read_text()


# report, models, other sources ------------------------------------------------------------------

def test_bootstrap_interval_and_size_classes():
    from propsam.evaluation.report import area_class, bootstrap_ci, size_class

    values = np.linspace(0.5, 0.9, 30)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi and (lo, hi) == bootstrap_ci(values)
    assert bootstrap_ci([0.7, 0.7]) == (0.7, 0.7)
    assert [size_class(n) for n in (3, 6, 7, 30, 31)] == ["<= 6", "<= 6", "7-30", "7-30", "> 30"]
    assert [area_class(n) for n in (1, 59, 60, 299, 300, 999, 1000, 10**6)] == [
        "< 60 px", "< 60 px", "60-299 px", "60-299 px", "300-999 px", "300-999 px", ">= 1000 px", ">= 1000 px"]


def test_any_list_of_objects_and_several_models_in_one_run(segmenter, tmp_path):
    from propsam.engine.tta import OFF
    from propsam.evaluation.harness import Model
    from propsam.evaluation.objects import make_object

    volume, truth = sphere_volume(shape=(30, 48, 48), spacing=(1.0, 1.0, 2.0), radius_mm=10)
    objects = [make_object("testset", "s1", "ball", volume, truth, "MR", "organ"),
               make_object("testset", "s2", "ball", volume, truth, "CT", "lesion")]
    models = [Model("a", segmenter), Model("b", segmenter, OFF)]
    rows = run_evaluation(objects, models, tmp_path, ("propsam-box", "copy"))
    assert sorted((r["model"], r["method"]) for r in rows if r["volume"] == "s1") == [
        ("-", "copy"), ("a", "propsam-box"), ("b", "propsam-box")]
    assert all(r["prompt_dice"] > 0.8 for r in rows if r["method"] == "propsam-box")
    summary = (tmp_path / "summary.md").read_text()
    report = summary[summary.index("### Report: 2 real object(s)"):]
    for text in ("| a/propsam-box | 2 |", "| b/propsam-box | 2 |", "| copy | 2 |", "CT (n=1) | MR (n=1)",
                 "<= 6 (n=0) | 7-30 (n=2)", "lesion (n=1) | organ (n=1)", "60-299 px (n=0) | 300-999 px (n=2)",
                 "faint 0.75-0.9 (n=0) | clear >= 0.9 (n=2)"):
        assert text in report, text  # the ball's prompt slice: ~314 pixels of 1 x 1 mm
    from propsam.evaluation.report import report_markdown

    before = [{k: v for k, v in r.items() if k not in ("prompt_area", "prompt_edge")} for r in labelled(rows)]  # results written before the columns
    assert "cross-section" in report and "cross-section" not in report_markdown(before)
    assert "outline visibility" in report and "outline visibility" not in report_markdown(before)
    with pytest.raises(ValueError, match="not on the volume's grid"):
        make_object("synthetic", "s3", "ball", volume, truth[1:])


def test_harness_reads_real_geometry_and_agrees_with_the_cli_voxel_for_voxel(shared_data, tmp_path):
    """The harness must feed the engine what `propsam segment` gets: the file's direction (the
    spleen's is not identity, which the old harness dropped) and the same default options."""
    from propsam.evaluation.harness import Model, Run, predict
    from propsam.evaluation.objects import entry_objects
    from propsam.io.volume import read_volume

    image = shared_data("msd-spleen2-crop", "sub-spleen2_ct.nii.gz")
    entry = next(e for e in manifest_entries(image.parents[1], "eval") if e["id"] == "spleen2")
    obj = next(entry_objects(entry, image.parents[1]))
    assert obj.volume.direction == read_volume(image).direction != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    harness = predict(Run("propsam-box", "default", obj.prompts), obj, Model("lite", Segmenter.load("lite", "cpu")))
    out = tmp_path / "cli.nii.gz"
    c0, r0, c1, r1 = obj.prompts.box
    assert main(["segment", "--image", str(image), "--box", f"{c0},{r0},{c1},{r1}", "--slice-index",
                 str(obj.prompts.slice_index), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    cli = read_volume(out).array
    assert cli.sum() > 0 and np.array_equal(cli, harness)


def test_cli_merges_results_files_into_one_report(segmenter, tmp_path, capsys):
    objects = sphere_objects()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_evaluation(objects, segmenter, tmp_path / "a", ("propsam-mask", "copy"), orientations=True)
    run_evaluation(objects, segmenter, tmp_path / "b", ("propsam-box",))
    out = tmp_path / "merged"
    assert main(["evaluate", "--out-dir", str(out), "--from-results", str(tmp_path / "a" / "results.csv"),
                 "--from-results", str(tmp_path / "b" / "results.csv")]) == 0
    summary = (out / "summary.md").read_text()
    for text in ("| propsam-box | default | 1 |", "| propsam-mask | default | 1 |", "### In-plane orientations",
                 "| propsam-mask | 1 |", "#### Prompt-slice 2D Dice per modality"):
        assert text in summary, text
    box_rows = [r for r in csv.DictReader(open(tmp_path / "b" / "results.csv")) if r["setting"] == "default"]
    per_modality = summary[summary.index("#### Prompt-slice 2D Dice per modality"):].splitlines()
    assert per_modality[2].startswith("| model / method | CT (n=1) |")  # box prompts only: the mask row is left out
    assert per_modality[4].startswith(f"| propsam-box | {float(box_rows[0]['prompt_dice']):.3f} [") and len(per_modality) >= 5
    a = (tmp_path / "a" / "summary.md").read_text()
    table = lambda text: text[text.index("### In-plane orientations"):]  # noqa: E731
    assert table(summary) == table(a)  # read back with the types it was written with
    assert not (out / "robustness.png").exists()


def test_merged_runs_of_one_model_under_two_tta_settings_stay_apart():
    rows = [{"model": "lite", "tta": "1x1", "method": "propsam-mask"}, {"model": "lite", "tta": "8x8", "method": "propsam-mask"},
            {"model": "-", "tta": "", "method": "copy"}]
    assert [r["label"] for r in labelled(rows)] == ["lite tta1x1/propsam-mask", "lite tta8x8/propsam-mask", "copy"]
    assert [r["label"] for r in labelled(rows[:1] + rows[2:])] == ["propsam-mask", "copy"]


def test_interval_over_subjects_resamples_whole_subjects():
    from propsam.evaluation.report import bootstrap_ci, subject_interval

    values = np.linspace(0.5, 0.9, 30)
    one_each = [f"s{i:02d}" for i in range(30)]
    assert bootstrap_ci(values, clusters=one_each) == bootstrap_ci(values)  # a subject per object: the same draws
    # one patient with 20 near-identical lesions, 4 other subjects with one object each
    values = np.r_[np.full(20, 0.9) + np.linspace(0, 0.01, 20), [0.3, 0.5, 0.6, 0.4]]
    subjects = ["p1"] * 20 + ["a", "b", "c", "d"]
    lo_obj, hi_obj = bootstrap_ci(values)
    lo_sub, hi_sub = bootstrap_ci(values, clusters=subjects)
    assert hi_sub - lo_sub > 2 * (hi_obj - lo_obj)  # 5 independent draws, not 24
    rows = [{"subject": s, "volume": "v"} for s in subjects]
    assert subject_interval(values, rows).endswith("(5)")


def test_paired_differences_compare_models_on_the_same_objects():
    from propsam.evaluation.report import paired_differences

    rows = [{"model": m, "method": "propsam-mask", "dataset": "d", "volume": "v", "object": f"o{i}", "dice": d}
            for i in range(20) for m, d in (("new", 0.8 + 0.001 * i), ("old", 0.7 + 0.001 * i))]
    rows.append({"model": "new", "method": "propsam-mask", "dataset": "d", "volume": "v", "object": "only-new", "dice": 0.0})
    table = "\n".join(paired_differences(rows))
    assert "| propsam-mask | new − old | 20 | 0.100 [0.100, 0.100] |" in table  # unpaired objects left out
    assert paired_differences([r for r in rows if r["model"] == "new"]) == []


def test_the_evaluation_runs_each_model_under_its_leak_limit(segmenter, tmp_path):
    """`--leak-limit` reaches the engine through the harness: with the limit the disk stops where a
    same-intensity slab begins; without it the result runs on into the slab. The rows say which."""
    from test_stop_rule import _disk_into_slab

    from propsam.evaluation.cli import load_models
    from propsam.evaluation.harness import Model, predict

    volume, disk = _disk_into_slab()
    source = SourceVolume("disk0001_t1", volume, (1.0, 1.0, 1.0), "CT", 1.0, objects_from_labels(disk.astype(np.uint8), "each"), "exact")
    obj = next(objects_of(source, "disk"))
    run = Run("propsam-mask", "default", obj.prompts, 2.0)
    limited = predict(run, obj, Model("t", segmenter, leak_limit=2.0))
    unlimited = predict(run, obj, Model("t", segmenter, leak_limit=0.0))
    assert not limited[16:].any() and unlimited[16:].sum() > 2 * disk[16:].sum()

    class Args:
        device, threads, leak_limit = "cpu", 1, [0.0, 2.0]

    import propsam.engine.segmenter as segmenter_module

    loaded = load_models(Args, ["lite"], [segmenter_module.SegmentOptions().tta])
    assert [(m.label, m.leak_limit) for m in loaded] == [("lite leak off", 0.0), ("lite leak 2x", 2.0)]
