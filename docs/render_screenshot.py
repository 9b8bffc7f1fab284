"""Render docs/screenshots/propsam-result.png: a real PropSAM result, drawn with matplotlib.

This is NOT a screenshot of 3D Slicer (no desktop Slicer was available where it was made). It
shows what the module computes: the shipped lite model run on a real CT (MSD spleen, from the
shared data folder) from a box on the object's largest axial slice, as the panel would run it,
with the manual reference for comparison.

    python docs/render_screenshot.py [--data ../shared/data] [--out docs/screenshots/propsam-result.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PropSAMSlicer"))


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from propsam.engine.prompts import BoxPrompt
    from propsam.engine.roi import mask_bbox
    from propsam.engine.segmenter import Segmenter
    from propsam.evaluation.metrics import dice
    from propsam.io.volume import read_volume

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots" / "propsam-result.png")
    args = parser.parse_args()
    folder = args.data / "msd-spleen2-crop"
    image, reference = read_volume(folder / "sub-spleen2_ct.nii.gz"), read_volume(folder / "sub-spleen2_ct_seg-manual.nii.gz")
    truth = reference.array > 0
    k = int(np.argmax(truth.sum(axis=(1, 2))))  # the largest slice, where a user draws the box
    r0, c0, r1, c1 = mask_bbox(truth[k])
    prompt = BoxPrompt(k, (c0, r0, c1, r1), 0)
    result = Segmenter.load("lite", "cpu").segment(image, prompt)
    mask = result.mask > 0
    score = dice(mask, truth)

    sx, sy, sz = image.spacing
    window = dict(cmap="gray", vmin=-160, vmax=240)
    fig, (axial, coronal) = plt.subplots(1, 2, figsize=(10, 5.2), facecolor="#222222",
                                         gridspec_kw={"width_ratios": [1, 1]})
    axial.imshow(image.array[k], aspect=sy / sx, **window)
    axial.contour(truth[k], levels=[0.5], colors="#4fc3f7", linewidths=1.2)
    axial.contour(mask[k], levels=[0.5], colors="#ffd54f", linewidths=1.6)
    axial.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False, ec="#ff8a65", lw=1.5, ls="--"))
    axial.set_title(f"axial slice {k}: box prompt (orange), PropSAM (yellow), manual (blue)", color="w", fontsize=9)
    row = int(round((r0 + r1) / 2))
    coronal.imshow(image.array[:, row, :], aspect=sz / sx, origin="lower", **window)
    coronal.contour(truth[:, row, :], levels=[0.5], colors="#4fc3f7", linewidths=1.2)
    coronal.contour(mask[:, row, :], levels=[0.5], colors="#ffd54f", linewidths=1.6)
    coronal.axhline(k, color="#ff8a65", lw=1, ls="--")
    lo, hi = result.stats.extent
    coronal.set_title(f"coronal reformat, row {row}: propagated to slices {lo}..{hi}", color="w", fontsize=9)
    for ax in (axial, coronal):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"PropSAM (lite model, CPU) on MSD spleen CT from one box: Dice {score:.3f} vs manual."
                 "\nRendered with matplotlib from a real run; not a 3D Slicer screenshot.",
                 color="w", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, facecolor=fig.get_facecolor())
    print(f"wrote {args.out}: slice {k}, box {prompt.box}, extent {lo}..{hi}, Dice {score:.3f}")


if __name__ == "__main__":
    main()
