"""How 3D Slicer's main thread treats a background Python thread, emulated for tests and benchmarks.

In Slicer, PythonQt keeps the GIL on the main thread while Qt's event loop idles; nothing releases
it. A worker thread therefore runs only while the main thread runs Python that lets the GIL go.
A plain test does not show this: its main thread sleeps with the GIL released. Here the idle time
between timer ticks is spent in libc usleep called through ctypes.PyDLL, which keeps the GIL, as
Qt under PythonQt does (same method as shared/tools/slicer_idle_emulation.py). Linux/macOS only.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field

_LIBC_HOLDING_GIL = ctypes.PyDLL(None)  # calls through PyDLL do NOT release the GIL


def idle_holding_gil(seconds: float) -> None:
    """Block the calling thread for `seconds` while keeping the GIL, like Qt idling under PythonQt."""
    if seconds > 0:
        _LIBC_HOLDING_GIL.usleep(int(seconds * 1e6))


@dataclass
class EmulatedEventLoop:
    """A QTimer of `interval_ms` calling tick() on the main thread until done(). Between ticks Qt
    idles for the interval and spends `gui_work_ms` servicing events (repaints), all with the GIL
    held. `turns` records when Qt got control back (GUI events are serviced at those moments)."""

    interval_ms: float
    gui_work_ms: float = 2.0
    turns: list = field(default_factory=list)

    def run(self, tick, done, timeout_s: float = 300.0) -> float:
        start = time.monotonic()
        self.turns = [start]
        while not done():
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"work not done after {timeout_s} s")
            idle_holding_gil((self.interval_ms + self.gui_work_ms) / 1000.0)
            tick()
            self.turns.append(time.monotonic())
        return time.monotonic() - start

    @property
    def longest_gap(self) -> float:
        """Longest time in seconds between two moments Qt could service GUI events."""
        return max((b - a for a, b in zip(self.turns, self.turns[1:])), default=0.0)
