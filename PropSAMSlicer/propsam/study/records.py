"""The study file: an append-only SQLite table with one row per completed prompt.

A row is written, and committed, only once its prompt and segmentation are finished, so a
killed process loses at most the prompt in progress. Triggers refuse UPDATE and DELETE, so a
completed row cannot be changed afterwards, not even by another tool using SQLite.
"""

from __future__ import annotations

import csv
import os
import sqlite3
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from ..errors import InputError
from ..io.atomic import atomic_path, check_writable

PROMPT_TYPES = ("one_view_box", "one_view_sketch", "two_view_box")
APPLICATION_ID = 0x5053414D  # "PSAM": marks the file as a PropSAM study
SCHEMA_VERSION = 1

SCHEMA = f"""
CREATE TABLE prompts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id TEXT NOT NULL,
    reader_id TEXT NOT NULL,
    case_id TEXT NOT NULL,
    object_name TEXT NOT NULL,
    prompt_type TEXT NOT NULL CHECK (prompt_type IN {PROMPT_TYPES!r}),
    prompt_seconds REAL NOT NULL CHECK (prompt_seconds >= 0),
    segmentation_seconds REAL NOT NULL CHECK (segmentation_seconds >= 0),
    dice REAL CHECK (dice IS NULL OR (dice >= 0 AND dice <= 1)),
    corrections INTEGER NOT NULL CHECK (corrections >= 0),
    started_at TEXT NOT NULL,
    software_version TEXT NOT NULL,
    model_version TEXT NOT NULL,
    simulated INTEGER NOT NULL CHECK (simulated IN (0, 1))
);
CREATE TRIGGER prompts_append_only_update BEFORE UPDATE ON prompts
BEGIN SELECT RAISE(ABORT, 'study records are append-only'); END;
CREATE TRIGGER prompts_append_only_delete BEFORE DELETE ON prompts
BEGIN SELECT RAISE(ABORT, 'study records are append-only'); END;
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""


@dataclass(frozen=True)
class PromptRecord:
    study_id: str
    reader_id: str
    case_id: str
    object_name: str
    prompt_type: str
    prompt_seconds: float
    segmentation_seconds: float
    dice: float | None
    corrections: int
    started_at: str  # ISO 8601 wall-clock time when the prompt tool was armed
    software_version: str
    model_version: str
    simulated: bool = False

    def __post_init__(self) -> None:
        for name in ("study_id", "reader_id", "case_id", "object_name"):
            if not str(getattr(self, name)).strip():
                raise InputError(f"study record needs a non-blank {name}")
        if self.prompt_type not in PROMPT_TYPES:
            raise InputError(f"prompt type {self.prompt_type!r} is not one of {', '.join(PROMPT_TYPES)}")
        if self.dice is not None and not 0 <= self.dice <= 1:
            raise InputError(f"Dice {self.dice} is outside [0, 1]")


COLUMNS = [f.name for f in fields(PromptRecord)]


class StudyStore:
    """An open study file. Each `append` is its own committed, fsynced transaction."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise InputError(f"study file {self.path} does not exist")
        if create and not self.path.parent.is_dir():
            raise InputError(f"folder {self.path.parent} for the study file does not exist")
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None)
            # rollback journal with full sync: every commit is on disk and the study stays one file
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA journal_mode = DELETE")
            self._prepare()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path} is not a usable study file: {exc}") from None

    def _prepare(self) -> None:
        app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
        tables = self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and tables == 0:
            self._conn.executescript(f"BEGIN; {SCHEMA} COMMIT;")
        elif app_id != APPLICATION_ID:
            raise InputError(f"{self.path} is an SQLite file but not a PropSAM study")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise InputError(f"study file {self.path} has schema version {version}, expected {SCHEMA_VERSION}")

    def append(self, record: PromptRecord) -> None:
        placeholders = ", ".join("?" for _ in COLUMNS)
        values = list(astuple(record))
        values[COLUMNS.index("simulated")] = int(record.simulated)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(f"INSERT INTO prompts ({', '.join(COLUMNS)}) VALUES ({placeholders})", values)
        except sqlite3.DatabaseError as exc:
            self._conn.execute("ROLLBACK")
            raise InputError(f"study record refused by {self.path}: {exc}") from None
        self._conn.execute("COMMIT")

    def records(self) -> list[PromptRecord]:
        rows = self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM prompts ORDER BY id").fetchall()
        return [PromptRecord(*row[:-1], simulated=bool(row[-1])) for row in rows]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "StudyStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(path: str | os.PathLike) -> list[PromptRecord]:
    with StudyStore(path, create=False) as store:
        return store.records()


def export_csv(records: list[PromptRecord], out_path: str | os.PathLike, *, force: bool = False) -> Path:
    out_path = check_writable(out_path, force)
    with atomic_path(out_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for record in records:
                writer.writerow([*astuple(record)[:-1], int(record.simulated)])
    return out_path
