"""A background segmentation: the engine runs in a Python thread, the caller polls its events.

The thread gets plain arrays only and never sees MRML; whoever polls (Slicer: a QTimer on the
main thread) applies the result. Events, in order: ("status", text)*, ("progress", done, total)*,
then exactly one of ("finished", result), ("failed", error), ("cancelled", error).
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from typing import Callable

from propsam.engine.control import CancelToken
from propsam.errors import Cancelled, PropSAMError

log = logging.getLogger("PropSAM")

RUNNING, FINISHED, FAILED, CANCELLED = "running", "finished", "failed", "cancelled"


class SegmentationJob:
    """work(report_status, progress, cancel) -> result, run once in its own thread."""

    def __init__(self, work: Callable, description: str = "segmentation"):
        self._work = work
        self.description = description
        self.cancel_token = CancelToken()
        self.events: queue.Queue = queue.Queue()
        self.state = RUNNING
        self.result = None
        self.error: BaseException | None = None
        self.progress = (0, 0)
        self.pending = None  # whatever the caller needs to apply the result later
        self._thread = threading.Thread(target=self._run, name=f"PropSAM {description}", daemon=True)

    def start(self) -> "SegmentationJob":
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the engine to stop at its next round; the result, if any, is then never applied."""
        self.cancel_token.cancel()

    @property
    def cancelled(self) -> bool:
        return self.cancel_token.cancelled

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive() and self.state != RUNNING

    def poll(self) -> list[tuple]:
        """All events since the last poll (never blocks)."""
        events = []
        while True:
            try:
                events.append(self.events.get_nowait())
            except queue.Empty:
                return events

    def _status(self, text: str) -> None:
        self.events.put(("status", text))

    def _progress(self, done: int, total: int) -> None:
        self.progress = (done, total)
        self.events.put(("progress", done, total))

    def _run(self) -> None:
        try:
            result = self._work(self._status, self._progress, self.cancel_token)
            if self.cancel_token.cancelled:
                raise Cancelled("segmentation cancelled; nothing was changed")
        except Cancelled as exc:
            self.error, self.state = exc, CANCELLED
            self.events.put(("cancelled", exc))
        except PropSAMError as exc:
            log.warning("PropSAM %s failed: %s", self.description, exc)
            self.error, self.state = exc, FAILED
            self.events.put(("failed", exc))
        except Exception as exc:  # noqa: BLE001 - a worker must report, never die silently
            log.error("PropSAM %s failed unexpectedly:\n%s", self.description, traceback.format_exc())
            self.error, self.state = exc, FAILED
            self.events.put(("failed", exc))
        else:
            self.result, self.state = result, FINISHED
            self.events.put(("finished", result))
