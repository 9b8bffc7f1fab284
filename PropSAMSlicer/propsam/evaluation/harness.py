"""Run PropSAM and the baselines side by side on evaluation objects; write CSV, markdown and a figure.

One CSV row per object x model x method x setting. Several models (and test-time averaging
settings) run in one call, each a `Model`; model-free baselines run once. Extent errors are signed slices at each end of the
object along axis 0: positive = the prediction runs past the true end, negative = stops short.
Means in the markdown use headline objects only (>= 5 slices); HD95/ASD means skip empty
predictions, which are counted as failures instead.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, TextIO

import numpy as np
from scipy import ndimage

from ..engine.prompts import BoxPrompt, MaskPrompt
from ..engine.propagation import PropagationOptions, user_options
from ..engine.roi import slice_extent
from ..engine.segmenter import SegmentOptions
from ..engine.tta import ORIENTATIONS, Orientation, TestTimeAugmentation, propmask_orientations, tta_name
from ..errors import InputError
from ..io.atomic import atomic_path
from .baselines import box2mask_chain, box_guide, copy_baseline, registration_baseline
from .descriptors import describe
from .metrics import average_surface_distance, dice, edge_separability, hd95
from .objects import GENERATED_DATASETS, EvalObject, Prompts, nearest_filled_slice, prompts_on, seed_of
from .orientations import agreement, orientation_setting, turn_object
from .report import report_markdown
from .robustness import (
    DEFAULT, FIGURE as ROBUSTNESS_FIGURE, has_robustness, robustness_markdown, shift_setting, thickness_setting,
    write_robustness_figure,
)

METHODS = ("propsam-box", "propsam-box-jitter", "propsam-mask", "copy", "registration", "box2mask-chain")
MODEL_FREE = ("copy", "registration")
SLICE_SHIFTS = (-0.20, -0.15, -0.10, -0.05, 0.05, 0.10, 0.15, 0.20)  # of the object's extent
THICKNESSES_MM = (10.0, 20.0, 30.0, 40.0)  # propsam-mask only
OUTPUTS = ("results.csv", "summary.md", "dice.png")


@dataclass(frozen=True)
class Model:
    """One engine configuration under evaluation: a label for the tables, the loaded networks, the
    test-time averaging and the leak limit it runs with (default: what `propsam segment` runs)."""

    label: str
    segmenter: object
    tta: TestTimeAugmentation = TestTimeAugmentation()
    leak_limit: float | None = None  # None: the engine's default; 0: off (propagation.user_options)

    def tta_name(self) -> str:
        """The averaging it runs with, PropMask's count resolved for its device ("" for a baseline)."""
        if not self.segmenter:
            return ""
        return tta_name(replace(self.tta, propmask=propmask_orientations(self.tta, self.segmenter.device)))


NO_MODEL = Model("-", None)  # the model-free baselines' rows


def as_models(models) -> list[Model]:
    """A Segmenter, a Model, a list of Models, or None (model-free methods only) -> a list of Models."""
    if models is None:
        return []
    if isinstance(models, Model):
        return [models]
    if isinstance(models, (list, tuple)):
        return list(models)
    return [Model(models.config.name, models)]


@dataclass(frozen=True)
class Run:
    method: str
    setting: str
    prompts: Prompts
    thickness_mm: float = PropagationOptions().thickness_mm
    orientation: Orientation = ORIENTATIONS[0]


def plan_runs(obj: EvalObject, methods: Iterable[str], robustness: bool, orientations: bool = False) -> list[Run]:
    methods = [m for m in METHODS if m in methods]
    runs = [Run(m, DEFAULT, obj.prompts) for m in methods]
    if orientations:  # the model's own methods only: the baselines carry no learned orientation
        runs += [Run(m, orientation_setting(o), obj.prompts, orientation=o)
                 for o in ORIENTATIONS[1:] for m in methods if m.startswith("propsam")]
    if not robustness:
        return runs
    home = obj.prompts.slice_index
    for shift in SLICE_SHIFTS:
        index = nearest_filled_slice(obj.truth, home + round(shift * obj.slices))
        prompts = prompts_on(obj.truth, index, seed_of(obj.volume_id, obj.name, shift))
        runs += [Run(m, shift_setting(shift), prompts) for m in methods]
    if "propsam-mask" in methods:
        runs += [Run("propsam-mask", thickness_setting(t), obj.prompts, t) for t in THICKNESSES_MM]
    return runs


def predict(run: Run, obj: EvalObject, model: Model) -> np.ndarray:
    """The mask `propsam segment` would return for this run's prompt on this object's volume (turned
    by the run's orientation, and turned back)."""
    if run.orientation != ORIENTATIONS[0]:
        turned = turn_object(obj, run.orientation)
        return np.ascontiguousarray(run.orientation.invert(predict(replace(run, orientation=ORIENTATIONS[0],
                                                                           prompts=turned.prompts), turned, model)))
    p, volume, segmenter = run.prompts, obj.volume, model.segmenter
    if run.method == "copy":
        return copy_baseline(volume, p.slice_index, p.mask)
    if run.method == "registration":
        return registration_baseline(volume, p.slice_index, p.mask)
    if run.method == "box2mask-chain":
        return box2mask_chain(volume, p.slice_index, box_guide(segmenter, volume.array[p.slice_index], p.box), segmenter)
    prompt = {
        "propsam-box": BoxPrompt(p.slice_index, p.box),
        "propsam-box-jitter": BoxPrompt(p.slice_index, p.jittered_box),
        "propsam-mask": MaskPrompt(p.slice_index, p.mask),
    }[run.method]
    propagation = user_options(run.thickness_mm, PropagationOptions().context, model.leak_limit)
    options = SegmentOptions(propagation=propagation, tta=model.tta)
    return segmenter.segment(volume, prompt, options).mask


def _cropped_pair(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to their joint box: the same surface distances for far less work (the metrics
    treat outside the array as background, and outside the joint box is background too)."""
    box = ndimage.find_objects(((prediction > 0) | (truth > 0)).astype(np.uint8))[0]
    return prediction[box], truth[box]


def score(run: Run, obj: EvalObject, prediction: np.ndarray, seconds: float, error: str = "", model: Model = NO_MODEL) -> dict:
    spacing = tuple(obj.volume.axis_spacing(a) for a in range(3))
    pred, truth = _cropped_pair(prediction, obj.truth)
    got = slice_extent(prediction)
    first, last = obj.extent
    s = run.prompts.slice_index
    return {
        "dataset": obj.dataset, "volume": obj.volume_id, "object": obj.name, "headline": obj.headline,
        "modality": obj.modality, "kind": obj.kind, "truth_source": obj.truth_source, "subject": obj.subject,
        "true_slices": obj.slices, "model": model.label, "tta": model.tta_name(),
        "method": run.method, "setting": run.setting, "prompt_slice": s, "prompt_area": int((obj.truth[s] > 0).sum()),
        "prompt_edge": round(edge_separability(obj.volume.array[s], obj.truth[s]), 4),
        "thickness_mm": run.thickness_mm if run.method.startswith("propsam") else "",
        "dice": dice(pred, truth), "prompt_dice": dice(prediction[s], obj.truth[s]), "hd95_mm": hd95(pred, truth, spacing), "asd_mm": average_surface_distance(pred, truth, spacing),
        "seconds": round(seconds, 3), "pred_slices": int((prediction > 0).reshape(prediction.shape[0], -1).any(1).sum()),
        "true_first": first, "true_last": last,
        "pred_first": got[0] if got else "", "pred_last": got[1] if got else "",
        "over_lower": first - got[0] if got else "", "over_upper": got[1] - last if got else "",
        "error": error,
    }


def evaluate_object(obj: EvalObject, models, methods: Iterable[str], robustness: bool = False,
                    orientations: bool = False) -> list[dict]:
    shape = {k: round(v, 4) for k, v in asdict(describe(obj.truth, tuple(obj.volume.axis_spacing(a) for a in range(3)))).items()}
    rows = []
    runs = plan_runs(obj, methods, robustness, orientations)
    for model in [NO_MODEL] + as_models(models):
        mine = [r for r in runs if (r.method in MODEL_FREE) == (model is NO_MODEL)]
        turned: dict[str, list[tuple[dict, np.ndarray]]] = {}  # method -> its rows and masks per orientation
        for run in mine:
            start = time.perf_counter()
            try:
                prediction, error = predict(run, obj, model), ""
            except InputError as exc:  # e.g. Box2Mask finds nothing in the box: a failed case, not a crash
                prediction, error = np.zeros_like(obj.truth), str(exc)
            rows.append({**score(run, obj, prediction, time.perf_counter() - start, error, model), **shape, "agreement": ""})
            if orientations and (run.setting == DEFAULT or run.orientation != ORIENTATIONS[0]):
                turned.setdefault(run.method, []).append((rows[-1], prediction))
        for group in turned.values():
            if len(group) > 1:
                value = agreement([p for _, p in group])
                for row, _ in group:
                    row["agreement"] = value
    return rows


def _label(row: dict) -> str:
    return row["method"] if row.get("model", "-") in ("-", "") else f"{row['model']}/{row['method']}"


def labelled(rows: list[dict]) -> list[dict]:
    """Rows with a "label" naming model and method when several models ran, the method alone otherwise
    (so a single model's tables and its bundle manifest read as before). A model seen with several
    TTA settings (e.g. merged runs) gets its setting in the label."""
    ttas: dict[str, set] = {}
    for r in rows:
        ttas.setdefault(r.get("model", "-"), set()).add(r.get("tta", ""))
    rows = [{**r, "model": f"{r['model']} tta{r['tta']}"} if len(ttas.get(r.get("model", "-"), ())) > 1 else r for r in rows]
    several = len({r.get("model", "-") for r in rows} - {"-", ""}) > 1
    return [{**r, "label": _label(r) if several else r["method"]} for r in rows]


def _mean_sd(values: list[float], digits: int) -> str:
    finite = [v for v in values if math.isfinite(v)]
    return f"{np.mean(finite):.{digits}f} ± {np.std(finite):.{digits}f}" if finite else "-"


def _median(values) -> str:
    values = [v for v in values if v != ""]
    return f"{np.median(values):+.1f}" if values else "-"


def markdown_summary(rows: list[dict]) -> str:
    rows = labelled(rows)
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        objects = {(r["volume"], r["object"]): r["headline"] for r in mine}
        thin = sum(not h for h in objects.values())
        out.append(f"### {dataset}: {len(objects) - thin} object(s)" + (f" ({thin} under 5 slices left out)" if thin else ""))
        out.append("")
        out.append("| method | setting | n | Dice | HD95 (mm) | ASD (mm) | failed | lower end (slices) | upper end (slices) | s / object |")
        out.append("|---|---|---:|---|---|---|---:|---:|---:|---:|")
        used = [r for r in mine if r["headline"]]
        for method, setting in dict.fromkeys((r["label"], r["setting"]) for r in used if not r["setting"].startswith("orient")):
            group = [r for r in used if r["label"] == method and r["setting"] == setting]
            failed = sum(not math.isfinite(r["hd95_mm"]) for r in group)
            out.append(
                f"| {method} | {setting} | {len(group)} | {_mean_sd([r['dice'] for r in group], 3)} | "
                f"{_mean_sd([r['hd95_mm'] for r in group], 1)} | {_mean_sd([r['asd_mm'] for r in group], 1)} | {failed} | "
                f"{_median([r['over_lower'] for r in group])} | {_median([r['over_upper'] for r in group])} | "
                f"{np.mean([r['seconds'] for r in group]):.2f} |"
            )
        out.append("")
    out.append("Ends: median signed extent error in slices (+ runs past the true end, - stops short).")
    out += ["", report_markdown(rows)]
    if has_robustness(rows):
        out += ["", robustness_markdown(rows)]
    return "\n".join(out) + "\n"


def headline_means(rows: list[dict]) -> dict:
    """method -> dataset (and 'real objects', phantoms and synthetic volumes left out) -> n, mean Dice, mean finite HD95,
    over headline objects at the default setting: the table a model bundle records."""
    used = [r for r in labelled(rows) if r["headline"] and r["setting"] == DEFAULT]
    table: dict = {}
    for method in dict.fromkeys(r["label"] for r in used):
        mine = [r for r in used if r["label"] == method]
        groups = {d: [r for r in mine if r["dataset"] == d] for d in dict.fromkeys(r["dataset"] for r in mine)}
        groups["real objects"] = [r for r in mine if r["dataset"] not in GENERATED_DATASETS]
        table[method] = {
            name: {"n": len(g), "dice": round(float(np.mean([r["dice"] for r in g])), 4),
                   "hd95_mm": round(float(np.mean([r["hd95_mm"] for r in g if math.isfinite(r["hd95_mm"])] or [math.inf])), 2)}
            for name, g in groups.items() if g
        }
    return table


FLOAT_COLUMNS = ("dice", "prompt_dice", "prompt_edge", "hd95_mm", "asd_mm", "seconds", "agreement", "thickness_mm")
INT_COLUMNS = ("true_slices", "prompt_slice", "prompt_area", "pred_slices", "true_first", "true_last", "pred_first", "pred_last",
               "over_lower", "over_upper")


def read_results(path: Path) -> list[dict]:
    """results.csv back as rows with the types the harness wrote them with (empty cells stay "")."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"method", "setting", "dataset", "headline", "dice", "hd95_mm"} <= set(rows[0]):
        raise InputError(f"{path} is not a results.csv written by `propsam evaluate`")
    for r in rows:
        r["headline"] = r["headline"] == "True"
        for columns, kind in ((FLOAT_COLUMNS, float), (INT_COLUMNS, int)):
            for c in columns:
                if r.get(c, "") != "":
                    r[c] = kind(r[c])
    return rows


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_figure(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend inside Slicer's process

    used = [r for r in rows if r["headline"] and r["setting"] == DEFAULT]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig = Figure(figsize=(max(4.0, 3.2 * len(datasets)), 4), dpi=120)
    axes = np.atleast_1d(fig.subplots(1, len(datasets), sharey=True, squeeze=False)[0])
    rng = np.random.default_rng(0)  # strip jitter: the same picture every run
    for ax, dataset in zip(axes, datasets):
        methods = list(dict.fromkeys(r["method"] for r in used if r["dataset"] == dataset))
        values = [[r["dice"] for r in used if r["dataset"] == dataset and r["method"] == m] for m in methods]
        if methods:
            ax.boxplot(values, widths=0.6, showfliers=False, medianprops={"color": "k"})
            for i, (m, v) in enumerate(zip(methods, values), start=1):
                ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=10, alpha=0.7, zorder=3, color=f"C{METHODS.index(m)}")
            ax.set_xticks(range(1, len(methods) + 1), methods, rotation=40, ha="right", fontsize=7)
        ax.set_title(dataset, fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Dice")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_outputs(rows: list[dict], out_dir: Path) -> list[Path]:
    if not rows:
        raise InputError("no evaluation object was found: nothing to write")
    paths = [out_dir / name for name in OUTPUTS]
    for path, text in zip(paths, (csv_text(rows), markdown_summary(rows))):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    write_figure(rows, paths[2])
    if has_robustness(rows):
        paths.append(out_dir / ROBUSTNESS_FIGURE)
        write_robustness_figure(rows, paths[-1], METHODS)
    return paths


def run_evaluation(objects: Iterable[EvalObject], models, out_dir: Path, methods: Iterable[str] = METHODS,
                   robustness: bool = False, max_objects: int | None = None, log: TextIO | None = None,
                   orientations: bool = False) -> list[dict]:
    """Evaluate each object in turn (a progress line per object on `log`), then write OUTPUTS to out_dir.

    objects: any iterable of EvalObject (objects.make_object builds one from a Volume and a truth mask).
    models: a Segmenter, a Model or a list of Models (None: model-free methods only).
    orientations: also run the model's methods under the 7 other in-plane orientations (orientations.py)."""
    methods = tuple(methods)
    rows: list[dict] = []
    for i, obj in enumerate(itertools.islice(objects, max_objects), start=1):
        start = time.perf_counter()
        mine = evaluate_object(obj, models, methods, robustness, orientations)
        rows += mine
        with atomic_path(Path(out_dir) / OUTPUTS[0]) as tmp:  # the rows so far survive an interrupted run
            tmp.write_text(csv_text(rows))
        dices = ", ".join(f"{_label(r)} {r['dice']:.3f}" for r in mine if r["setting"] == DEFAULT)
        flag = "" if obj.headline else ", thin: not in the means"
        print(f"[{i}] {obj.key} ({obj.slices} slices{flag}): Dice {dices} ({time.perf_counter() - start:.1f} s)",
              file=log or sys.stderr, flush=True)
    write_outputs(rows, Path(out_dir))
    return rows
