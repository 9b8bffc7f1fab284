"""PNG montage: the prompt slice and a few propagated slices with the mask outlined."""

from __future__ import annotations

import os

import numpy as np

from ..errors import ResourceError
from .atomic import AtomicOutputs, atomic_path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with


def check_png(path) -> None:
    """A written PNG is complete: it starts with the signature and ends with the IEND chunk."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - len(PNG_END)))
        tail = f.read()
    if head != PNG_SIGNATURE or tail != PNG_END:
        raise ResourceError("the PNG read back is incomplete")


def write_preview(image: np.ndarray, mask: np.ndarray, axis: int, prompt_index: int, path: str | os.PathLike,
                  title: str = "", panels: int = 6, *, force: bool = True, outputs: AtomicOutputs | None = None) -> None:
    """Write the montage atomically (verified with `check_png`); with `outputs` it joins that group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..engine.roi import slice_extent

    extent = slice_extent(mask, axis)
    picks = [prompt_index]
    if extent is not None:
        extra = np.unique(np.linspace(extent[0], extent[1], panels - 1).round().astype(int))
        picks += [int(i) for i in extra if i != prompt_index]
    lo, hi = np.percentile(image, [1, 99])
    fig, axes = plt.subplots(1, len(picks), figsize=(2.6 * len(picks), 2.9), squeeze=False)
    for ax, index in zip(axes[0], picks):
        ax.imshow(np.take(image, index, axis=axis), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        plane = np.take(mask, index, axis=axis)
        if plane.any():
            ax.contour(plane, levels=[0.5], colors=["#ff3030" if index == prompt_index else "#30ff60"], linewidths=1)
        ax.set_title(("prompt " if index == prompt_index else "") + f"{'zyx'[axis]}={index}", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        if outputs is not None:
            fig.savefig(outputs.add(path, check_png), dpi=90, format="png")
        else:
            with atomic_path(path, replace=force, verify=check_png) as tmp:
                fig.savefig(tmp, dpi=90, format="png")
    finally:
        plt.close(fig)
