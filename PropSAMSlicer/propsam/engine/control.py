"""Progress reporting and cancellation shared by the CLI, the Slicer worker and tests."""

from __future__ import annotations

import threading
from typing import Callable

from ..errors import Cancelled

ProgressCallback = Callable[[int, int], None]  # (slices done, estimated total)


class CancelToken:
    """Set from any thread; the engine checks it between propagation rounds."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("segmentation cancelled; nothing was changed")
