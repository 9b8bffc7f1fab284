"""The Slicer module's engine runs at full speed inside Slicer's own process, as Slicer runs it.

Slicer's main thread keeps the GIL while Qt idles, so these tests drive the module's job the way
the panel's QTimer does, inside an emulated event loop that idles *holding* the GIL
(slicer_emulation.py). A real run with the shipped lite model on a phantom is compared with the
same run when nothing holds the GIL (standalone). Figures for an 80-slice object:
benchmarks/bench_slicer_in_process.py.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import REPO

pytest.importorskip("slicer.util", reason="slicer-core (PyPI) provides the headless MRML classes")

from slicer_emulation import EmulatedEventLoop  # noqa: E402
from test_slicer_logic import fake_logic, load_volume, phantom, scene, scene_state, write_image  # noqa: E402,F401

from PropSAMSlicerLib import POLL_INTERVAL_MS, WAIT_SLICE_S, PropSAMLogic, SegmentRequest  # noqa: E402
from PropSAMSlicerLib.worker import engine_thread  # noqa: E402
from propsam.engine.prompts import BoxPrompt  # noqa: E402
from propsam.errors import Cancelled, PropSAMError, ResourceError  # noqa: E402
from propsam.weights import MANIFEST, SHIPPED_MODELS_DIR  # noqa: E402

SLOWDOWN_LIMIT = 1.3  # run time in the emulated Slicer / standalone
GUI_GAP_LIMIT_S = 0.1  # Qt must get control at least this often (95% of gaps; the rest: see below)
# On an oversubscribed machine the OS alone can keep a process off the CPU for longer than 100 ms,
# whatever the process does; the longest gap is held to this looser bound (measured max: benchmark).
GUI_GAP_OUTLIER_S = 0.25
MAX_PAIRS = 4
CANCEL_LIMIT_S = 1.0


def shipped_lite():
    if not (SHIPPED_MODELS_DIR / "lite" / MANIFEST).is_file():
        pytest.skip("the shipped lite model is missing (PropSAMSlicer/Resources/Models/lite)")
    return "lite"


@pytest.fixture
def phantom_case(scene, tmp_path):
    """A 20-slice ellipsoid (2 mm slices) in a 28 x 96 x 96 CT-like volume, and its box on the middle slice
    (small so the test stays quick on CI's 2 cores; the 80-slice figures come from the benchmark)."""
    image = phantom((28, 96, 96), (14, 48, 48), (10, 26, 22), seed=4)
    path = write_image(tmp_path / "phantom.nrrd", image, (1.0, 1.0, 2.0), np.eye(3))
    volume = load_volume(scene, path)
    return volume, BoxPrompt(14, (24, 20, 72, 76), 0)


def run_in_emulated_slicer(job, on_events=None) -> tuple[float, EmulatedEventLoop]:
    """What the panel does: a QTimer every POLL_INTERVAL_MS whose slot services the job."""
    loop = EmulatedEventLoop(interval_ms=POLL_INTERVAL_MS)

    def tick():
        events = job.service()
        if on_events is not None:
            on_events(events)

    return loop.run(tick, lambda: job.done, timeout_s=300), loop


def run_standalone(job) -> float:
    start = time.monotonic()
    assert job.wait(300)
    return time.monotonic() - start


def test_run_in_emulated_slicer_is_as_fast_as_standalone_and_gui_stays_serviced(scene, phantom_case):
    volume, prompt = phantom_case
    logic = PropSAMLogic(scene)
    request = SegmentRequest(volume, prompt, model=shipped_lite(), device="cpu")
    warm_up = logic.start(request)  # loads the model in the engine thread, GUI serviced meanwhile
    _, loop = run_in_emulated_slicer(warm_up)
    assert warm_up.state == "finished", warm_up.error
    standalone, emulated, gaps = [], [], []
    for pair in range(MAX_PAIRS):  # interleaved; best of each, since CI shares its cores with other jobs
        standalone.append(run_standalone(logic.start(request)))
        job = logic.start(request)
        seconds, loop = run_in_emulated_slicer(job)
        emulated.append(seconds)
        gaps.extend(np.diff(loop.turns))
        assert job.state == "finished", job.error
        if pair >= 1 and min(emulated) / min(standalone) <= SLOWDOWN_LIMIT:
            break
    result = logic.apply(job)
    assert result.mask[prompt.slice_index].any() and result.mask.sum() > 1000
    ratio = min(emulated) / min(standalone)
    p95, longest = np.percentile(gaps, 95), max(gaps)
    print(f"standalone {min(standalone):.2f} s, emulated Slicer {min(emulated):.2f} s ({ratio:.2f}x); "
          f"GUI serviced every {np.median(gaps) * 1000:.0f} ms (median), {p95 * 1000:.0f} ms (95%), "
          f"{longest * 1000:.0f} ms (longest)")
    assert ratio <= SLOWDOWN_LIMIT, (standalone, emulated)
    assert p95 <= GUI_GAP_LIMIT_S and longest <= GUI_GAP_OUTLIER_S, (p95, longest)


def test_cancel_in_emulated_slicer_is_quick_and_leaves_scene_unchanged(scene, phantom_case):
    volume, prompt = phantom_case
    logic = PropSAMLogic(scene)
    request = SegmentRequest(volume, prompt, model=shipped_lite(), device="cpu", thickness_mm=8)  # several rounds
    assert logic.segment(request).mask.any()  # warm: the cancel below lands mid-propagation
    logic.undo()
    before = scene_state(scene)
    job = logic.start(request)
    asked = {}

    def cancel_after_first_round(events):
        if "at" not in asked and any(e[0] == "progress" for e in events):
            job.cancel()
            asked["at"] = time.monotonic()

    run_in_emulated_slicer(job, cancel_after_first_round)
    latency = time.monotonic() - asked["at"]
    assert job.wait_engine(120)
    engine_latency = time.monotonic() - asked["at"]
    print(f"cancel: panel free after {latency * 1000:.0f} ms, engine stopped after {engine_latency * 1000:.0f} ms")
    assert job.state == "cancelled" and latency <= CANCEL_LIMIT_S
    assert job.progress[0] < job.progress[1]  # the engine stopped before the end
    with pytest.raises(Cancelled, match="nothing was changed"):
        logic.apply(job)
    assert scene_state(scene) == before and not logic.can_undo


class Failing:
    def __init__(self, exc):
        self.exc = exc

    def segment(self, *args, **kwargs):
        raise self.exc


@pytest.mark.parametrize("exc, message", [
    (MemoryError(), "ran out of memory.*nothing was changed"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "ran out of memory.*Device: cpu"),
    (ValueError("boom"), "failed unexpectedly \\(ValueError: boom\\); nothing was changed"),
])
def test_engine_failure_gives_clear_message_leaves_scene_and_engine_thread_intact(scene, phantom_case, exc, message):
    volume, prompt = phantom_case
    logic = PropSAMLogic(scene, load_segmenter=lambda model, device: Failing(exc))
    before = scene_state(scene)
    job = logic.start(SegmentRequest(volume, prompt))
    events = []
    run_in_emulated_slicer(job, events.extend)
    assert job.state == "failed" and events[-1][0] == "failed"
    assert isinstance(job.error, PropSAMError) and "Traceback" not in str(job.error)
    with pytest.raises(PropSAMError, match=message) as raised:
        logic.apply(job)
    if isinstance(exc, (MemoryError, RuntimeError)):
        assert isinstance(raised.value, ResourceError)
    assert scene_state(scene) == before and not logic.can_undo
    # the engine thread survives and serves the next run
    good, _ = fake_logic(scene)
    assert good.segment(SegmentRequest(volume, prompt)).mask.any()


def test_one_long_lived_engine_thread_runs_every_job_and_keeps_the_model(scene, phantom_case):
    volume, prompt = phantom_case
    threads, loads = [], []

    class Recorder:
        def segment(self, volume, prompt, *args, **kwargs):
            threads.append(threading.get_ident())
            return engine.segment(volume, prompt)

    def load(model, device):
        loads.append((model, device))
        return Recorder()

    _, engine = fake_logic(scene)
    for _ in range(3):  # new logic objects too, as after the panel is reloaded
        logic = PropSAMLogic(scene, load_segmenter=load)
        logic.segment(SegmentRequest(volume, prompt))
    assert len(set(threads)) == 1 and threads[0] == engine_thread().ident != threading.get_ident()
    assert engine_thread().is_alive()


def test_wait_slice_leaves_room_for_the_gui():
    # each tick sleeps with the GIL released for at most WAIT_SLICE_S, then Qt gets control
    assert WAIT_SLICE_S + POLL_INTERVAL_MS / 1000 <= GUI_GAP_LIMIT_S / 2
    assert (REPO / "Testing" / "slicer_emulation.py").is_file()
