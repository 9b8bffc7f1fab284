"""Interaction-time study logic, free of Qt: the Slicer panel calls these methods on user actions.

One prompt goes through these calls, in this order (anything else raises StudyStateError):

    start_case(case_id, object_name[, reference])  -> the case's prompt-type order
    arm([prompt_type])        the reader activates the prompt tool         -> PROMPT TIMER STARTS
    correction()  (0..n)      the reader redraws, moves or deletes part of the prompt
    complete_prompt()         the prompt is complete and submitted          -> PROMPT TIMER STOPS
    start_segmentation()      PropSAM starts computing                      -> segmentation timer starts
    finish_segmentation([mask])  the result is shown                         -> segmentation timer stops,
                                                                               the row is written
Timing rules
- Prompt time is clock() at complete_prompt() minus clock() at arm(). "Arm" is the click that
  makes the box/sketch tool active, so looking at the image before arming is not counted; the
  prompt is "complete" when the reader submits it (one-view box: the box is drawn; sketch: the
  stroke is drawn; two-view box: the box is drawn in both views). Time spent correcting the
  prompt before it is complete is inside the prompt time; each correction is also counted.
- Segmentation time is clock() at finish_segmentation() minus clock() at start_segmentation(),
  recorded separately and never part of prompt time.
- cancel() discards the prompt in progress (nothing is written) and returns to the case.
- `clock` is any monotonic seconds counter (default time.monotonic); tests inject a fake one.
  started_at is wall-clock UTC from `now` at arm(), for the record only.
Prompt-type order: each case gets all PROMPT_TYPES in an order shuffled by (seed, reader, case),
so it is reproducible and differs between readers and cases; arm() without a type takes the
next type of that order.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from .. import __version__
from ..errors import InputError, PropSAMError
from ..evaluation import metrics
from .records import PROMPT_TYPES, PromptRecord, StudyStore


class StudyStateError(PropSAMError):
    """A study action came in the wrong order (e.g. completing a prompt that was never armed)."""


def prompt_order(seed: int | None, reader_id: str, case_id: str) -> list[str]:
    """The prompt types for one case; unshuffled when seed is None."""
    order = list(PROMPT_TYPES)
    if seed is not None:
        random.Random(f"{seed}|{reader_id}|{case_id}").shuffle(order)
    return order


def dice(mask: np.ndarray, reference: np.ndarray) -> float:
    """metrics.dice, refusing masks of different shapes (a reference on another grid)."""
    if mask.shape != reference.shape:
        raise InputError(f"segmentation shape {mask.shape} differs from the reference's {reference.shape}")
    return metrics.dice(mask != 0, reference != 0)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class StudySession:
    def __init__(
        self,
        store: StudyStore,
        study_id: str,
        reader_id: str,
        *,
        seed: int | None = None,
        model_version: str = "unspecified",
        software_version: str = __version__,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
        simulated: bool = False,
    ):
        for name, value in (("study id", study_id), ("reader id", reader_id)):
            if not value or not value.strip():
                raise InputError(f"{name} must not be blank")
        self.store, self.study_id, self.reader_id, self.seed = store, study_id, reader_id, seed
        self.model_version, self.software_version = model_version, software_version
        self.clock, self.now, self.simulated = clock, now, simulated
        self.state = "no_case"
        self.case_id: str | None = None

    # --- case -------------------------------------------------------------------------------
    def start_case(self, case_id: str, object_name: str, reference: np.ndarray | None = None) -> list[str]:
        self._expect("start_case", "no_case", "case")
        if not case_id.strip() or not object_name.strip():
            raise InputError("case id and object name must not be blank")
        if reference is not None and not np.asarray(reference).any():
            raise InputError(f"reference segment for case {case_id!r} is empty")
        self.case_id, self.object_name, self.reference = case_id, object_name, reference
        self.order = prompt_order(self.seed, self.reader_id, case_id)
        self.done: list[str] = []
        self.state = "case"
        return list(self.order)

    @property
    def remaining(self) -> list[str]:
        return [t for t in self.order if t not in self.done] if self.case_id else []

    # --- one prompt -----------------------------------------------------------------------------
    def arm(self, prompt_type: str | None = None) -> str:
        self._expect("arm", "case")
        if prompt_type is None:
            if not self.remaining:
                raise StudyStateError(f"case {self.case_id!r} has no prompt type left; start the next case")
            prompt_type = self.remaining[0]
        if prompt_type not in PROMPT_TYPES:
            raise InputError(f"prompt type {prompt_type!r} is not one of {', '.join(PROMPT_TYPES)}")
        self.prompt_type, self.corrections = prompt_type, 0
        self.started_at = self.now().isoformat(timespec="milliseconds")
        self._armed_at = self.clock()
        self.state = "armed"
        return prompt_type

    def correction(self) -> int:
        self._expect("correction", "armed")
        self.corrections += 1
        return self.corrections

    def complete_prompt(self) -> float:
        self._expect("complete_prompt", "armed")
        self.prompt_seconds = self._elapsed(self._armed_at)
        self.state = "prompted"
        return self.prompt_seconds

    def start_segmentation(self) -> None:
        self._expect("start_segmentation", "prompted")
        self._segmentation_started_at = self.clock()
        self.state = "segmenting"

    def finish_segmentation(self, mask: np.ndarray | None = None) -> PromptRecord:
        self._expect("finish_segmentation", "segmenting")
        seconds = self._elapsed(self._segmentation_started_at)
        score = None
        if self.reference is not None:
            if mask is None:
                raise InputError("this case has a reference segment: pass the segmentation mask to score it")
            score = dice(np.asarray(mask), np.asarray(self.reference))
        record = PromptRecord(
            study_id=self.study_id, reader_id=self.reader_id, case_id=self.case_id,
            object_name=self.object_name, prompt_type=self.prompt_type,
            prompt_seconds=self.prompt_seconds, segmentation_seconds=seconds, dice=score,
            corrections=self.corrections, started_at=self.started_at,
            software_version=self.software_version, model_version=self.model_version,
            simulated=self.simulated,
        )
        self.store.append(record)
        self.done.append(self.prompt_type)
        self.state = "case"
        return record

    def cancel(self) -> None:
        """Drop the prompt in progress without writing anything."""
        self._expect("cancel", "armed", "prompted", "segmenting")
        self.state = "case"

    # --- helpers ----------------------------------------------------------------------------
    def _expect(self, action: str, *states: str) -> None:
        if self.state not in states:
            raise StudyStateError(f"cannot {action} now: {_STATE_TEXT[self.state]}")

    def _elapsed(self, since: float) -> float:
        seconds = self.clock() - since
        if seconds < 0:
            raise StudyStateError(f"the clock went backwards by {-seconds:.3f} s; use a monotonic clock")
        return seconds


_STATE_TEXT = {
    "no_case": "no case is started (call start_case first)",
    "case": "no prompt is armed (call arm first)",
    "armed": "a prompt is being drawn (complete_prompt or cancel it first)",
    "prompted": "the prompt is complete but segmentation has not started (call start_segmentation)",
    "segmenting": "segmentation is running (call finish_segmentation or cancel)",
}
