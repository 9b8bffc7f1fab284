"""Issue #12 (hardening): every failure a user can hit gives exit 2 with one line and leaves no file.

Full disks are simulated with RLIMIT_FSIZE in a subprocess (Python ignores SIGXFSZ, so writes past
the limit fail with EFBIG as on a full disk): no root needed.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import propsam
from conftest import shared_data_path
from phantom_volumes import sphere_volume, write_volume
from propsam.cli import main
from propsam.errors import InputError, ResourceError
from propsam.io.volume import Volume, write_mask

# subprocesses run the package this test imported (so the tests can be pointed at an older copy)
PACKAGE = Path(propsam.__file__).resolve().parents[1]
LIDC = ("lidc-idri-subsets", "LIDC-IDRI-0003")
CT3 = ("dcmqi-ct3slice", "ct-3slice")


def prompt_file(volume, truth, path):
    k = int(truth.sum((1, 2)).argmax())
    prompt = np.zeros_like(truth)
    prompt[k] = truth[k]
    write_volume(Volume(prompt, volume.spacing, volume.origin, volume.direction), path)
    return path


BOX = ["--box", "12,12,28,28", "--slice-index", "12"]


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def run_subprocess(args, cwd, fsize: int | None = None, **kwargs):
    """`propsam ARGS` in a fresh process, optionally with a file size limit (a 'full disk')."""
    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = dict(os.environ, PYTHONPATH=str(PACKAGE), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "propsam.cli", *map(str, args)], cwd=cwd, env=env,
                          preexec_fn=limit, capture_output=True, text=True, timeout=300, **kwargs)


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def one_error_line(text: str) -> bool:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("propsam: error:")


# --- 1, 16: full disk -> exit 2, one line, no file ------------------------------------------------


@pytest.mark.parametrize("out_name, fsize", [("m.nii", 20_000), ("m.nii.gz", 200)])
def test_item1_full_disk_mask_write_exits_2_and_leaves_nothing(random_model, sphere_file, tmp_path, out_name, fsize):
    path, volume, truth = sphere_file
    prompt = prompt_file(volume, truth, tmp_path / "p.nrrd")
    # no leak limit: the random network's masks may outgrow the prompt, and a one-slice mask may fit the disk
    result = run_subprocess(["segment", "--image", path, "--out", out_name, "--model", random_model.parent,
                             "--mask-prompt", prompt, "--quiet", "--leak-limit", "0"], tmp_path, fsize=fsize)
    assert result.returncode == 2, result.stdout + result.stderr
    assert one_error_line(result.stderr), result.stderr
    assert leftovers(tmp_path, {"sphere.nrrd", "p.nrrd"}) == []


def test_item1_16_full_disk_during_png_leaves_neither_png_nor_mask(random_model, sphere_file, tmp_path):
    path, volume, truth = sphere_file
    prompt = prompt_file(volume, truth, tmp_path / "p.nrrd")
    result = run_subprocess(["segment", "--image", path, "--out", "m.nrrd", "--png", "m.png", "--model",
                             random_model.parent, "--mask-prompt", prompt, "--quiet"], tmp_path, fsize=6_000)
    assert result.returncode == 2, result.stdout + result.stderr
    assert one_error_line(result.stderr) and "m.png" in result.stderr, result.stderr
    assert leftovers(tmp_path, {"sphere.nrrd", "p.nrrd"}) == []  # the mask is not left without its PNG


def test_item1_16_full_disk_during_dicom_seg_export(tmp_path):
    folder = shared_data_path(*CT3)
    labels = shared_data_path("dcmqi-ct3slice", "liver_seg.nrrd")
    result = run_subprocess(["export-dicom-seg", "--seg", labels, "--dicom", folder, "--out", "seg.dcm"], tmp_path,
                            fsize=20_000)
    assert result.returncode == 2, result.stdout + result.stderr
    assert one_error_line(result.stderr), result.stderr
    assert leftovers(tmp_path, set()) == []


def test_item1_silently_truncated_write_is_caught_by_the_read_back(sphere_file, tmp_path, monkeypatch):
    """ITK's NIfTI writer does not report a short write: the read-back check must."""
    _, volume, truth = sphere_file
    real_write = sitk.WriteImage

    def short_write(image, name, *args, **kwargs):
        real_write(image, name, *args, **kwargs)
        data = Path(name).read_bytes()
        Path(name).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    with pytest.raises(ResourceError, match="truncated|incomplete|failed its check"):
        write_mask(volume, truth, tmp_path / "m.nii")
    assert list(tmp_path.iterdir()) == [tmp_path / "sphere.nrrd"]


def test_item1_atomic_path_verify_failure_and_empty_file_leave_nothing(tmp_path):
    from propsam.io.atomic import atomic_path

    def refuse(path):
        raise ResourceError("not what was meant")

    with pytest.raises(ResourceError, match="not what was meant"):
        with atomic_path(tmp_path / "a.txt", verify=refuse) as tmp:
            tmp.write_text("x")
    with pytest.raises(ResourceError, match="0 bytes"):
        with atomic_path(tmp_path / "b.txt"):
            pass
    assert list(tmp_path.iterdir()) == []


# --- 2, 3: the reader refuses truncated, corrupt and non-finite files -----------------------------


def truncated_copy(source: Path, target: Path, fraction: float = 0.6) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_item2_truncated_nifti_image_is_refused(random_model, sphere_file, tmp_path, capsys, suffix):
    _, volume, _ = sphere_file
    whole = tmp_path / f"whole{suffix}"
    write_volume(volume, whole)
    image = truncated_copy(whole, tmp_path / f"cut{suffix}")
    code, text = run(["segment", "--image", image, "--out", tmp_path / "m.nrrd", "--model", random_model.parent] + BOX,
                     capsys)
    assert code == 2 and "truncated" in text and one_error_line(text), text
    assert not (tmp_path / "m.nrrd").exists()


def test_item2_truncated_mask_prompt_is_refused(random_model, sphere_file, tmp_path, capsys):
    path, volume, truth = sphere_file
    prompt = truncated_copy(prompt_file(volume, truth, tmp_path / "p.nii"), tmp_path / "cut.nii", 0.5)
    code, text = run(["segment", "--image", path, "--out", tmp_path / "m.nrrd", "--model", random_model.parent,
                      "--mask-prompt", prompt], capsys)
    assert code == 2 and "mask prompt" in text and "truncated" in text, text


def test_item2_truncated_seg_mask_is_refused_by_export(tmp_path, capsys):
    folder = shared_data_path(*CT3)
    mask = sitk.ReadImage(str(shared_data_path("dcmqi-ct3slice", "liver_seg.nrrd")))
    sitk.WriteImage(mask, str(tmp_path / "liver.nii.gz"))
    cut = truncated_copy(tmp_path / "liver.nii.gz", tmp_path / "cut.nii.gz", 0.7)
    code, text = run(["export-dicom-seg", "--seg", cut, "--dicom", folder, "--out", tmp_path / "seg.dcm"], capsys)
    assert code == 2 and "truncated" in text, text
    assert not (tmp_path / "seg.dcm").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_item3_nan_and_inf_in_nifti_are_refused(random_model, tmp_path, capsys, bad):
    array = np.random.default_rng(0).normal(100, 10, (12, 30, 30)).astype(np.float32)
    array[5, 10, 10] = bad
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "v.nii.gz"))
    code, text = run(["segment", "--image", tmp_path / "v.nii.gz", "--out", tmp_path / "m.nrrd", "--model",
                      random_model.parent, "--box", "5,5,20,20", "--slice-index", "5"], capsys)
    assert code == 2 and "NaN or infinite" in text, text


# --- 4: unevenly spaced DICOM series, one rule for segment and export -----------------------------


@pytest.fixture
def series_with_gap(tmp_path):
    source = next(p for p in shared_data_path(*LIDC).rglob("*") if p.is_dir() and any(p.glob("*.dcm")))
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(source))
    folder = tmp_path / "gap"
    folder.mkdir()
    for k, f in enumerate(files):
        if k != 5:
            shutil.copy(f, folder)
    return folder


def test_item4_missing_slice_is_refused_by_segment_and_export(random_model, series_with_gap, tmp_path, capfd):
    capsys = capfd  # fd-level capture: ITK and GDCM print from C++
    code, text = run(["segment", "--image", series_with_gap, "--out", tmp_path / "m.nrrd", "--model",
                      random_model.parent, "--box", "200,200,260,260", "--slice-index", "3"], capsys)
    assert code == 2 and "not evenly spaced" in text and one_error_line(text), text
    image = sitk.ImageSeriesReader()
    image.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series_with_gap)))
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        grid = image.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(True)
    mask = sitk.Image(grid.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(grid)
    mask[250, 250, 3] = 1
    sitk.WriteImage(mask, str(tmp_path / "mask.nrrd"))
    capfd.readouterr()
    code, text = run(["export-dicom-seg", "--seg", tmp_path / "mask.nrrd", "--dicom", series_with_gap,
                      "--out", tmp_path / "seg.dcm"], capsys)
    assert code == 2 and "not evenly spaced" in text, text
    assert "WARNING" not in text and one_error_line(text), text  # ITK's own non-uniform warning is held back (item 18)


# --- 5, 6: outputs never replace each other or an input ----------------------------------------------


def test_item5_png_equal_to_out_is_refused_before_work(random_model, sphere_file, tmp_path, capsys):
    path, volume, truth = sphere_file
    out = tmp_path / "m.nrrd"
    code, text = run(["segment", "--image", path, "--out", out, "--png", out, "--model", random_model.parent] + BOX,
                     capsys)
    assert code == 2 and not out.exists(), text
    from propsam.io.atomic import check_outputs

    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="name the same file"):
        check_outputs({"--png": (tmp_path / "a.png", None), "--csv": (tmp_path / "sub" / ".." / "a.png", None)},
                      force=True)


def test_item6_force_never_overwrites_an_input(random_model, sphere_file, tmp_path, capsys):
    path, volume, truth = sphere_file
    before = path.read_bytes()
    code, text = run(["segment", "--image", path, "--out", path, "--force", "--model", random_model.parent] + BOX,
                     capsys)
    assert code == 2 and "input" in text and path.read_bytes() == before, text
    link = tmp_path / "same.nrrd"
    os.link(path, link)  # another name for the same file
    code, text = run(["segment", "--image", path, "--out", link, "--force", "--model", random_model.parent] + BOX,
                     capsys)
    assert code == 2 and path.read_bytes() == before, text


def test_item6_export_never_writes_into_the_dicom_folder(tmp_path, capsys):
    folder = tmp_path / "ct"
    shutil.copytree(shared_data_path(*CT3), folder)
    victim = sorted(folder.iterdir())[0]
    before = victim.read_bytes()
    labels = shared_data_path("dcmqi-ct3slice", "liver_seg.nrrd")
    code, text = run(["export-dicom-seg", "--seg", labels, "--dicom", folder, "--out", victim, "--force"], capsys)
    assert code == 2 and "inside the input folder" in text and victim.read_bytes() == before, text
    code, text = run(["export-dicom-seg", "--seg", labels, "--dicom", folder, "--out", folder / "new.dcm"], capsys)
    assert code == 2 and not (folder / "new.dcm").exists(), text


# --- 7: the grid each format keeps -----------------------------------------------------------------


def test_item7_nrrd_and_mha_are_exact_nifti_within_float32_and_said_so(random_model, tmp_path, capsys):
    volume, truth = sphere_volume(shape=(16, 32, 32), spacing=(0.7000000001, 0.9333333333, 4.7999999102),
                                  origin=(-12.123456789123, 300.333333333, 7.1), radius_mm=9)
    image = tmp_path / "v.nrrd"
    write_volume(volume, image)
    prompt = prompt_file(volume, truth, tmp_path / "p.nrrd")
    written = {}
    for suffix in (".nrrd", ".mha", ".nii.gz"):
        out = tmp_path / f"m{suffix}"
        code, text = run(["segment", "--image", image, "--out", out, "--model", random_model.parent,
                          "--mask-prompt", prompt, "--quiet"], capsys)
        assert code == 0, text
        written[suffix] = (sitk.ReadImage(str(out)), text)
    for suffix in (".nrrd", ".mha"):
        assert written[suffix][0].GetSpacing() == volume.spacing
        assert written[suffix][0].GetOrigin() == volume.origin
        assert "float32" not in written[suffix][1]
    nifti, text = written[".nii.gz"]
    np.testing.assert_allclose(nifti.GetSpacing(), volume.spacing, rtol=1e-6)
    np.testing.assert_allclose(nifti.GetOrigin(), volume.origin, rtol=1e-6)
    assert nifti.GetSpacing() != volume.spacing  # float32 really loses it ...
    assert "note: NIfTI stores the grid as float32" in text  # ... and the user is told


# --- 8: two runs writing one output --------------------------------------------------------------------


def test_item8_output_created_meanwhile_is_kept_and_the_run_fails(random_model, sphere_file, tmp_path, capsys, monkeypatch):
    from propsam.engine.segmenter import Segmenter

    path, volume, truth = sphere_file
    out = tmp_path / "m.nrrd"
    real_segment = Segmenter.segment

    def other_run_finishes_first(self, *args, **kwargs):
        result = real_segment(self, *args, **kwargs)
        out.write_bytes(b"the other run's mask")
        return result

    monkeypatch.setattr(Segmenter, "segment", other_run_finishes_first)
    code, text = run(["segment", "--image", path, "--out", out, "--model", random_model.parent,
                      "--mask-prompt", prompt_file(volume, truth, tmp_path / "p.nrrd")], capsys)
    assert code == 2 and "another process" in text, text
    assert out.read_bytes() == b"the other run's mask"
    assert leftovers(tmp_path, {"sphere.nrrd", "p.nrrd", "m.nrrd"}) == []


# --- 11: SIGTERM while writing; no detached headers -----------------------------------------------------

SLOW_WRITE = """
import sys, time, SimpleITK as sitk
real = sitk.WriteImage
def slow(image, name, *a, **k):
    real(image, name, *a, **k)
    print("WRITTEN", flush=True)
    time.sleep(60)
sitk.WriteImage = slow
from propsam.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_item11_sigterm_during_the_write_leaves_no_temporary_file(random_model, sphere_file, tmp_path):
    path, volume, truth = sphere_file
    prompt = prompt_file(volume, truth, tmp_path / "p.nrrd")
    env = dict(os.environ, PYTHONPATH=str(PACKAGE), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, "segment", "--image", str(path), "--out", "m.nii.gz",
                             "--model", str(random_model.parent), "--mask-prompt", str(prompt), "--quiet"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while proc.stdout.readline().strip() != "WRITTEN":
            assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
        assert any(p.name.startswith(".m.") for p in tmp_path.iterdir())  # the temporary file exists now
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "terminated" in err
    assert leftovers(tmp_path, {"sphere.nrrd", "p.nrrd"}) == []


@pytest.mark.parametrize("name", ["m.nhdr", "m.mhd"])
def test_item11_detached_header_outputs_are_refused(random_model, sphere_file, tmp_path, capsys, name):
    code, text = run(["segment", "--image", sphere_file[0], "--out", tmp_path / name, "--model", random_model.parent] + BOX,
                     capsys)
    assert code == 2 and ".nrrd" in text and one_error_line(text), text
    assert leftovers(tmp_path, {"sphere.nrrd"}) == []


# --- 16: tracebacks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [["--box", "", "--slice-index", "3"], ["--two-view-box", ""]])
def test_item16_empty_box_is_a_one_line_error(random_model, sphere_file, tmp_path, capsys, prompt):
    code, text = run(["segment", "--image", sphere_file[0], "--out", tmp_path / "m.nrrd", "--model", random_model.parent]
                     + prompt, capsys)
    assert code == 2 and "comma-separated integers" in text and one_error_line(text), text


def test_item16_memory_error_is_a_one_line_error(random_model, sphere_file, tmp_path, capsys, monkeypatch):
    from propsam.engine.segmenter import Segmenter

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(Segmenter, "segment", out_of_memory)
    path, volume, truth = sphere_file
    code, text = run(["segment", "--image", path, "--out", tmp_path / "m.nrrd", "--model", random_model.parent,
                      "--mask-prompt", prompt_file(volume, truth, tmp_path / "p.nrrd")], capsys)
    assert code == 2 and "out of memory" in text and one_error_line(text), text


MEMORY_UNDER_RLIMIT = """
import resource
from propsam.io.volume import _proc_status, available_memory_bytes, check_fits_in_memory
from propsam.errors import ResourceError
size = _proc_status()["VmSize"]
resource.setrlimit(resource.RLIMIT_AS, (size + 300 * 2**20, resource.RLIM_INFINITY))
have = available_memory_bytes()
assert have <= 300 * 2**20, have
try:
    check_fits_in_memory((512, 512, 400))  # about 1.3 GB of engine memory
except ResourceError as exc:
    print("refused:", exc)
"""


def test_item16_memory_estimate_reads_the_address_space_limit():
    env = dict(os.environ, PYTHONPATH=str(PACKAGE), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([sys.executable, "-c", MEMORY_UNDER_RLIMIT], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "crop the volume" in result.stdout


# --- 17: outputs are validated before any work ---------------------------------------------------------


@pytest.fixture
def no_engine(monkeypatch):
    """Fail the test if the model is loaded: the error must come before any computation."""
    from propsam.engine.segmenter import Segmenter

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(Segmenter, "load", refuse)


def test_item17_bad_extension_fails_before_any_work(no_engine, random_model, sphere_file, tmp_path, capsys):
    code, text = run(["segment", "--image", sphere_file[0], "--out", tmp_path / "m.txt", "--model", random_model.parent] + BOX,
                     capsys)
    assert code == 2 and "must end with" in text, text
    code, text = run(["segment", "--image", sphere_file[0], "--out", tmp_path / "m.nrrd", "--png", tmp_path / "m.jpg",
                      "--model", random_model.parent] + BOX, capsys)
    assert code == 2 and "must end with .png" in text, text


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder; needs a normal user")
def test_item17_read_only_folder_fails_before_any_work(no_engine, random_model, sphere_file, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, text = run(["segment", "--image", sphere_file[0], "--out", folder / "m.nrrd", "--model",
                          random_model.parent] + BOX, capsys)
    finally:
        folder.chmod(0o755)
    assert code == 2 and "not writable" in text, text


def test_item17_unwritable_folder_is_detected_by_a_probe(tmp_path, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    from propsam.io.atomic import check_writable

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(InputError, match="not writable"):
        check_writable(tmp_path / "m.nrrd", force=False)


def test_item17_study_report_png_suffix_is_checked_before_printing(tmp_path, capsys):
    study = tmp_path / "s.sqlite"
    assert main(["study", "simulate", str(study), "--readers", "2", "--cases", "2"]) == 0
    capsys.readouterr()
    code, text = run(["study", "report", study, "--png", tmp_path / "x.jpg"], capsys)
    assert code == 2 and one_error_line(text) and ".png" in text, text


# --- 18: messages ---------------------------------------------------------------------------------------


def test_item18_empty_paths_and_folders_have_clear_messages(random_model, sphere_file, tmp_path, capsys):
    base = ["--model", random_model.parent] + BOX
    code, text = run(["segment", "--image", "", "--out", tmp_path / "m.nrrd"] + base, capsys)
    assert code == 2 and "image path is empty" in text, text
    code, text = run(["segment", "--image", sphere_file[0], "--out", ""] + base, capsys)
    assert code == 2 and "--out path is empty" in text, text
    (tmp_path / "folder").mkdir()
    code, text = run(["segment", "--image", sphere_file[0], "--out", tmp_path / "m.nrrd", "--model", random_model.parent,
                      "--mask-prompt", tmp_path / "folder"], capsys)
    assert code == 2 and "is a folder" in text, text


def test_item18_error_after_progress_starts_on_its_own_line_without_warnings(random_model, sphere_file, tmp_path, capsys,
                                                                                 monkeypatch):
    from propsam.engine.segmenter import Segmenter

    def progress_then_fail(self, volume, prompt, options, progress=None, cancel=None):
        warnings.warn("a library warning")
        progress(3, 10)
        raise InputError("something specific")

    monkeypatch.setattr(Segmenter, "segment", progress_then_fail)
    path, volume, truth = sphere_file
    main(["segment", "--image", str(path), "--out", str(tmp_path / "m.nrrd"), "--model", str(random_model.parent),
          "--mask-prompt", str(prompt_file(volume, truth, tmp_path / "p.nrrd"))])
    err = capsys.readouterr().err
    assert "\npropsam: error: something specific" in err, err
    assert "a library warning" not in err


# --- 21: start-up ----------------------------------------------------------------------------------------

HEAVY = ("torch", "scipy", "SimpleITK", "pydicom", "highdicom", "matplotlib")
IMPORTS_OF = """
import sys
from propsam.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("IMPORTED:" + ",".join(sorted(m for m in {HEAVY} if m in sys.modules)))
"""


@pytest.mark.parametrize("argv, allowed", [
    (["--help"], set()),
    (["segment", "--help"], set()),
    (["segment", "--image", "missing.nii.gz", "--out", "m.nrrd", "--box", "1,2,3,4", "--slice-index", "0"],
     {"SimpleITK"}),
])
def test_item21_help_and_argument_errors_do_not_import_heavy_modules(tmp_path, argv, allowed):
    env = dict(os.environ, PYTHONPATH=str(PACKAGE), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([sys.executable, "-c", IMPORTS_OF.format(HEAVY=HEAVY), *argv], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    imported = set(filter(None, result.stdout.rsplit("IMPORTED:", 1)[1].strip().split(",")))
    assert imported <= allowed, result.stdout


# --- 22: threads -----------------------------------------------------------------------------------------


@pytest.fixture
def torch_threads():
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def test_item22_omp_num_threads_and_load_set_the_default(monkeypatch):
    from propsam.engine import device

    monkeypatch.setattr(device, "cpu_threads", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert device.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert device.default_threads() == 8
    monkeypatch.setattr(os, "getloadavg", lambda: (6.2, 6.0, 5.0))  # six other busy processes
    assert device.default_threads() == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (30.0, 30.0, 30.0))
    assert device.default_threads() == 1


def test_item22_segment_honours_threads_flag_and_omp_num_threads(random_model, sphere_file, tmp_path, capsys,
                                                                  monkeypatch, torch_threads):
    path, volume, truth = sphere_file
    prompt = prompt_file(volume, truth, tmp_path / "p.nrrd")
    torch_threads.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code, text = run(["segment", "--image", path, "--out", tmp_path / "a.nrrd", "--model", random_model.parent,
                      "--mask-prompt", prompt, "--device", "cpu"], capsys)
    assert code == 0 and torch_threads.get_num_threads() == 1, text
    code, text = run(["segment", "--image", path, "--out", tmp_path / "b.nrrd", "--model", random_model.parent,
                      "--mask-prompt", prompt, "--device", "cpu", "--threads", "2"], capsys)
    assert code == 0 and torch_threads.get_num_threads() == 2, text


# --- 23: batch mode --------------------------------------------------------------------------------------


def test_item23_segment_batch_rows_status_summary_and_rules(random_model, sphere_file, tmp_path, capsys):
    path, volume, truth = sphere_file
    prompt_file(volume, truth, tmp_path / "p.nrrd")
    (tmp_path / "kept.nrrd").write_bytes(b"keep me")
    (tmp_path / "prompts.csv").write_text(
        "image,out,box,mask_prompt,slice_index,slice_axis\n"
        'sphere.nrrd,a.nrrd,"12,12,28,28",,12,z\n'
        + "sphere.nrrd,b.nrrd,,p.nrrd,,\n"
        + 'sphere.nrrd,kept.nrrd,"12,12,28,28",,12,\n'
        + 'sphere.nrrd,sphere.nrrd,"12,12,28,28",,12,\n'
        + 'sphere.nrrd,c.nrrd,"12,12,60,28",,12,\n'
    )
    code, text = run(["segment-batch", tmp_path / "prompts.csv", "--model", random_model.parent, "--quiet"], capsys)
    assert code == 2, text
    lines = text.strip().splitlines()
    assert any(line.startswith("row 1: ok") for line in lines), text
    assert any(line.startswith("row 2: ok") for line in lines), text
    assert any(line.startswith("row 3: error") and "already exists" in line for line in lines), text
    assert any(line.startswith("row 4: error") and "input" in line for line in lines), text
    assert any(line.startswith("row 5: error") and "outside" in line for line in lines), text
    assert "5 row(s), 2 ok, 3 failed" in lines[-1] and "objects/minute" in lines[-1]
    assert (tmp_path / "kept.nrrd").read_bytes() == b"keep me"
    assert not (tmp_path / "c.nrrd").exists()
    # the same mask as one `segment` call
    code, text = run(["segment", "--image", path, "--out", tmp_path / "single.nrrd", "--model", random_model.parent,
                      "--mask-prompt", tmp_path / "p.nrrd"], capsys)
    assert code == 0
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b.nrrd"))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "single.nrrd"))))
    assert leftovers(tmp_path, {"sphere.nrrd", "p.nrrd", "kept.nrrd", "prompts.csv", "a.nrrd", "b.nrrd",
                                "single.nrrd"}) == []


def test_item23_segment_batch_refuses_a_bad_csv_and_duplicate_outputs(random_model, sphere_file, tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("image,output\nsphere.nrrd,a.nrrd\n")
    code, text = run(["segment-batch", tmp_path / "bad.csv", "--model", random_model.parent], capsys)
    assert code == 2 and "unknown column" in text and one_error_line(text), text
    (tmp_path / "dup.csv").write_text('image,out,box,slice_index\nsphere.nrrd,a.nrrd,"12,12,28,28",12\n'
                                      'sphere.nrrd,a.nrrd,"12,12,28,28",12\n')
    code, text = run(["segment-batch", tmp_path / "dup.csv", "--model", random_model.parent, "--quiet"], capsys)
    assert code == 2 and "also an output of row 1" in text, text
