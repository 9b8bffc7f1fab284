"""The paper's robustness checks, pooled over every headline object: mean Dice as the prompt slice
moves away from the largest slice, and as propagation thickness changes (propsam-mask only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path

FIGURE = "robustness.png"
DEFAULT = "default"  # the setting of the runs without a robustness change


def shift_setting(shift: float) -> str:
    """0.1 (a share of the object's extent) -> 'slice+10%'; slice_shift reads it back."""
    return f"slice{100 * shift:+.0f}%"


def thickness_setting(thickness_mm: float) -> str:
    return f"thickness{thickness_mm:g}mm"


def slice_shift(setting: str) -> float | None:
    """'slice-10%' -> -10.0, the default setting -> 0.0, anything else -> None."""
    if setting == DEFAULT:
        return 0.0
    if setting.startswith("slice") and setting.endswith("%"):
        return float(setting[len("slice"):-1])
    return None


def thickness(row: dict) -> float | None:
    return float(row["thickness_mm"]) if row["setting"].startswith("thickness") or (
        row["setting"] == DEFAULT and row["method"] == "propsam-mask") else None


def has_robustness(rows: list[dict]) -> bool:
    """Rows of a prompt-slice shift or a thickness change (orientation rows are not robustness rows)."""
    return any(r["setting"].startswith(("slice", "thickness")) for r in rows)


def _mean_dice_by(rows: list[dict], key) -> dict[str, dict[float, float]]:
    """method -> {key value: mean Dice} over headline rows whose key is not None."""
    groups: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        k = key(r)
        if r["headline"] and k is not None:
            groups.setdefault(r["method"], {}).setdefault(k, []).append(r["dice"])
    return {m: {k: float(np.mean(v)) for k, v in sorted(g.items())} for m, g in groups.items()}


def by_shift(rows: list[dict]) -> dict[str, dict[float, float]]:
    return _mean_dice_by(rows, lambda r: slice_shift(r["setting"]))


def by_thickness(rows: list[dict]) -> dict[float, float]:
    return _mean_dice_by(rows, thickness).get("propsam-mask", {})


def robustness_markdown(rows: list[dict]) -> str:
    shifts, thick = by_shift(rows), by_thickness(rows)
    objects = len({(r["volume"], r["object"]) for r in rows if r["headline"]})
    values = sorted({k for per in shifts.values() for k in per})
    out = [f"### Robustness: mean Dice over {objects} headline object(s), all datasets pooled", "",
           "Prompt slice moved by a share of the object's extent (0 = its largest slice):", "",
           "| method | " + " | ".join(f"{v:+.0f} %" for v in values) + " |",
           "|---|" + "---:|" * len(values)]
    for method, per in shifts.items():
        out.append(f"| {method} | " + " | ".join(f"{per[v]:.3f}" if v in per else "-" for v in values) + " |")
    if thick:
        out += ["", "propsam-mask, propagation thickness:", "",
                "| " + " | ".join(f"{t:g} mm" for t in thick) + " |", "|" + "---:|" * len(thick),
                "| " + " | ".join(f"{d:.3f}" for d in thick.values()) + " |"]
    return "\n".join(out) + "\n"


def write_robustness_figure(rows: list[dict], path: Path, method_order: tuple[str, ...]) -> None:
    """Colours follow `method_order`, as in the Dice figure."""
    from matplotlib.figure import Figure  # no pyplot: no global backend inside Slicer's process

    shifts, thick = by_shift(rows), by_thickness(rows)
    fig = Figure(figsize=(9, 3.6), dpi=120)
    left, right = fig.subplots(1, 2, sharey=True)
    for method, per in shifts.items():
        left.plot(list(per), list(per.values()), marker="o", ms=3, label=method, color=f"C{method_order.index(method)}")
    left.set_xlabel("prompt slice shift (% of the object's extent)")
    left.set_ylabel("mean Dice")
    left.legend(fontsize=7)
    right.plot(list(thick), list(thick.values()), marker="o", color=f"C{method_order.index('propsam-mask')}")
    right.set_xlabel("propagation thickness (mm), propsam-mask")
    for ax in (left, right):
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
