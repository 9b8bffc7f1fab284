"""Prompt-time statistics of a study and the box plot (cf. PropSAM paper, Figure 4c).

Quartiles use numpy's default (linear interpolation, "type 7"). Reduction of a one-view type is
100 * (median two-view - median one-view) / median two-view. The p-value is the two-sided
Wilcoxon rank-sum test (scipy.stats.ranksums, normal approximation) of all prompt times of
that one-view type against all two-view times, as unpaired samples.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import ranksums

from ..errors import InputError
from ..io.atomic import atomic_path, check_writable
from .records import PROMPT_TYPES, PromptRecord

BASELINE = "two_view_box"
ONE_VIEW = ("one_view_box", "one_view_sketch")
LABELS = {"one_view_box": "one-view box", "one_view_sketch": "one-view sketch", "two_view_box": "two-view box"}


@dataclass(frozen=True)
class TypeSummary:
    prompt_type: str
    n: int
    median: float
    q1: float
    q3: float
    reduction_percent: float | None  # vs two-view; None for two-view itself
    p_value: float | None

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def prompt_times(records: list[PromptRecord]) -> dict[str, np.ndarray]:
    return {
        t: np.array([r.prompt_seconds for r in records if r.prompt_type == t], dtype=float)
        for t in PROMPT_TYPES
    }


def summarise(records: list[PromptRecord]) -> list[TypeSummary]:
    if not records:
        raise InputError("the study holds no records yet; nothing to report")
    times = prompt_times(records)
    baseline = times[BASELINE]
    summaries = []
    for prompt_type, values in times.items():
        if values.size:
            q1, median, q3 = (float(v) for v in np.percentile(values, [25, 50, 75]))
        else:
            q1 = median = q3 = math.nan
        reduction = p_value = None
        if prompt_type in ONE_VIEW and values.size and baseline.size:
            base_median = float(np.median(baseline))
            reduction = 100.0 * (base_median - median) / base_median if base_median > 0 else None
            p_value = float(ranksums(values, baseline).pvalue)
        summaries.append(TypeSummary(prompt_type, int(values.size), median, q1, q3, reduction, p_value))
    return summaries


def markdown_table(summaries: list[TypeSummary]) -> str:
    lines = [
        "| prompt type | n | median (s) | IQR (s) | Q1-Q3 (s) | reduction vs two-view | p (rank-sum) |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for s in summaries:
        reduction = "-" if s.reduction_percent is None else f"{s.reduction_percent:.1f} %"
        p_value = "-" if s.p_value is None else f"{s.p_value:.3g}"
        if s.n:
            cells = f"{s.median:.2f} | {s.iqr:.2f} | {s.q1:.2f}-{s.q3:.2f}"
        else:
            cells = "- | - | -"
        lines.append(f"| {LABELS[s.prompt_type]} | {s.n} | {cells} | {reduction} | {p_value} |")
    return "\n".join(lines)


def write_box_plot(records: list[PromptRecord], out_path: str | os.PathLike, *, force: bool = False) -> Path:
    out_path = check_writable(out_path, force)
    if out_path.suffix.lower() != ".png":
        raise InputError(f"figure {out_path.name} must end with .png")
    # a bare Figure, not pyplot: no global backend switch inside Slicer's process
    from matplotlib.figure import Figure

    times = prompt_times(records)
    present = [t for t in PROMPT_TYPES if times[t].size]
    summaries = {s.prompt_type: s for s in summarise(records)}
    fig = Figure(figsize=(5, 4), dpi=150)
    ax = fig.subplots()
    ax.boxplot([times[t] for t in present], showfliers=True, widths=0.5)
    ax.set_xticks(range(1, len(present) + 1), [LABELS[t] for t in present])
    for i, t in enumerate(present, start=1):
        reduction = summaries[t].reduction_percent
        if reduction is not None:
            # the change of the median vs two-view, just right of the box
            ax.text(i + 0.28, summaries[t].median, f"{-reduction:+.0f} %", va="center", fontsize=8)
    ax.set_ylabel("prompt time (s)")
    if any(summaries[t].reduction_percent is not None for t in present):
        ax.set_xlabel("% : change of the median vs two-view box", fontsize=8)
    title = "Prompt time per prompt type"
    if any(r.simulated for r in records):
        title += "\n(SIMULATED data)"
    ax.set_title(title, fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_path, replace=force) as tmp:
        fig.savefig(tmp, format="png")
    return out_path
