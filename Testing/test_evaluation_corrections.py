"""The simulated user of `propsam evaluate --corrections`: its choice of correction, the
hand-editing comparison, and the table."""

import numpy as np
import pytest
import torch

from engine_doubles import ThresholdBox2Mask, ThresholdPropMask
from phantom_volumes import sphere_volume
from propsam.cli import main
from propsam.config import named_config
from propsam.engine.segmenter import Segmenter
from propsam.evaluation.corrections import (
    hand_edit, hand_slices_to_reach, markdown_table, next_correction, run_corrections, simulate, size_class,
)
from propsam.evaluation.metrics import dice
from propsam.evaluation.objects import objects_of
from propsam.training.sources import SourceVolume, objects_from_labels


@pytest.fixture
def truth():
    mask = np.zeros((30, 20, 20), np.uint8)
    mask[8:22, 5:15, 5:15] = 1
    return mask


def test_a_run_past_the_end_gets_a_stop_at_the_true_end(truth):
    prediction = truth.copy()
    prediction[22:27, 5:15, 5:15] = 1
    c = next_correction(prediction, truth, 15)
    assert (c.kind, c.slice_index, c.direction) == ("stop", 21, None)


def test_a_short_run_gets_the_true_mask_on_the_first_missing_slice(truth):
    prediction = truth.copy()
    prediction[8:12] = 0
    c = next_correction(prediction, truth, 15)
    assert (c.kind, c.slice_index) == ("mask", 11) and np.array_equal(c.mask, truth[11] > 0)


def test_otherwise_the_true_mask_on_the_worst_slice(truth):
    prediction = truth.copy()
    prediction[17, 5:15, 5:10] = 0
    prediction[12, 5:7, 5:15] = 0
    c = next_correction(prediction, truth, 15)
    assert (c.kind, c.slice_index) == ("mask", 17)
    assert next_correction(truth, truth, 15) is None


def test_a_stop_on_the_prompt_slice_carries_its_direction(truth):
    prediction = truth.copy()
    prediction[:8, 5:15, 5:15] = 1
    c = next_correction(prediction, truth, 8)
    assert (c.kind, c.slice_index, c.direction) == ("stop", 8, -1)


def test_hand_editing_fixes_the_worst_slices_first(truth):
    prediction = np.zeros_like(truth)
    prediction[10:20, 5:15, 5:15] = 1
    dices = hand_edit(prediction, truth, 4)
    assert dices == sorted(dices) and dices[-1] == 1.0 and dices[0] == dice(prediction, truth)
    assert hand_slices_to_reach(prediction, truth, 1.0) == 4 and hand_slices_to_reach(prediction, truth, 0.0) == 0


def neighbour_object():
    """A sphere with a bright neighbour touching its upper pole (not part of the object): the
    threshold double runs on into it, as the model runs into touching neighbours."""
    volume, truth = sphere_volume(shape=(40, 48, 48), spacing=(1.0, 1.0, 1.0), radius_mm=10)
    last = int(np.flatnonzero(truth.reshape(40, -1).any(1))[-1])
    volume.array[last + 1 : last + 12, 19:29, 19:29] = 200  # a column on top of the sphere
    source = SourceVolume("neighbour", volume.array, (1.0, 1.0, 1.0), "CT", 1.0, objects_from_labels(truth, "each"), "exact")
    return next(objects_of(source, "sphere"))


def test_one_stop_fixes_what_hand_editing_needs_many_slices_for():
    segmenter = Segmenter(named_config("lite"), {"box2mask": ThresholdBox2Mask(), "propmask": ThresholdPropMask()},
                          torch.device("cpu"))
    obj = neighbour_object()
    row = simulate(obj, segmenter, 3, "CT")
    assert row["propsam_dice_0"] < 0.9 and row["corrections"].startswith("stop")
    assert row["propsam_dice_1"] > 0.93 and row["propsam_dice_1"] > row["hand_dice_1"] + 0.05
    assert row["propsam_dice_3"] >= row["propsam_dice_1"]  # later corrections keep the stop
    assert row["hand_slices_to_match"] >= 8
    assert row["size_class"] == size_class(obj.slices) and row["seconds_per_correction"] > 0
    table = markdown_table([row], 3)
    assert f"| all objects | 1 | {row['propsam_dice_0']:.3f} | {row['propsam_dice_1']:.3f} |" in table
    assert "| modality: CT | 1 |" in table


def test_run_corrections_writes_csv_and_table(tmp_path):
    segmenter = Segmenter(named_config("lite"), {"box2mask": ThresholdBox2Mask(), "propmask": ThresholdPropMask()},
                          torch.device("cpu"))
    rows = run_corrections([neighbour_object()], segmenter, tmp_path, 2, {"sphere": "CT"})
    assert len(rows) == 1 and (tmp_path / "corrections.csv").read_text().startswith("dataset,modality")
    assert "PropSAM k=2" in (tmp_path / "corrections.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--corrections", "0"], "--corrections must be >= 1"),
    (["--corrections", "2", "--methods", "copy"], "takes no --methods"),
])
def test_cli_bad_corrections_flag_is_refused(tmp_path, capsys, args, message):
    out = tmp_path / "eval"
    assert main(["evaluate", "--out-dir", str(out), "--datasets", "phantom", "--phantoms", "1", *args]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_cli_prints_the_table_on_a_phantom(random_model, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--out-dir", str(out), "--model", str(random_model), "--device", "cpu",
                 "--datasets", "phantom", "--phantoms", "1", "--max-objects", "1", "--corrections", "1"])
    text = capsys.readouterr()
    assert code == 0, text.err
    assert "| objects | n | PropSAM k=0 | PropSAM k=1 | hand k=1 |" in text.out
    assert sorted(p.name for p in out.iterdir()) == ["corrections.csv", "corrections.md"]
