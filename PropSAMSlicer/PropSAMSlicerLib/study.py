"""Study mode glue: the panel's actions mapped onto propsam.study.session.StudySession.

Panel action                        session calls
  Start case                          start_case
  Box / Sketch / Two-view tool armed  arm(prompt type of that tool)
  the prompt is redrawn or moved      correction
  Segment pressed                     complete_prompt, start_segmentation
  result written                      finish_segmentation(mask) -> one row in the study file
  run cancelled, failed or undone     cancel (nothing is written)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from propsam.errors import InputError
from propsam.study.records import PROMPT_TYPES, PromptRecord, StudyStore
from propsam.study.session import StudySession, StudyStateError

BOX, SKETCH, TWO_VIEW = "box", "sketch", "two_view"
PROMPT_TYPE_OF_TOOL = {BOX: "one_view_box", SKETCH: "one_view_sketch", TWO_VIEW: "two_view_box"}
TOOL_OF_PROMPT_TYPE = {v: k for k, v in PROMPT_TYPE_OF_TOOL.items()}
assert set(PROMPT_TYPE_OF_TOOL.values()) == set(PROMPT_TYPES)


class StudyController:
    def __init__(
        self, path: str | Path, study_id: str, reader_id: str, *, randomised: bool = True, seed: int = 0,
        model_version: str = "unspecified", clock: Callable[[], float] = time.monotonic,
    ):
        if not str(path).strip():
            raise InputError("choose a study file (it is created if it does not exist)")
        self.store = StudyStore(path)
        self.randomised = randomised
        try:
            self.session = StudySession(
                self.store, study_id, reader_id, seed=seed if randomised else None,
                model_version=model_version, clock=clock,
            )
        except Exception:
            self.store.close()
            raise

    @property
    def state(self) -> str:
        return self.session.state

    @property
    def remaining(self) -> list[str]:
        return self.session.remaining

    def next_tool(self) -> str | None:
        """The tool the randomised order asks for next (None when the case is done or no case is open)."""
        remaining = self.remaining
        return TOOL_OF_PROMPT_TYPE[remaining[0]] if remaining else None

    def start_case(self, case_id: str, object_name: str, reference: np.ndarray | None = None) -> list[str]:
        self.abandon()
        return self.session.start_case(case_id, object_name, reference)

    def arm(self, tool: str) -> str:
        """The reader activated a prompt tool: the prompt timer starts (a re-arm restarts it)."""
        prompt_type = PROMPT_TYPE_OF_TOOL[tool]
        if self.state in ("armed", "prompted"):
            self.session.cancel()
        if self.randomised and self.remaining and prompt_type != self.remaining[0]:
            raise StudyStateError(
                f"the randomised order asks for the {TOOL_OF_PROMPT_TYPE[self.remaining[0]].replace('_', '-')} "
                f"prompt next, not the {tool.replace('_', '-')}"
            )
        return self.session.arm(prompt_type)

    def correction(self) -> None:
        if self.state == "armed":
            self.session.correction()

    def submit(self) -> None:
        """Segment was pressed: the prompt is complete, the segmentation timer starts."""
        self.session.complete_prompt()
        self.session.start_segmentation()

    def finish(self, mask: np.ndarray | None) -> PromptRecord:
        return self.session.finish_segmentation(mask if self.session.reference is not None else None)

    def abandon(self) -> None:
        """The prompt in progress is dropped without a row (cancel, error)."""
        if self.state in ("armed", "prompted", "segmenting"):
            self.session.cancel()

    def close(self) -> None:
        self.abandon()
        self.store.close()
