"""Background segmentation in Slicer's own process: one long-lived engine thread, polled jobs.

Why the waiting is done this way: in Slicer the main thread holds the Python GIL while Qt idles
(neither Slicer nor PythonQt releases it), so a Python worker thread only runs while the main
thread itself runs Python that lets the GIL go. A QTimer that merely polls leaves the engine
starved (measured: 18x slower). So the panel's timer fires every POLL_INTERVAL_MS and each tick
*waits on the job with the GIL released* for up to WAIT_SLICE_S (`SegmentationJob.service`), then
returns to Qt, which services GUI events between ticks (every ~WAIT_SLICE_S). The engine thus
gets the interpreter nearly all the time while the GUI stays responsive.

One engine thread serves all jobs and lives as long as the process: the networks stay loaded and
per-thread state (cuDNN plan caches, torch thread pools) stays warm between runs. It gets plain
arrays only and never sees MRML. Events of a job, in order: ("status", text)*,
("progress", done, total)*, then exactly one of ("finished", result), ("failed", error),
("cancelled", error).
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from typing import Callable

from propsam.engine.control import CancelToken
from propsam.errors import Cancelled, PropSAMError, ResourceError

log = logging.getLogger("PropSAM")

RUNNING, FINISHED, FAILED, CANCELLED = "running", "finished", "failed", "cancelled"
POLL_INTERVAL_MS = 2  # the panel's QTimer interval while a job runs: Qt idles (GIL held) about this long
WAIT_SLICE_S = 0.03  # each tick waits this long at most with the GIL released; GUI events come in between


class EngineThread:
    """A daemon thread that runs submitted jobs one after another, for the life of the process."""

    def __init__(self, name: str = "PropSAM engine"):
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job: "SegmentationJob") -> None:
        self._jobs.put(job)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            job._run()  # never raises: a job reports its own failure


_engine_thread: EngineThread | None = None
_engine_lock = threading.Lock()


def engine_thread() -> EngineThread:
    """The process-wide engine thread (started on first use, restarted only if it ever died)."""
    global _engine_thread
    with _engine_lock:
        if _engine_thread is None or not _engine_thread.is_alive():
            _engine_thread = EngineThread()
        return _engine_thread


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError subclasses RuntimeError; CPU allocators raise RuntimeError or MemoryError
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def failure_message(exc: BaseException, description: str) -> PropSAMError:
    """The error the panel shows for an engine failure: one clear sentence, never a traceback."""
    if isinstance(exc, PropSAMError):
        return exc
    if is_out_of_memory(exc):
        return ResourceError(
            f"PropSAM ran out of memory during the {description}; nothing was changed. Close other programs or "
            "large volumes, use a smaller propagation thickness, or choose Device: cpu if the GPU is full"
        )
    return PropSAMError(
        f"the {description} failed unexpectedly ({type(exc).__name__}: {exc}); nothing was changed. "
        "The Python console / log has the details"
    )


def release_gpu_cache() -> None:
    """After an out-of-memory error, hand cached GPU blocks back so Slicer's renderer keeps working."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort only
        pass


class SegmentationJob:
    """work(report_status, progress, cancel) -> result, run once on the engine thread."""

    def __init__(self, work: Callable, description: str = "segmentation", engine: EngineThread | None = None):
        self._work = work
        self.description = description
        self.cancel_token = CancelToken()
        self.events: queue.Queue = queue.Queue()
        self.state = RUNNING
        self.result = None
        self.error: BaseException | None = None
        self.progress = (0, 0)
        self.pending = None  # whatever the caller needs to apply the result later
        self._engine = engine
        self._finished = threading.Event()  # the job has its outcome (for a cancel: at once)
        self._engine_done = threading.Event()  # the engine thread has left the job's work
        self._end_lock = threading.Lock()

    def start(self) -> "SegmentationJob":
        (self._engine or engine_thread()).submit(self)
        return self

    def cancel(self) -> None:
        """Cancel now: the job ends at once as cancelled (the panel is free, nothing will be written)
        and the engine stops at its next check (between propagation rounds), dropping its work."""
        self.cancel_token.cancel()
        self._end(CANCELLED, error=Cancelled("segmentation cancelled; nothing was changed"))

    def wait_engine(self, timeout: float | None = None) -> bool:
        """Block until the engine thread has stopped working on this job (True if it has)."""
        return self._engine_done.wait(timeout)

    @property
    def cancelled(self) -> bool:
        return self.cancel_token.cancelled

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (or `timeout` s pass) with the GIL released; True if it ended."""
        return self._finished.wait(timeout)

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def poll(self) -> list[tuple]:
        """All events since the last poll (never blocks)."""
        events = []
        while True:
            try:
                events.append(self.events.get_nowait())
            except queue.Empty:
                return events

    def service(self, slice_s: float = WAIT_SLICE_S) -> list[tuple]:
        """One timer tick on the main thread: give the engine up to `slice_s` seconds of the interpreter
        (the main thread sleeps with the GIL released), then return the events since the last tick."""
        self._finished.wait(slice_s)
        return self.poll()

    def _status(self, text: str) -> None:
        if not self._finished.is_set():  # nothing follows a job's outcome
            self.events.put(("status", text))

    def _progress(self, done: int, total: int) -> None:
        self.progress = (done, total)
        if not self._finished.is_set():
            self.events.put(("progress", done, total))

    def _run(self) -> None:
        try:
            self._run_work()
        finally:
            self._engine_done.set()

    def _run_work(self) -> None:
        try:
            if self.cancel_token.cancelled:  # cancelled while queued: do not even start
                raise Cancelled("segmentation cancelled; nothing was changed")
            result = self._work(self._status, self._progress, self.cancel_token)
            if self.cancel_token.cancelled:
                raise Cancelled("segmentation cancelled; nothing was changed")
        except Cancelled as exc:
            self._end(CANCELLED, error=exc)
        except PropSAMError as exc:
            log.warning("PropSAM %s failed: %s", self.description, exc)
            self._end(FAILED, error=exc)
        except BaseException as exc:  # noqa: BLE001 - the engine thread must report and live on
            log.error("PropSAM %s failed:\n%s", self.description, traceback.format_exc())
            if is_out_of_memory(exc):
                release_gpu_cache()
            self._end(FAILED, error=failure_message(exc, self.description))
        else:
            self._end(FINISHED, result=result)

    def _end(self, state: str, result=None, error: BaseException | None = None) -> None:
        with self._end_lock:  # the first outcome wins: a cancel, or the engine's own end
            if self._finished.is_set():
                return
            self.result, self.error, self.state = result, error, state
            self.events.put((state, result if state == FINISHED else error))
            self._finished.set()
