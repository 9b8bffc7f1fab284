"""Corrections in the Slicer module's logic, headless on real MRML (PyPI slicer-core).

The engine is the real one with threshold doubles for the networks, so re-propagation from a
correct slice must give back the phantom's true shape beyond it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("slicer.util", reason="slicer-core (PyPI) provides the headless MRML classes")
import slicer  # noqa: E402

from engine_doubles import ThresholdBox2Mask, ThresholdPropMask  # noqa: E402
from test_slicer_logic import (  # noqa: E402,F401  (scene is a fixture)
    add_segment, draw_box, load_volume, on_grid, rotated_to_volume, scene, slice_view, write_image,
)
from PropSAMSlicerLib import PropSAMLogic, SegmentRequest  # noqa: E402
from PropSAMSlicerLib.corrections import CorrectionSession  # noqa: E402
from PropSAMSlicerLib.segments import segment_array  # noqa: E402
from propsam.config import named_config  # noqa: E402
from propsam.engine.corrections import USER_STOP  # noqa: E402
from propsam.engine.prompts import MaskPrompt  # noqa: E402
from propsam.engine.segmenter import Segmenter  # noqa: E402
from propsam.errors import Cancelled, InputError  # noqa: E402
from propsam.evaluation.metrics import dice  # noqa: E402

SHAPE, CENTRE, RADII, PROMPT = (40, 40, 44), (20, 20, 22), (14, 12, 14), 20


@pytest.fixture
def case(scene, tmp_path):
    """A run on an ellipsoid, into a segmentation that also holds a hand-painted 'other' segment."""
    rng = np.random.default_rng(0)
    grid = np.ogrid[tuple(slice(0, s) for s in SHAPE)]
    truth = (sum(((g - c) / r) ** 2 for g, c, r in zip(grid, CENTRE, RADII)) <= 1).astype(np.uint8)
    image = (rng.normal(0, 20, SHAPE) + 300.0 * truth).astype(np.int16)
    direction = [[-1, 0, 0], [0, 1, 0], [0, 0, -1]]  # x and z reversed: the engine flips to canonical
    volume_node = load_volume(scene, write_image(tmp_path / "ellipsoid.nrrd", image, (0.9, 0.9, 1.5), direction))
    other_mask = np.zeros(SHAPE, np.uint8)
    other_mask[10:30, 15:25, 2:30] = 1  # overlaps the object
    segmentation_node, other = add_segment(scene, volume_node, other_mask, "other")
    engine = Segmenter(named_config("lite"), {"box2mask": ThresholdBox2Mask(), "propmask": ThresholdPropMask()},
                       torch.device("cpu"))
    logic = PropSAMLogic(scene, load_segmenter=lambda model, device: engine)
    job = logic.start(SegmentRequest(volume_node, MaskPrompt(PROMPT, truth[PROMPT] > 0), segmentation_node))
    assert job.wait(60)
    run = logic.apply(job)
    session = CorrectionSession(logic, job, run)
    return session, truth, other, other_mask


def target(session):
    return segment_array(session.segmentation_node, session.segment_id, session.volume_node)


def other_array(session, other):
    return segment_array(session.segmentation_node, other, session.volume_node)


def paint(session, mask):
    """The user edits the segment (as the Segment Editor would: Slicer's own segmentation logic)."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(on_grid(session.volume_node, mask), session.segmentation_node,
                                            session.segment_id, logic.MODE_REPLACE)


def test_stop_is_one_undo_step_and_never_touches_other_segments(case):
    session, truth, other, other_mask = case
    run_mask, steps = target(session), len(session.core.undo_stack)
    assert run_mask[:, :, :].any() and run_mask[30:].any()
    result = session.correct(session.stop_here(29))
    written = target(session)
    assert not written[30:].any() and np.array_equal(written[:30], run_mask[:30])
    assert np.array_equal(result.mask, written) and result.stats.stop_reasons[1] == USER_STOP
    np.testing.assert_array_equal(other_array(session, other), other_mask)
    assert len(session.core.undo_stack) == steps + 1 and len(session.corrections) == 1

    session.core.undo()  # the module's Undo button
    np.testing.assert_array_equal(target(session), run_mask)
    np.testing.assert_array_equal(other_array(session, other), other_mask)
    assert session.corrections == [] and np.array_equal(session.result.mask, run_mask)


def test_repropagate_from_an_edited_slice_keeps_the_users_other_edits(case):
    session, truth, other, other_mask = case
    k = 27
    edited = target(session)
    edited[k + 1:] = 0
    edited[k + 1:, 2:5, 2:5] = 1  # wrong beyond k
    edited[k] = truth[k]  # the user fixed slice k ...
    edited[23, 30:33, 35:38] = 1  # ... and painted something on slice 23 too
    paint(session, edited)
    session.correct(session.edited_slice(k))
    written = target(session)
    np.testing.assert_array_equal(written[: k + 1], edited[: k + 1])
    assert dice(written[k + 1:], truth[k + 1:]) > 0.9 and not written[k + 1:, 2:5, 2:5].any()
    np.testing.assert_array_equal(other_array(session, other), other_mask)


def test_repropagate_from_a_box_drawn_on_a_slice(case, scene):
    session, truth, other, other_mask = case
    k = 12
    wrong = target(session)
    wrong[:k + 1] = 0
    paint(session, wrong)
    view = slice_view(scene, rotated_to_volume(session.volume_node, 0))
    ys, xs = np.nonzero(truth[k])
    correction = session.boxed_slice(draw_box(scene, session.volume_node, 0, k, (xs.min(), ys.min(), xs.max(), ys.max())), view)
    assert (correction.kind, correction.slice_index, correction.axis) == ("box", k, 0)
    session.correct(correction)
    written = target(session)
    assert dice(written[: k + 1], truth[: k + 1]) > 0.85
    np.testing.assert_array_equal(written[k + 1:], wrong[k + 1:])
    np.testing.assert_array_equal(other_array(session, other), other_mask)


def test_continue_then_undo_twice_steps_back_through_both(case):
    session, truth, other, other_mask = case
    run_mask = target(session)
    session.correct(session.stop_here(24))
    stopped = target(session)
    session.correct(session.continue_past(24))
    assert target(session)[25:].any() and len(session.corrections) == 2
    session.core.undo()
    np.testing.assert_array_equal(target(session), stopped)
    assert [c.kind for c in session.corrections] == ["stop"]
    session.core.undo()
    np.testing.assert_array_equal(target(session), run_mask)
    np.testing.assert_array_equal(other_array(session, other), other_mask)


def test_an_edit_during_the_correction_or_a_cancel_changes_nothing(case):
    session, truth, other, other_mask = case
    steps = len(session.core.undo_stack)
    job = session.start(session.stop_here(25))
    assert job.wait(60)
    edited = target(session)
    edited[5, 1:3, 1:3] = 1
    paint(session, edited)
    with pytest.raises(InputError, match="edited while the correction ran"):
        session.apply(job)
    np.testing.assert_array_equal(target(session), edited)
    job = session.start(session.stop_here(25))
    job.cancel()
    job.wait(60)
    with pytest.raises(Cancelled):
        session.apply(job)
    np.testing.assert_array_equal(target(session), edited)
    assert len(session.core.undo_stack) == steps and session.corrections == []


def test_bad_corrections_are_refused_before_anything_runs(case):
    session, truth, other, other_mask = case
    with pytest.raises(InputError, match="needs a direction"):
        session.start(session.stop_here(PROMPT))
    with pytest.raises(InputError, match="outside"):
        session.start(session.stop_here(99))
    with pytest.raises(InputError, match="empty"):
        session.start(session.edited_slice(39))  # nothing painted there
    assert session.job is None


def test_confidence_and_views(case, scene):
    session, truth, other, other_mask = case
    confidence = session.confidence()
    filled = np.flatnonzero(target(session).reshape(SHAPE[0], -1).any(1))
    assert np.array_equal(np.flatnonzero(confidence.in_result), filled)
    assert confidence.score[PROMPT] == 1.0 and np.all(confidence.score[filled] <= 1.0)
    assert all(0 <= k < SHAPE[0] for k in confidence.suspects())
    axial = slice_view(scene, rotated_to_volume(session.volume_node, 0))
    for k in (3, 17, 31):
        session.jump_to_slice(axial, k)
        assert session.slice_in_view(axial) == k
    sagittal = slice_view(scene, rotated_to_volume(session.volume_node, 2), name="Yellow")
    with pytest.raises(InputError, match="propagated along z"):
        session.slice_in_view(sagittal)


def test_panel_compiles_and_the_module_widget_hooks_it(tmp_path):
    """The Qt panel cannot run headless; it must compile, and the widget must build and attach it."""
    import ast
    import py_compile

    from conftest import REPO

    panel = REPO / "PropSAMSlicer" / "PropSAMSlicerLib" / "correction_panel.py"
    py_compile.compile(str(panel), cfile=str(tmp_path / "p.pyc"), doraise=True)
    tree = ast.parse((REPO / "PropSAMSlicer" / "PropSAMSlicer.py").read_text())
    calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
             for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert {"build_correction_panel", "attach"} <= calls
