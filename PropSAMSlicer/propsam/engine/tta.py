"""In-plane orientations and test-time averaging over them.

The 8 in-plane orientations are the flips and transposes of a plane's (rows, cols): the dihedral
group of the square. Test-time averaging (TTA) sends every model-space crop to a network under the
first N orientations in ONE batch, turns each output back, and averages the probabilities. The
networks' crops are square, so a transpose is as cheap as a flip. N is 1, 2, 4 or 8, and the first
N orientations form a group (identity; + transpose; + half turn and anti-transpose; + the
remaining four), so the averaged answer is exactly the same under each of those N orientations of
the input. Nothing is random: the engine stays deterministic.

`Orientation` also serves the evaluation's orientation mode (evaluation/orientations.py), so a
volume, a truth mask, a box and a network crop are all turned by this one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Orientation:
    """Transpose (rows <-> cols) first, then reverse the rows and/or the cols; on the last two axes."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def name(self) -> str:
        parts = [p for p, on in (("T", self.transpose), ("flipR", self.flip_rows), ("flipC", self.flip_cols)) if on]
        return "+".join(parts) or "identity"

    def apply(self, x):
        """numpy array or torch tensor (..., rows, cols) -> the same data in this orientation."""
        if self.transpose:
            x = x.transpose(-1, -2) if isinstance(x, torch.Tensor) else np.swapaxes(x, -1, -2)
        return _flip(x, self.flip_rows, self.flip_cols)

    def invert(self, x):
        """The inverse of apply: invert(apply(x)) == x."""
        x = _flip(x, self.flip_rows, self.flip_cols)
        if self.transpose:
            x = x.transpose(-1, -2) if isinstance(x, torch.Tensor) else np.swapaxes(x, -1, -2)
        return x

    def box(self, box: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """(c0, r0, c1, r1) inclusive on a plane of `shape` (rows, cols) -> the box on the turned plane."""
        c0, r0, c1, r1 = box
        rows, cols = shape
        if self.transpose:
            c0, r0, c1, r1, rows, cols = r0, c0, r1, c1, cols, rows
        if self.flip_rows:
            r0, r1 = rows - 1 - r1, rows - 1 - r0
        if self.flip_cols:
            c0, c1 = cols - 1 - c1, cols - 1 - c0
        return c0, r0, c1, r1


def _flip(x, rows: bool, cols: bool):
    dims = [d for d, on in ((-2, rows), (-1, cols)) if on]
    if not dims:
        return x
    return torch.flip(x, dims) if isinstance(x, torch.Tensor) else np.flip(x, dims)


# ordered so that every prefix of length 1, 2, 4 or 8 is a group (see the module docstring)
ORIENTATIONS = (
    Orientation(),
    Orientation(transpose=True),
    Orientation(flip_rows=True, flip_cols=True),
    Orientation(transpose=True, flip_rows=True, flip_cols=True),
    Orientation(flip_rows=True),
    Orientation(flip_cols=True),
    Orientation(transpose=True, flip_rows=True),
    Orientation(transpose=True, flip_cols=True),
)
COUNTS = (1, 2, 4, 8)
AUTO = 0  # PropMask's count left to the device the networks run on (propmask_orientations)
GPU_PROPMASK = 2  # PropMask's count on a GPU when left to the device


@dataclass(frozen=True)
class TestTimeAugmentation:
    """How many in-plane orientations each network averages over (1 = off).

    Box2Mask's default chosen by benchmarks/bench_tta.py against the speed target (lite <= 2 s per
    80-slice object on 2 CPU cores); results/orientation/ has the accuracy and cost of each
    setting. PropMask's default (AUTO) depends on the device: see propmask_orientations.
    """

    __test__ = False  # not a pytest class despite the name

    box2mask: int = 8
    propmask: int = AUTO
    # turn each object into the pose its prompt's pixels pick (engine/content_view.py); off: the
    # networks see the slices as stored (after the direction flips)
    content_view: bool = True

    def __post_init__(self) -> None:
        if self.box2mask not in COUNTS:
            raise ValueError(f"test-time augmentation for box2mask must be one of {COUNTS}, got {self.box2mask}")
        if self.propmask not in COUNTS + (AUTO,):
            raise ValueError(f"test-time augmentation for propmask must be one of {COUNTS} or {AUTO} (auto), got {self.propmask}")


def propmask_orientations(tta: TestTimeAugmentation, device) -> int:
    """PropMask's orientation count: as set, or for AUTO, GPU_PROPMASK on a GPU and 1 on the CPU.
    Averaging PropMask over 2 orientations gained +0.008 (mask) / +0.007 (box) Dice on the
    tuning objects, intervals above 0 (results/propmask_tta/); it doubles PropMask's work, which a
    GPU does in the same time but which takes 2 CPU cores past the 2 s target (3.2 s)."""
    if tta.propmask != AUTO:
        return tta.propmask
    return GPU_PROPMASK if torch.device(device).type in ("cuda", "mps") else 1


OFF = TestTimeAugmentation(1, 1)  # no averaging (the content view stays on)


def orientations(count: int) -> tuple[Orientation, ...]:
    if count not in COUNTS:
        raise ValueError(f"orientation count must be one of {COUNTS}, got {count}")
    return ORIENTATIONS[:count]


def stack_turned(x: torch.Tensor, count: int) -> torch.Tensor:
    """(B, ..., S, S) -> (count * B, ..., S, S): the batch under each orientation, orientation-major."""
    return torch.cat([o.apply(x) for o in orientations(count)]) if count > 1 else x


def mean_turned_back(prob: torch.Tensor, count: int) -> torch.Tensor:
    """(count * B, ..., S, S) per-orientation maps -> (B, ...) their mean, each turned back first."""
    if count == 1:
        return prob
    chunks = prob.chunk(count)
    return torch.stack([o.invert(c) for o, c in zip(orientations(count), chunks)]).mean(0)


def mean_over(values: torch.Tensor, count: int) -> torch.Tensor:
    """(count * B, ...) per-orientation scalars (e.g. presence) -> (B, ...) their mean."""
    return values if count == 1 else torch.stack(values.chunk(count)).mean(0)


STORED = "-stored"  # suffix of a setting without the content view


def parse_tta(text: str) -> TestTimeAugmentation:
    """'8x2' -> Box2Mask over 8 orientations, PropMask over 2, in the content view; 'off' = '1x1';
    'auto' for PropMask's count ('8xauto') leaves it to the device; a '-stored' suffix
    ('8x1-stored', 'off-stored') turns the content view off (the CLIs' --tta)."""
    from ..errors import InputError

    spec = text.strip().lower()
    content_view = not spec.endswith(STORED)
    spec = spec.removesuffix(STORED)
    try:
        box2mask, propmask = ("1", "1") if spec == "off" else spec.split("x")
        if propmask != "auto" and int(propmask) == AUTO:
            raise ValueError("0 is not a count")
        return TestTimeAugmentation(int(box2mask), AUTO if propmask == "auto" else int(propmask), content_view)
    except ValueError:
        raise InputError(f"--tta expects BOX2MASKxPROPMASK orientation counts from {COUNTS} (e.g. 8x1; PropMask's may be "
                         f"'auto': 2 on a GPU, 1 on the CPU) or 'off', "
                         f"optionally with '{STORED}' (no content view), got {text!r}") from None


def tta_name(tta: TestTimeAugmentation) -> str:
    propmask = "auto" if tta.propmask == AUTO else tta.propmask
    return f"{tta.box2mask}x{propmask}" + ("" if tta.content_view else STORED)
