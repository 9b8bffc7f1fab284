"""PNG montage: the prompt slice and a few propagated slices with the mask outlined."""

from __future__ import annotations

import os

import numpy as np

from .atomic import atomic_path


def write_preview(image: np.ndarray, mask: np.ndarray, axis: int, prompt_index: int, path: str | os.PathLike,
                  title: str = "", panels: int = 6) -> None:
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
