"""Issue 13's table: one CT, one tight box, only the stored direction matrix changed.

The MSD spleen crop from ../shared/data, the box (28, 31, 155, 144) on slice 15, the shipped
model; the array stays the same while the direction is the file's, identity, x flipped or
y flipped, so the engine's canonical flips present the slices to the networks in another
in-plane orientation each time. Prints Dice and the predicted slice extent per --tta setting
(engine/tta.py; '-stored' = without the content view).

    python benchmarks/stored_direction.py [--model lite] [--settings 8x1-stored,8x1] [--threads 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "msd-spleen2-crop"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lite")
    parser.add_argument("--settings", default="1x1-stored,8x1-stored,8x1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=str(DATA), help="folder with sub-spleen2_ct.nii.gz and its manual label")
    args = parser.parse_args()

    from propsam.engine.prompts import BoxPrompt
    from propsam.engine.roi import slice_extent
    from propsam.engine.segmenter import SegmentOptions, Segmenter
    from propsam.engine.tta import parse_tta
    from propsam.evaluation.metrics import dice
    from propsam.io.volume import Volume, read_volume

    image = read_volume(Path(args.data) / "sub-spleen2_ct.nii.gz")
    truth = read_volume(Path(args.data) / "sub-spleen2_ct_seg-manual.nii.gz").array > 0.5
    segmenter = Segmenter.load(args.model, "cpu", args.threads)
    settings = args.settings.split(",")
    directions = {"as in the file": np.asarray(image.direction, float).reshape(3, 3), "identity": np.eye(3),
                  "x flipped only": np.diag([-1.0, 1.0, 1.0]), "y flipped only": np.diag([1.0, -1.0, 1.0])}
    print(f"model {args.model}; box (28, 31, 155, 144) on slice 15; truth spans slices {slice_extent(truth)}")
    print("| stored direction | " + " | ".join(f"{s}: Dice | extent" for s in settings) + " |")
    print("|---|" + "---:|---|" * len(settings))
    for name, direction in directions.items():
        volume = Volume(image.array, image.spacing, image.origin, tuple(direction.ravel()))
        cells = []
        for setting in settings:
            result = segmenter.segment(volume, BoxPrompt(15, (28, 31, 155, 144)), SegmentOptions(tta=parse_tta(setting)))
            first, last = slice_extent(result.mask)
            cells.append(f"{dice(result.mask, truth):.3f} | {first}-{last}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
