"""The README demo: segment a generated CT-like lesion from a preset box with the shipped model.

Writes sample_ct.nii.gz (the volume), sample_mask.nii.gz, sample_preview.png and prints a timing
line plus the Dice against the phantom's known truth.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


DEMO_SEED = 11


def main(argv: list[str] | None = None) -> int:
    from .cli import main as propsam_main
    from .engine.roi import mask_bbox
    from .evaluation.objects import largest_slice
    from .evaluation.metrics import dice
    from .io.volume import Volume, read_volume, write_mask
    from .training.phantoms import make_phantom

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", default="out")
    parser.add_argument("--model", default="lite")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    phantom = make_phantom(DEMO_SEED, n_objects=1)
    truth = phantom.labels == 1
    volume = Volume(phantom.image, phantom.spacing, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image_path, mask_path, png_path = out / "sample_ct.nii.gz", out / "sample_mask.nii.gz", out / "sample_preview.png"
    write_mask(volume, truth, out / "sample_truth.nii.gz")
    import SimpleITK as sitk

    sitk.WriteImage(volume.to_sitk(), str(image_path))
    z = largest_slice(truth)
    r0, c0, r1, c1 = mask_bbox(truth[z])
    box = f"{c0},{r0},{c1},{r1}"
    print(f"sample: {image_path} {volume.shape[::-1]} voxels, spacing {tuple(round(s, 2) for s in volume.spacing)} mm; "
          f"box {box} on axial slice {z}")
    code = propsam_main(["segment", "--image", str(image_path), "--out", str(mask_path), "--png", str(png_path),
                         "--box", box, "--slice-index", str(z), "--model", args.model, "--force"])
    if code == 0:
        print(f"Dice against the phantom's truth: {dice(read_volume(mask_path).array, truth):.3f}")
    return code


if __name__ == "__main__":
    sys.exit(main())
