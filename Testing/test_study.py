"""Interaction-time study: session timing with simulated clocks, append-only crash-safe store, statistics."""

from __future__ import annotations

import csv
import math
import sqlite3
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from propsam import cli
from propsam.errors import InputError
from propsam.study.records import PROMPT_TYPES, PromptRecord, StudyStore, export_csv, read_records
from propsam.study.report import markdown_table, summarise, write_box_plot
from propsam.study.session import StudySession, StudyStateError, prompt_order


class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.t = start

    def __call__(self) -> float:
        return self.t

    def tick(self, seconds: float) -> None:
        self.t += seconds


T0 = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path):
    with StudyStore(tmp_path / "study.sqlite") as s:
        yield s


def make_session(store, clock, **kw):
    return StudySession(store, "S1", "R1", clock=clock, now=lambda: T0 + timedelta(seconds=clock()),
                        model_version="m1", **kw)


def test_prompt_timer_runs_from_arm_to_complete_and_segmentation_separately(store):
    clock = FakeClock()
    session = make_session(store, clock)
    reference = np.zeros((2, 4, 4), np.uint8)
    reference[0, :2, :2] = 1  # 4 voxels
    session.start_case("case1", "liver", reference=reference)
    clock.tick(30.0)  # looking at the image before arming: not counted
    assert session.arm("two_view_box") == "two_view_box"
    clock.tick(4.0)
    session.correction()
    clock.tick(3.5)
    session.correction()
    clock.tick(1.25)
    assert session.complete_prompt() == pytest.approx(8.75)
    clock.tick(2.0)  # between prompt and segmentation start: in neither time
    session.start_segmentation()
    clock.tick(1.5)
    mask = np.zeros_like(reference)
    mask[0, :2, :1] = 1  # 2 voxels, all inside: Dice = 2*2 / (2+4)
    record = session.finish_segmentation(mask)

    assert record.prompt_seconds == pytest.approx(8.75)
    assert record.segmentation_seconds == pytest.approx(1.5)
    assert record.corrections == 2
    assert record.dice == pytest.approx(2 / 3)
    assert record.started_at == (T0 + timedelta(seconds=1030)).isoformat(timespec="milliseconds")
    assert (record.study_id, record.reader_id, record.case_id, record.object_name) == ("S1", "R1", "case1", "liver")
    assert record.model_version == "m1" and record.software_version and not record.simulated
    assert store.records() == [record]


def test_wrong_call_order_is_a_clear_error(store):
    clock = FakeClock()
    session = make_session(store, clock)
    with pytest.raises(StudyStateError, match="no case is started"):
        session.arm()
    session.start_case("c", "obj")
    with pytest.raises(StudyStateError, match="cannot complete_prompt now: no prompt is armed"):
        session.complete_prompt()
    with pytest.raises(StudyStateError, match="no prompt is armed"):
        session.correction()
    session.arm()
    with pytest.raises(StudyStateError, match="a prompt is being drawn"):
        session.arm()
    with pytest.raises(StudyStateError, match="a prompt is being drawn"):
        session.start_case("d", "obj")
    with pytest.raises(StudyStateError, match="cannot start_segmentation now"):
        session.start_segmentation()
    session.complete_prompt()
    with pytest.raises(StudyStateError, match="cannot finish_segmentation now"):
        session.finish_segmentation()
    session.cancel()
    assert store.records() == []  # a cancelled prompt leaves nothing
    with pytest.raises(InputError, match="not one of"):
        session.arm("three_view_box")


def test_dice_needs_the_mask_when_a_reference_is_given(store):
    clock = FakeClock()
    session = make_session(store, clock)
    with pytest.raises(InputError, match="empty"):
        session.start_case("c", "obj", reference=np.zeros((2, 2, 2)))
    session.start_case("c", "obj", reference=np.ones((2, 2, 2)))
    session.arm()
    session.complete_prompt()
    session.start_segmentation()
    with pytest.raises(InputError, match="pass the segmentation mask"):
        session.finish_segmentation()
    with pytest.raises(InputError, match="shape"):
        session.finish_segmentation(np.ones((2, 2, 3)))


def test_prompt_order_is_seeded_per_case_and_covers_every_type(store):
    orders = {case: prompt_order(7, "R1", case) for case in ("a", "b", "c", "d", "e", "f")}
    assert all(sorted(o) == sorted(PROMPT_TYPES) for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) > 1, "order must vary between cases"
    assert prompt_order(7, "R1", "a") == orders["a"]
    assert prompt_order(None, "R1", "a") == list(PROMPT_TYPES)

    clock = FakeClock()
    session = make_session(store, clock, seed=7)
    assert session.start_case("a", "obj") == orders["a"]
    for expected in orders["a"]:
        assert session.arm() == expected
        session.complete_prompt()
        session.start_segmentation()
        session.finish_segmentation()
    assert [r.prompt_type for r in store.records()] == orders["a"]
    with pytest.raises(StudyStateError, match="no prompt type left"):
        session.arm()


# --- store -----------------------------------------------------------------------------------------


def record(prompt_type: str, seconds: float, reader: str = "R1", case: str = "c1") -> PromptRecord:
    return PromptRecord("S", reader, case, "obj", prompt_type, seconds, 1.0, None, 0, T0.isoformat(), "0", "m")


def test_rows_are_append_only(tmp_path):
    path = tmp_path / "study.sqlite"
    with StudyStore(path) as store:
        store.append(record("one_view_box", 5.0))
    raw = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("UPDATE prompts SET prompt_seconds = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("DELETE FROM prompts")
    raw.close()
    assert [r.prompt_seconds for r in read_records(path)] == [5.0]


def test_killed_process_loses_only_the_prompt_in_progress(tmp_path):
    path = tmp_path / "study.sqlite"
    script = textwrap.dedent(f"""
        import os, signal, sqlite3
        from propsam.study.records import StudyStore
        from propsam.study.session import StudySession
        t = [0.0]
        store = StudyStore({str(path)!r})
        session = StudySession(store, "S", "R", clock=lambda: t[0])
        session.start_case("c1", "obj")
        for _ in range(2):
            session.arm(); t[0] += 3.0; session.complete_prompt()
            session.start_segmentation(); session.finish_segmentation()
        session.arm(); t[0] += 1.0                     # a prompt in progress, in memory only
        raw = sqlite3.connect({str(path)!r}, isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")                 # and a row half-written by another connection
        raw.execute("INSERT INTO prompts SELECT NULL, study_id, reader_id, 'c9', object_name, prompt_type,"
                    " prompt_seconds, segmentation_seconds, dice, corrections, started_at,"
                    " software_version, model_version, simulated, row_hash FROM prompts LIMIT 1")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == -9, result.stderr
    rows = read_records(path)
    assert [(r.case_id, r.prompt_seconds) for r in rows] == [("c1", 3.0), ("c1", 3.0)]
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()


def test_foreign_or_missing_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_records(tmp_path / "none.sqlite")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(InputError, match="not a PropSAM study"):
        StudyStore(other)
    text = tmp_path / "notes.sqlite"
    text.write_text("hello, not a database at all " * 10)
    with pytest.raises(InputError, match="not a usable study file"):
        StudyStore(text)


def test_csv_export_is_complete_and_never_overwrites(tmp_path):
    rows = [record("one_view_box", 5.0), record("two_view_box", 9.5)]
    out = export_csv(rows, tmp_path / "r.csv")
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(r["prompt_seconds"]) for r in table] == [5.0, 9.5]
    assert table[0]["dice"] == "" and table[0]["simulated"] == "0"
    with pytest.raises(InputError, match="already exists"):
        export_csv(rows, out)


# --- statistics ------------------------------------------------------------------------------------

# Hand-computed example. Quartiles by linear interpolation at position (n - 1) * q:
#   one-view box    4 6 8 10      median 7,  Q1 4 + 0.75*2 = 5.5, Q3 8 + 0.25*2 = 8.5, IQR 3
#   one-view sketch 7 9 13        median 9,  Q1 (7+9)/2 = 8,      Q3 (9+13)/2 = 11,   IQR 3
#   two-view box    11 12 14 16 18 median 14, Q1 12, Q3 16, IQR 4
# Reduction vs two-view: box (14-7)/14 = 50 %, sketch (14-9)/14 = 35.714 %.
# Rank-sum, box vs two-view (no ties): ranks of the box times among all 9 are 1..4, W = 10;
#   E = 4*(4+5+1)/2 = 20, Var = 4*5*(4+5+1)/12 = 50/3, z = -10/sqrt(50/3) = -2.44949,
#   p = erfc(2.44949/sqrt 2) = 0.014306.
# Sketch vs two-view: ranks among 7 9 11 12 13 14 16 18 are 1, 2, 5 -> W = 8; E = 13.5,
#   Var = 3*5*9/12 = 11.25, z = -5.5/sqrt(11.25) = -1.63978, p = erfc(1.63978/sqrt 2) = 0.101050.
HAND = {"one_view_box": [4, 6, 8, 10], "one_view_sketch": [7, 9, 13], "two_view_box": [11, 12, 14, 16, 18]}


def hand_records() -> list[PromptRecord]:
    return [record(t, float(s), case=f"c{i}") for t, values in HAND.items() for i, s in enumerate(values)]


def test_statistics_match_the_hand_computed_example():
    by_type = {s.prompt_type: s for s in summarise(hand_records())}
    box, sketch, two = by_type["one_view_box"], by_type["one_view_sketch"], by_type["two_view_box"]
    assert (box.n, box.median, box.q1, box.q3, box.iqr) == (4, 7.0, 5.5, 8.5, 3.0)
    assert (sketch.n, sketch.median, sketch.q1, sketch.q3, sketch.iqr) == (3, 9.0, 8.0, 11.0, 3.0)
    assert (two.n, two.median, two.q1, two.q3, two.iqr) == (5, 14.0, 12.0, 16.0, 4.0)
    assert box.reduction_percent == pytest.approx(50.0)
    assert sketch.reduction_percent == pytest.approx(100 * 5 / 14)
    assert two.reduction_percent is None and two.p_value is None
    assert box.p_value == pytest.approx(math.erfc(10 / math.sqrt(50 / 3) / math.sqrt(2)), rel=1e-9)
    assert box.p_value == pytest.approx(0.014306, abs=1e-6)
    assert sketch.p_value == pytest.approx(math.erfc(5.5 / math.sqrt(11.25) / math.sqrt(2)), rel=1e-9)
    assert sketch.p_value == pytest.approx(0.101050, abs=1e-6)
    table = markdown_table(list(by_type.values()))
    assert "| one-view box | 4 | 7.00 | 3.00 | 5.50-8.50 | 50.0 % | 0.0143 |" in table
    assert "| one-view sketch | 3 | 9.00 | 3.00 | 8.00-11.00 | 35.7 % | 0.101 |" in table
    assert "| two-view box | 5 | 14.00 | 4.00 | 12.00-16.00 | - | - |" in table


def test_missing_prompt_type_is_reported_not_crashed(tmp_path):
    rows = [record("one_view_box", 5.0), record("one_view_box", 6.0)]
    by_type = {s.prompt_type: s for s in summarise(rows)}
    assert by_type["two_view_box"].n == 0 and by_type["one_view_box"].reduction_percent is None
    assert "| two-view box | 0 | - | - | - | - | - |" in markdown_table(list(by_type.values()))
    assert write_box_plot(rows, tmp_path / "f.png").stat().st_size > 0
    with pytest.raises(InputError, match="no records"):
        summarise([])


# --- command line ----------------------------------------------------------------------------------


@pytest.fixture
def propsam_main(monkeypatch):
    # only this feature's subcommands: the test must not depend on other features being present
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["propsam.study.cli"])
    return cli.main


def test_simulate_then_report_writes_png_and_csv(propsam_main, tmp_path, capsys):
    study, png, out_csv = tmp_path / "sim.sqlite", tmp_path / "fig.png", tmp_path / "all.csv"
    assert propsam_main(["study", "simulate", str(study), "--readers", "3", "--cases", "4", "--seed", "5"]) == 0
    assert propsam_main(["study", "report", str(study), "--png", str(png), "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    assert "SIMULATED" in text and "| one-view box | 12 |" in text and "| two-view box | 12 |" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with open(out_csv, newline="") as f:
        assert len(list(csv.DictReader(f))) == 3 * 4 * 3

    again = tmp_path / "again.sqlite"
    assert propsam_main(["study", "simulate", str(again), "--readers", "3", "--cases", "4", "--seed", "5"]) == 0
    assert read_records(again) == read_records(study)  # seeded: reproducible
    assert propsam_main(["study", "simulate", str(study)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert propsam_main(["study", "report", str(tmp_path / "none.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
