"""The study file: an append-only, tamper-evident SQLite table with one row per completed prompt.

A row is written, and committed, only once its prompt and segmentation are finished, so a
killed process loses at most the prompt in progress. Triggers refuse UPDATE, DELETE and an
INSERT that would replace a row (INSERT OR REPLACE deletes without firing DELETE triggers).

Tamper evidence: each row stores row_hash = sha256 of (previous row's hash, its id, its values),
so rows form a hash chain from GENESIS. Reading (`read_records`, hence `study report`) checks the
chain, that ids run 1..n with none missing at the end, and that the table and its triggers are
exactly those PropSAM creates; a failed check is an error that names what broke. This detects
edits made with any SQLite tool; it cannot stop someone who recomputes the whole chain (there is
no secret), so the report prints the chain head for the study log to record.

Several processes may write one study file (e.g. readers on a shared drive): each append waits
for the others' locks (busy timeout) and retries, so no record is lost. Reading opens the file
read-only: it never writes, not even to an empty file.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import random
import sqlite3
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

from ..errors import InputError, ResourceError
from ..io.atomic import atomic_path, check_writable

PROMPT_TYPES = ("one_view_box", "one_view_sketch", "two_view_box")
APPLICATION_ID = 0x5053414D  # "PSAM": marks the file as a PropSAM study
SCHEMA_VERSION = 2  # 2: row_hash chain and the no-replace trigger
GENESIS = "0" * 64  # the "previous hash" of row 1
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for other writers before giving up

TABLE_SQL = f"""CREATE TABLE prompts (
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
    simulated INTEGER NOT NULL CHECK (simulated IN (0, 1)),
    row_hash TEXT NOT NULL CHECK (length(row_hash) = 64)
)"""
TRIGGERS_SQL = {
    "prompts_append_only_update": "CREATE TRIGGER prompts_append_only_update BEFORE UPDATE ON prompts\n"
    "BEGIN SELECT RAISE(ABORT, 'study records are append-only'); END",
    "prompts_append_only_delete": "CREATE TRIGGER prompts_append_only_delete BEFORE DELETE ON prompts\n"
    "BEGIN SELECT RAISE(ABORT, 'study records are append-only'); END",
    "prompts_append_only_replace": "CREATE TRIGGER prompts_append_only_replace BEFORE INSERT ON prompts\n"
    "WHEN EXISTS (SELECT 1 FROM prompts WHERE id = NEW.id)\n"
    "BEGIN SELECT RAISE(ABORT, 'study records are append-only'); END",
}
SCHEMA_OBJECTS = {"prompts": TABLE_SQL, **TRIGGERS_SQL}  # what a study file holds, exactly


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


def _row_values(record: PromptRecord) -> list:
    """The record's values as SQLite gives them back (REAL as float, ...): hashed on write and read."""
    values = [str(v) for v in astuple(record)]
    for name, convert in (("prompt_seconds", float), ("segmentation_seconds", float), ("corrections", int)):
        values[COLUMNS.index(name)] = convert(getattr(record, name))
    values[COLUMNS.index("dice")] = None if record.dice is None else float(record.dice)
    values[COLUMNS.index("simulated")] = int(bool(record.simulated))
    return values


def row_hash(previous: str, row_id: int, values: list) -> str:
    text = json.dumps([previous, row_id, *values], ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


class StudyStore:
    """An open study file. Each `append` is its own committed, fsynced transaction.

    create=False opens the file read-only (for reports): nothing is ever written to it."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = Path(path)
        self.read_only = not create
        if self.read_only and not self.path.is_file():
            raise InputError(f"study file {self.path} does not exist")
        if create and not self.path.parent.is_dir():
            raise InputError(f"folder {self.path.parent} for the study file does not exist")
        with self._database_errors("is not a usable study file"):
            self._conn = self._connect("ro" if self.read_only else "rwc")
            try:
                if self.read_only:
                    try:
                        self._prepare()
                    except sqlite3.OperationalError as exc:
                        if getattr(exc, "sqlite_errorname", "") != "SQLITE_READONLY_ROLLBACK":
                            raise
                        # a writer was killed mid-commit: SQLite must first restore the last committed
                        # state from its journal, which a read-only connection cannot; query_only
                        # still keeps every statement of ours from writing
                        self._conn.close()
                        self._conn = self._connect("rw")
                        self._conn.execute("PRAGMA query_only = ON")
                        self._prepare()
                else:
                    # rollback journal with full sync: every commit is on disk and the study stays one file
                    self._retry(lambda: self._conn.execute("PRAGMA synchronous = FULL"))
                    self._retry(lambda: self._conn.execute("PRAGMA journal_mode = DELETE"))
                    self._prepare()
            except BaseException:
                self._conn.close()
                raise

    def _connect(self, mode: str) -> sqlite3.Connection:
        # a URI with mode=ro/rw never creates the file; rwc (writers) may
        uri = f"{self.path.absolute().as_uri()}?mode={mode}"
        return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)

    @contextlib.contextmanager
    def _database_errors(self, what: str) -> Iterator[None]:
        """SQLite errors (a damaged page, a foreign file) become one line naming the file."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise ResourceError(f"study file {self.path} stayed locked by another process for "
                                    f"{BUSY_TIMEOUT_S:.0f} s; nothing was written") from None
            raise InputError(f"{self.path} {what}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path} {what}: {exc}") from None

    def _retry(self, action: Callable[[], object]) -> object:
        """Run `action`, again after a short random wait while another writer holds the file.

        The busy timeout covers most waits inside SQLite; a lock upgrade that would deadlock
        fails at once instead, so it is retried here."""
        deadline, delay = time.monotonic() + BUSY_TIMEOUT_S, 0.005
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(2 * delay, 0.25)

    def _transaction(self, action: Callable[[], object]) -> object:
        """`action` inside BEGIN IMMEDIATE ... COMMIT (rolled back on any error), retried while busy."""
        def attempt():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = action()
                self._conn.execute("COMMIT")
                return result
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        return self._retry(attempt)

    def _prepare(self) -> None:
        def check_or_create():
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            tables = self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id == 0 and tables == 0:
                if self.read_only:
                    raise InputError(f"study file {self.path} is empty: it holds no PropSAM study")
                for statement in (TABLE_SQL, *TRIGGERS_SQL.values()):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif app_id != APPLICATION_ID:
                raise InputError(f"{self.path} is an SQLite file but not a PropSAM study")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise InputError(f"study file {self.path} has schema version {version}, expected {SCHEMA_VERSION} "
                                 "(version 1 files, without the row hash chain, cannot be checked or extended)")

        # writers check and create under one write lock, so two first writers cannot both create
        self._retry(check_or_create) if self.read_only else self._transaction(check_or_create)
        if not self.read_only:
            problem = self._schema_problem()
            if problem:
                raise InputError(f"study file {self.path} was altered outside PropSAM ({problem}); "
                                 "nothing more is written to it")

    def append(self, record: PromptRecord) -> None:
        if self.read_only:
            raise InputError(f"study file {self.path} is open for reading only")
        values = _row_values(record)
        columns = ", ".join(["id", *COLUMNS, "row_hash"])
        placeholders = ", ".join("?" for _ in range(len(COLUMNS) + 2))

        def insert():
            last = self._conn.execute("SELECT id, row_hash FROM prompts ORDER BY id DESC LIMIT 1").fetchone()
            sequence = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'prompts'").fetchone()
            previous = last[1] if last else GENESIS
            row_id = max(last[0] if last else 0, sequence[0] if sequence else 0) + 1
            digest = row_hash(previous, row_id, values)
            self._conn.execute(f"INSERT INTO prompts ({columns}) VALUES ({placeholders})", [row_id, *values, digest])
            # read the row back: what is committed must hash to what was computed
            stored = self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM prompts WHERE id = ?", [row_id]).fetchone()
            if row_hash(previous, row_id, list(stored)) != digest:
                raise InputError(f"study record read back from {self.path} differs from the one written")

        try:
            self._transaction(insert)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise ResourceError(f"study file {self.path} stayed locked by another process for "
                                    f"{BUSY_TIMEOUT_S:.0f} s; the record was not written") from None
            raise InputError(f"study record refused by {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise InputError(f"study record refused by {self.path}: {exc}") from None

    def _rows(self) -> list[tuple]:
        with self._database_errors("is damaged"):
            return self._conn.execute(f"SELECT id, {', '.join(COLUMNS)}, row_hash FROM prompts ORDER BY id").fetchall()

    def records(self) -> list[PromptRecord]:
        return [PromptRecord(*row[1:-2], simulated=bool(row[-2])) for row in self._rows()]

    def _schema_problem(self) -> str | None:
        with self._database_errors("is damaged"):
            found = dict(self._conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'trigger', 'view') AND name != 'sqlite_sequence'"
            ).fetchall())
        for name, sql in SCHEMA_OBJECTS.items():
            if name not in found:
                return f"{'table' if name == 'prompts' else 'trigger'} {name} is missing"
            if found[name] != sql:
                return f"{name} was redefined"
        extra = sorted(set(found) - set(SCHEMA_OBJECTS))
        return f"unknown objects {extra} were added" if extra else None

    def verify(self) -> tuple[int, str]:
        """Check schema and hash chain; -> (rows, chain head). InputError names the first break."""
        problem = self._schema_problem()
        if problem is None:
            rows = self._rows()
            previous = GENESIS
            for expected_id, row in enumerate(rows, start=1):
                if row[0] != expected_id:
                    problem = f"row {expected_id} is missing" if row[0] > expected_id else f"row id {row[0]} is out of order"
                    break
                if row_hash(previous, row[0], list(row[1:-1])) != row[-1]:
                    problem = f"row {row[0]} was changed after it was written"
                    break
                previous = row[-1]
            else:
                with self._database_errors("is damaged"):
                    sequence = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'prompts'").fetchone()
                if sequence and sequence[0] > len(rows):
                    problem = f"rows {len(rows) + 1}..{sequence[0]} were deleted"
        if problem:
            raise InputError(f"study file {self.path} FAILS its tamper check: {problem}; "
                             "its records cannot be trusted")
        return len(rows), previous

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "StudyStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(path: str | os.PathLike) -> list[PromptRecord]:
    """Every record, after the tamper check (which raises InputError naming what broke)."""
    with StudyStore(path, create=False) as store:
        store.verify()
        return store.records()


def export_csv(records: list[PromptRecord], out_path: str | os.PathLike, *, force: bool = False) -> Path:
    out_path = check_writable(out_path, force)
    with atomic_path(out_path, replace=force) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for record in records:
                writer.writerow([*astuple(record)[:-1], int(record.simulated)])
    return out_path
