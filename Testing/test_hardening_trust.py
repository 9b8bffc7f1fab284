"""Issue 12, untrusted files: pickled code, model folders, bundle overwrites (items 9, 13, 14, 16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from propsam.cli import main
from propsam.errors import WeightsError
from propsam.training.checkpoint import load_checkpoint, save_checkpoint
from propsam.weights import SHIPPED_MODELS_DIR, load_bundle, resolve_model, sha256_of


class PlantedCode:
    """Unpickling this calls open(marker, "w"): a file appears if the loader runs pickled code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path: Path, marker: Path, payload: dict | None = None) -> None:
    torch.save({**(payload or {}), "step": 1, "tasks_seen": 1, "extra": PlantedCode(marker)}, path)


@pytest.fixture
def bundle_copy(random_model, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(random_model.parent, folder)
    return folder


def edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest = edit(manifest) or manifest
    path.write_text(json.dumps(manifest))


def bundle_args(source: Path, out: Path, *extra: str) -> list[str]:
    return ["bundle", "--name", "t", "--box2mask", str(source / "box2mask.pt"),
            "--propmask", str(source / "propmask.pt"), "--out-dir", str(out), *extra]


# --- item 13: every load of a file a user may have been given refuses pickled code -------------------


def test_checkpoint_module_round_trips_plain_state_and_refuses_planted_code(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "rng": [{"state": {"state": 2**127 + 5}}], "step": 3}
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path / "checkpoint.pt")["rng"][0]["state"]["state"] == 2**127 + 5
    with pytest.raises(WeightsError, match="cannot be loaded safely"):
        save_checkpoint({"step": 1, "bad": PlantedCode(tmp_path / "never")}, tmp_path / "c2.pt")
    assert not (tmp_path / "never").exists() and not (tmp_path / "c2.pt").exists()


def test_train_resume_refuses_a_planted_checkpoint(tmp_path):
    from test_training import tiny_config
    from propsam.training.train import Trainer

    run, marker = tmp_path / "run", tmp_path / "pwned"
    run.mkdir()
    plant(run / "checkpoint.pt", marker)
    with pytest.raises(WeightsError, match="cannot be loaded safely"):
        Trainer(tiny_config(run))
    assert not marker.exists()


def test_train_checkpoint_loads_with_weights_only(tmp_path):
    from test_training import tiny_config
    from propsam.training.train import Trainer

    Trainer(tiny_config(tmp_path / "run", steps=1)).run()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)  # optimizer and RNG included
    assert state["step"] == 1 and state["optimizer"]["state"]


@pytest.mark.parametrize("planted", ["checkpoint.pt", "propmask.pt"])  # beside the weights, or the weights
def test_bundle_refuses_planted_files(random_model, tmp_path, planted):
    source, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(random_model.parent, source)
    plant(source / planted, marker)
    assert main(bundle_args(source, tmp_path / "out")) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_engine_refuses_planted_weights_even_with_a_matching_sha256(bundle_copy, tmp_path):
    marker = tmp_path / "pwned"
    plant(bundle_copy / "box2mask.pt", marker)
    edit_manifest(bundle_copy, lambda m: m["networks"]["box2mask"].update(sha256=sha256_of(bundle_copy / "box2mask.pt")))
    with pytest.raises(WeightsError, match="cannot be read"):
        load_bundle(str(bundle_copy))
    assert not marker.exists()


# --- item 9: bundle never replaces an existing bundle without --force --------------------------------


def test_bundle_out_dir_is_not_overwritten_without_force(random_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(bundle_args(random_model.parent, out)) == 0
    manifest = (out / "manifest.json").read_bytes()
    (out / "t_propmask.pt").write_bytes(b"a reader's own file")
    assert main(bundle_args(random_model.parent, out)) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == manifest
    assert (out / "t_propmask.pt").read_bytes() == b"a reader's own file"
    assert main(bundle_args(random_model.parent, out, "--force")) == 0
    assert load_bundle(str(out))[0].name == "t"


def test_bundle_name_cannot_leave_the_out_dir(random_model, tmp_path):
    args = bundle_args(random_model.parent, tmp_path / "out")
    args[args.index("t")] = "../escape"
    assert main(args) == 2
    assert not list(tmp_path.glob("*escape*"))


# --- item 14: a model folder is confined to itself and to finite, hashed weights ---------------------


@pytest.mark.parametrize("file", ["../../../../etc/passwd", "/etc/passwd", "sub/../../box2mask.pt", ".."])
def test_manifest_paths_must_stay_inside_the_bundle(bundle_copy, file):
    edit_manifest(bundle_copy, lambda m: m["networks"]["box2mask"].update(file=file))
    with pytest.raises(WeightsError, match="bundle folder"):
        load_bundle(str(bundle_copy))


def test_a_link_out_of_the_bundle_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "outside.pt"
    shutil.move(bundle_copy / "box2mask.pt", outside)
    (bundle_copy / "box2mask.pt").symlink_to(outside)
    with pytest.raises(WeightsError, match="outside the bundle folder"):
        load_bundle(str(bundle_copy))


@pytest.mark.parametrize("sha256", [None, "", "abc", 12])
def test_sha256_is_required(bundle_copy, sha256):
    def edit(m):
        if sha256 is None:
            del m["networks"]["propmask"]["sha256"]
        else:
            m["networks"]["propmask"]["sha256"] = sha256
    edit_manifest(bundle_copy, edit)
    with pytest.raises(WeightsError, match="sha256"):
        load_bundle(str(bundle_copy))


def test_a_model_name_never_means_a_folder_in_the_working_directory(bundle_copy, tmp_path, monkeypatch):
    planted = tmp_path / "cwd" / "lite"
    shutil.copytree(bundle_copy, planted)
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_model("lite") == SHIPPED_MODELS_DIR / "lite" / "manifest.json"
    assert resolve_model("./lite").resolve() == planted / "manifest.json"
    shutil.copytree(bundle_copy, tmp_path / "cwd" / "paper")
    with pytest.raises(WeightsError, match="no paper-size weights ship"):
        resolve_model("paper")


def test_non_finite_weights_are_refused(bundle_copy):
    path = bundle_copy / "propmask.pt"
    payload = torch.load(path, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name][0] = float("nan")
    torch.save(payload, path)
    edit_manifest(bundle_copy, lambda m: m["networks"]["propmask"].update(sha256=sha256_of(path)))
    with pytest.raises(WeightsError, match="NaN or infinite"):
        load_bundle(str(bundle_copy))


# --- item 16: a malformed manifest is a one-line error, not a traceback ------------------------------


@pytest.mark.parametrize("content", [
    "[]", "null", "3",
    lambda m: m.update(networks=[m["networks"]["box2mask"], m["networks"]["propmask"]]),
    lambda m: m["networks"]["box2mask"].update(file=7),
    lambda m: m["networks"].pop("propmask"),
    lambda m: m.update(config=None),
    lambda m: m["config"].update(box2mask=[1, 2]),
])
def test_malformed_manifest_is_a_weights_error(bundle_copy, content):
    if isinstance(content, str):
        (bundle_copy / "manifest.json").write_text(content)
    else:
        edit_manifest(bundle_copy, content)
    with pytest.raises(WeightsError, match="manifest"):
        load_bundle(str(bundle_copy))


# --- study file: concurrent writers (10), tamper evidence (15), damage (16), reading never writes (20) --

STUDY_WRITER = """
import sys, time
from pathlib import Path
from propsam.study.records import PromptRecord, StudyStore
folder, reader, rounds, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for r in range(rounds):
    (folder / f"ready{r}-{reader}").touch()
    while not (folder / f"go{r}").exists():  # all writers open the new file at the same moment
        time.sleep(0.0005)
    with StudyStore(folder / f"study{r}.sqlite") as store:
        for i in range(count):
            store.append(PromptRecord("S", reader, f"case{i}", "obj", "one_view_box", 1.0 + i, 1.0, None, 0,
                                      "2024-05-01T09:00:00", "0", "m"))
"""


def study_rows(path: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(path) as raw:
        return raw.execute("SELECT * FROM prompts ORDER BY id").fetchall()


def test_concurrent_study_writers_lose_nothing(tmp_path):
    """N processes create and fill one new study file at once: every process succeeds and every
    record is there, in one intact hash chain. The race is timing dependent, hence several rounds
    (on the code before the fix most runs lost a writer's records in some round)."""
    import subprocess
    import sys
    import time

    from propsam.study.records import read_records

    writers, rounds, each = 8, 12, 2
    procs = [subprocess.Popen([sys.executable, "-c", STUDY_WRITER, str(tmp_path), f"R{w}", str(rounds), str(each)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(writers)]
    deadline = time.monotonic() + 120
    for r in range(rounds):
        while len(list(tmp_path.glob(f"ready{r}-*"))) < writers and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.005)
        (tmp_path / f"go{r}").touch()
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert [r[2] for r in results] == [0] * writers, [r[1][-300:] for r in results if r[2]]
    for r in range(rounds):
        records = read_records(tmp_path / f"study{r}.sqlite")  # includes the tamper check of the shared chain
        assert sorted((x.reader_id, x.case_id) for x in records) == sorted(
            (f"R{w}", f"case{i}") for w in range(writers) for i in range(each))


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "study.sqlite"
    assert main(["study", "simulate", str(path), "--readers", "2", "--cases", "1"]) == 0
    return path


def raw_edit(path: Path, *statements: str) -> None:
    import sqlite3

    raw = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        raw.execute(statement)
    raw.close()


def test_insert_or_replace_cannot_rewrite_a_row(study):
    import sqlite3

    before = study_rows(study)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw_edit(study, "INSERT OR REPLACE INTO prompts SELECT id, study_id, 'forger', case_id, object_name, "
                        "prompt_type, 0.5, segmentation_seconds, dice, corrections, '1999-01-01', software_version, "
                        "model_version, simulated, row_hash FROM prompts WHERE id = 1")
    assert study_rows(study) == before


def test_report_passes_an_intact_study_and_prints_its_chain_head(study, capsys):
    assert main(["study", "report", str(study)]) == 0
    out = capsys.readouterr().out
    assert "tamper check passed: 6 rows hash-chained, chain head " + study_rows(study)[-1][-1] in out


DROP = ["DROP TRIGGER prompts_append_only_update", "DROP TRIGGER prompts_append_only_delete"]


def restore_triggers(path: Path) -> None:
    from propsam.study.records import TRIGGERS_SQL

    raw_edit(path, TRIGGERS_SQL["prompts_append_only_update"], TRIGGERS_SQL["prompts_append_only_delete"])


@pytest.mark.parametrize("edit, problem", [
    ([DROP[1]], "trigger prompts_append_only_delete is missing"),
    ([*DROP, "UPDATE prompts SET reader_id = 'forger' WHERE id = 2"], "row 2 was changed after it was written"),
    ([*DROP, "UPDATE prompts SET prompt_seconds = prompt_seconds / 2"], "row 1 was changed after it was written"),
    ([*DROP, "DELETE FROM prompts WHERE id = 3"], "row 3 is missing"),
    ([*DROP, "DELETE FROM prompts WHERE id >= 5"], "rows 5..6 were deleted"),
])
def test_report_says_so_when_the_study_was_tampered_with(study, capsys, edit, problem):
    raw_edit(study, *edit)
    if edit[0] == DROP[0]:
        restore_triggers(study)  # the forger covers the tracks; the chain still tells
    assert main(["study", "report", str(study)]) == 2
    err = capsys.readouterr().err
    assert "FAILS its tamper check" in err and problem in err and len(err.strip().splitlines()) == 1


def test_appending_to_a_study_whose_triggers_were_dropped_is_refused(study):
    from propsam.errors import InputError
    from propsam.study.records import StudyStore

    raw_edit(study, DROP[0])
    with pytest.raises(InputError, match="altered outside PropSAM"):
        StudyStore(study)


def test_a_study_with_a_damaged_page_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "study.sqlite"
    assert main(["study", "simulate", str(path), "--readers", "4", "--cases", "10"]) == 0
    data = bytearray(path.read_bytes())
    assert len(data) >= 4 * 4096
    data[2 * 4096: 3 * 4096] = bytes(range(256)) * 16  # page 3 overwritten with garbage
    path.write_bytes(bytes(data))
    assert main(["study", "report", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "malformed" in err


def test_report_on_an_empty_file_writes_nothing(tmp_path, capsys):
    import os

    path = tmp_path / "empty.sqlite"
    path.touch()
    os.utime(path, (1_000_000_000, 1_000_000_000))
    assert main(["study", "report", str(path)]) == 2
    assert "is empty" in capsys.readouterr().err
    assert path.stat().st_size == 0 and path.stat().st_mtime == 1_000_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite"]


# --- item 19: DICOM-SEG text is valid for its VR and non-ASCII text survives a read-back -------------


def ct3_series(tmp_path: Path, charset: str | None = None, patient: str | None = None) -> Path:
    import pydicom

    from conftest import shared_data_path

    folder = tmp_path / "ct"
    shutil.copytree(shared_data_path("dcmqi-ct3slice", "ct-3slice"), folder)
    if charset:
        for path in folder.iterdir():
            ds = pydicom.dcmread(path)
            ds.SpecificCharacterSet = charset
            ds.PatientName = patient
            ds.save_as(path)
    return folder


def ct3_mask() -> "np.ndarray":
    import SimpleITK as sitk

    from conftest import shared_data_path

    return sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data_path("dcmqi-ct3slice", "liver_seg.nrrd"))))


@pytest.mark.parametrize("label, problem", [
    ("L" * 200, r"has 200 characters; DICOM \(LO\) allows at most 64"),
    ("a\\b", "backslash"),
    ("liver\nleft lobe", "control character"),
    ("  ", "must not be blank"),
])
def test_segment_labels_invalid_for_lo_are_refused(tmp_path, label, problem):
    from propsam.dicom.seg_export import SegmentSpec, export_dicom_seg
    from propsam.errors import InputError

    folder = ct3_series(tmp_path)
    with pytest.raises(InputError, match=problem):
        export_dicom_seg([SegmentSpec(ct3_mask(), label)], folder, tmp_path / "o.dcm", model_name="m")
    assert not (tmp_path / "o.dcm").exists()


def test_cli_refuses_a_long_label_and_a_long_code_meaning(tmp_path, capsys):
    from conftest import shared_data_path

    base = ["export-dicom-seg", "--seg", str(shared_data_path("dcmqi-ct3slice", "liver_seg.nrrd")),
            "--dicom", str(ct3_series(tmp_path)), "--out", str(tmp_path / "o.dcm")]
    assert main(base + ["--label", "x" * 65]) == 2
    assert "allows at most 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--type", "SCT:10200004:" + "Liver" * 13])
    assert "code meaning" in capsys.readouterr().err
    assert not (tmp_path / "o.dcm").exists()


@pytest.mark.parametrize("charset, patient, label, written_as", [
    (None, None, "肝臓 (liver)", "ISO_IR 192"),  # default repertoire cannot hold it: UTF-8
    ("ISO_IR 100", "Müller^Jörg", "Läsion", "ISO_IR 100"),  # Latin-1 holds it: the source's set is kept
    ("ISO_IR 100", "Müller^Jörg", "Опухоль", "ISO_IR 192"),  # it does not: UTF-8, patient name re-encoded
])
def test_non_ascii_labels_read_back_exactly(tmp_path, charset, patient, label, written_as):
    import pydicom

    from propsam.dicom.seg_export import SegmentSpec, export_dicom_seg

    folder = ct3_series(tmp_path, charset, patient)
    source_patient = str(pydicom.dcmread(next(folder.iterdir())).PatientName)
    out = export_dicom_seg([SegmentSpec(ct3_mask(), label)], folder, tmp_path / "o.dcm", model_name="modèle")
    back = pydicom.dcmread(out)
    assert back.SpecificCharacterSet == written_as
    assert back.SegmentSequence[0].SegmentLabel == label
    assert str(back.PatientName) == source_patient
    assert back.ManufacturerModelName == "modèle"


def test_report_after_a_writer_was_killed_mid_commit_reads_the_last_committed_rows(study, capsys):
    """A writer killed while its journal is hot: the read-only report still opens the file (SQLite
    restores the committed state from the journal) and sees exactly the committed rows."""
    import subprocess
    import sys

    script = f"""
import os, sqlite3
raw = sqlite3.connect({str(study)!r}, isolation_level=None)
raw.execute("PRAGMA cache_size = 5")  # small cache: pages spill to the file, the journal is hot
raw.execute("BEGIN IMMEDIATE")
for _ in range(300):
    raw.execute("INSERT INTO prompts SELECT NULL, study_id, reader_id, ?, object_name, prompt_type, prompt_seconds,"
                " segmentation_seconds, dice, corrections, started_at, software_version, model_version, simulated,"
                " row_hash FROM prompts LIMIT 1", ["x" * 500])
os.kill(os.getpid(), 9)
"""
    before = study_rows(study)
    assert subprocess.run([sys.executable, "-c", script], timeout=120).returncode == -9
    assert Path(f"{study}-journal").exists()
    assert main(["study", "report", str(study)]) == 0
    assert "tamper check passed: 6 rows" in capsys.readouterr().out
    assert study_rows(study) == before
