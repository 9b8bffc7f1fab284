"""`propsam segment`: outputs on the input's exact grid, and every bad input -> exit 2, nothing written."""

import numpy as np
import pytest
import SimpleITK as sitk

from phantom_volumes import oblique_direction, sphere_volume, write_volume
from propsam.cli import main


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def mask_prompt_file(volume, truth, path, axis=0):
    k = int(np.moveaxis(truth, axis, 0).reshape(truth.shape[axis], -1).sum(1).argmax())
    prompt = np.zeros_like(truth)
    index = [slice(None)] * 3
    index[axis] = k
    prompt[tuple(index)] = np.take(truth, k, axis=axis)
    write_volume(type(volume)(prompt, volume.spacing, volume.origin, volume.direction), path)
    return path


def assert_same_grid(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_oblique_volume_output_lies_on_the_input_grid(random_model, tmp_path, capsys, suffix):
    volume, truth = sphere_volume(shape=(20, 36, 40), spacing=(0.7, 0.9, 3.0), direction=oblique_direction(30),
                                  origin=(-12.5, 40.25, 7.0))
    image_path = tmp_path / f"oblique{suffix}"
    write_volume(volume, image_path)
    prompt = mask_prompt_file(volume, truth, tmp_path / f"prompt{suffix}")
    out, png = tmp_path / f"out{suffix}", tmp_path / "preview.png"
    code, text = run(["segment", "--image", image_path, "--out", out, "--model", random_model.parent,
                      "--mask-prompt", prompt, "--png", png, "--device", "cpu"], capsys)
    assert code == 0, text
    assert_same_grid(sitk.ReadImage(str(out)), sitk.ReadImage(str(image_path)))
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkUInt8
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "segmented" in text


def test_flipped_nifti_keeps_its_stored_direction(random_model, tmp_path, capsys):
    volume, truth = sphere_volume(shape=(16, 32, 30), spacing=(1.0, 1.2, 2.5), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    image_path = tmp_path / "flipped.nii.gz"
    write_volume(volume, image_path)
    prompt = mask_prompt_file(volume, truth, tmp_path / "prompt.nii.gz", axis=1)
    out = tmp_path / "out.nii.gz"
    code, text = run(["segment", "--image", image_path, "--out", out, "--model", random_model.parent, "--mask-prompt", prompt], capsys)
    assert code == 0, text
    written = sitk.ReadImage(str(out))
    assert_same_grid(written, sitk.ReadImage(str(image_path)))
    # the prompt slice comes back voxel for voxel: no silent flip between array and file
    assert np.array_equal(sitk.GetArrayFromImage(written)[:, 15][truth[:, 15] > 0], np.ones(int(truth[:, 15].sum()), np.uint8))


def test_anisotropic_ct_spleen(random_model, tmp_path, capsys, shared_data):
    image = shared_data("msd-spleen2-crop", "sub-spleen2_ct.nii.gz")
    label = sitk.ReadImage(str(shared_data("msd-spleen2-crop", "sub-spleen2_ct_seg-manual.nii.gz")))
    truth = sitk.GetArrayFromImage(label) > 0
    z = int(truth.sum((1, 2)).argmax())
    prompt = np.zeros(truth.shape, np.uint8)
    prompt[z] = truth[z]
    prompt_image = sitk.GetImageFromArray(prompt)
    prompt_image.CopyInformation(label)
    sitk.WriteImage(prompt_image, str(tmp_path / "prompt.nii.gz"))
    out = tmp_path / "spleen.nii.gz"
    code, text = run(["segment", "--image", image, "--out", out, "--model", random_model.parent, "--mask-prompt", tmp_path / "prompt.nii.gz"], capsys)
    assert code == 0, text
    assert_same_grid(sitk.ReadImage(str(out)), sitk.ReadImage(str(image)))


def test_sagittal_dicom_series_with_2d_mask_prompt(random_model, tmp_path, capsys, shared_data):
    folder = shared_data("dicom-mr-decubitus", "3_t1_fl2d_sag")
    reader = sitk.ImageSeriesReader()
    series = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(series)
    image = reader.Execute()
    rows, cols = image.GetSize()[1], image.GetSize()[0]
    disc = np.zeros((rows, cols), np.uint8)
    yy, xx = np.ogrid[:rows, :cols]
    disc[(yy - rows // 2) ** 2 + (xx - cols // 2) ** 2 < (min(rows, cols) // 6) ** 2] = 1
    sitk.WriteImage(sitk.GetImageFromArray(disc), str(tmp_path / "disc.nrrd"))
    out = tmp_path / "sag.nrrd"
    k = image.GetSize()[2] // 2
    code, text = run(["segment", "--image", folder, "--out", out, "--model", random_model.parent,
                      "--mask-prompt", tmp_path / "disc.nrrd", "--slice-index", k, "--slice-axis", "z"], capsys)
    assert code == 0, text
    written = sitk.ReadImage(str(out))
    assert_same_grid(written, image)
    assert abs(image.GetDirection()[8]) < 0.5  # the series really is not axial
    assert np.array_equal(sitk.GetArrayFromImage(written)[k] > 0, disc > 0)


def test_existing_output_needs_force(random_model, sphere_file, tmp_path, capsys):
    path, volume, truth = sphere_file
    out = tmp_path / "out.nrrd"
    out.write_bytes(b"keep me")
    prompt = mask_prompt_file(volume, truth, tmp_path / "p.nrrd")
    args = ["segment", "--image", path, "--out", out, "--model", random_model.parent, "--mask-prompt", prompt]
    code, text = run(args, capsys)
    assert code == 2 and "--force" in text and out.read_bytes() == b"keep me"
    code, text = run(args + ["--force"], capsys)
    assert code == 0, text
    assert sitk.ReadImage(str(out)).GetSize() == (40, 40, 24)


def write_raw(path, array, spacing=None, vector=False):
    image = sitk.GetImageFromArray(array, isVector=vector)
    if spacing:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def write_bytes(path, data):
    path.write_bytes(data)
    return path


BAD_BOX = ["--box", "5,5,20,20", "--slice-index", "10"]


@pytest.mark.parametrize(
    "make_image, prompt, message",
    [
        (lambda d: d / "missing.nrrd", BAD_BOX, "does not exist"),
        (lambda d: write_bytes(d / "junk.nii.gz", b"not an image"), BAD_BOX, "cannot read image"),
        (lambda d: write_raw(d / "flat.nrrd", np.random.rand(30, 30).astype(np.float32)), BAD_BOX, "3D image"),
        (lambda d: write_raw(d / "4d.nrrd", np.random.rand(3, 4, 20, 20).astype(np.float32)), BAD_BOX, "3D image"),
        (lambda d: write_raw(d / "rgb.nrrd", np.random.rand(12, 20, 20, 3).astype(np.float32), vector=True), BAD_BOX, "scalar image"),
        (lambda d: write_raw(d / "nan.nrrd", np.where(np.random.rand(12, 30, 30) > 0.99, np.nan, 1).astype(np.float32)), BAD_BOX, "NaN or infinite"),
        (lambda d: write_raw(d / "inf.nrrd", np.where(np.random.rand(12, 30, 30) > 0.99, np.inf, 1).astype(np.float32)), BAD_BOX, "NaN or infinite"),
        (lambda d: write_raw(d / "const.nrrd", np.full((12, 30, 30), 3, np.int16)), BAD_BOX, "constant"),
        ("sphere", ["--box", "5,5,60,20", "--slice-index", "10"], "outside the slice"),
        ("sphere", ["--box", "5,5,5,20", "--slice-index", "10"], "zero width"),
        ("sphere", ["--box", "20,5,5,20", "--slice-index", "10"], "inverted"),
        ("sphere", ["--box", "5,5,20,20", "--slice-index", "24"], "slice index 24 is outside"),
        ("sphere", ["--box", "5,5,20", "--slice-index", "3"], "4 comma-separated"),
        ("sphere", ["--box", "a,b,c,d", "--slice-index", "3"], "integers"),
        ("sphere", ["--box", "5,5,20,20"], "needs --slice-index"),
        ("sphere", ["--two-view-box", "5,5,2,20,20,40"], "outside the volume"),
        ("sphere", ["--box", "5,5,20,20", "--slice-index", "10", "--thickness-mm", "0"], "thickness"),
        ("sphere", ["--box", "5,5,20,20", "--slice-index", "10", "--leak-limit", "0.5"], "--leak-limit"),
    ],
)
def test_bad_input_exits_2_with_a_reason_and_writes_nothing(random_model, sphere_file, tmp_path, capsys, make_image, prompt, message):
    image = sphere_file[0] if make_image == "sphere" else make_image(tmp_path)
    out = tmp_path / "out.nrrd"
    code, text = run(["segment", "--image", image, "--out", out, "--model", random_model.parent] + prompt, capsys)
    assert code == 2, text
    assert message in text
    assert text.strip().count("\n") == 0  # one line
    assert not out.exists()


@pytest.mark.parametrize("kind, message", [("empty", "empty"), ("two_slices", "several slices"), ("other_grid", "not on the image's grid")])
def test_bad_mask_prompts(random_model, sphere_file, tmp_path, capsys, kind, message):
    path, volume, truth = sphere_file
    prompt = np.zeros_like(truth)
    spacing = volume.spacing
    if kind == "two_slices":
        prompt[10, 15:20, 15:20] = prompt[11, 15:20, 15:20] = 1
        prompt[10:12, 3, 3] = 1
        prompt[10, 30, 10] = prompt[11, 10, 30] = 1
    if kind == "other_grid":
        prompt[10, 15:20, 15:20] = 1
        spacing = (2.0, 2.0, 2.0)
    prompt_path = tmp_path / "prompt.nrrd"
    write_volume(type(volume)(prompt, spacing, volume.origin, volume.direction), prompt_path)
    out = tmp_path / "out.nrrd"
    code, text = run(["segment", "--image", path, "--out", out, "--model", random_model.parent, "--mask-prompt", prompt_path], capsys)
    assert code == 2 and message in text, text
    assert not out.exists()


def test_volume_too_large_for_memory_is_refused_before_reading(random_model, sphere_file, tmp_path, capsys, monkeypatch):
    import propsam.io.volume as io_volume

    monkeypatch.setattr(io_volume, "available_memory_bytes", lambda: 100_000)
    out = tmp_path / "out.nrrd"
    code, text = run(["segment", "--image", sphere_file[0], "--out", out, "--model", random_model.parent] + BAD_BOX, capsys)
    assert code == 2 and "crop the volume" in text
    assert not out.exists()


def test_missing_and_corrupt_weights(random_model, sphere_file, tmp_path, capsys):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(random_model.parent, bundle)
    (bundle / "propmask.pt").write_bytes(b"garbage")
    out = tmp_path / "out.nrrd"
    code, text = run(["segment", "--image", sphere_file[0], "--out", out, "--model", bundle] + BAD_BOX, capsys)
    assert code == 2 and "sha256" in text and not out.exists()
    code, text = run(["segment", "--image", sphere_file[0], "--out", out, "--model", tmp_path / "none"] + BAD_BOX, capsys)
    assert code == 2 and "not found" in text and not out.exists()


def test_interrupt_writes_nothing(random_model, sphere_file, tmp_path, capsys, monkeypatch):
    from propsam.engine.segmenter import Segmenter

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Segmenter, "segment", interrupted)
    out = tmp_path / "out.nrrd"
    path, volume, truth = sphere_file
    code, text = run(["segment", "--image", path, "--out", out, "--model", random_model.parent,
                      "--mask-prompt", mask_prompt_file(volume, truth, tmp_path / "p.nrrd")], capsys)
    assert code == 130 and not out.exists()


def test_info_lists_versions_and_device(capsys):
    code, text = run(["info"], capsys)
    assert code == 0 and "torch" in text and "device (auto)" in text
