"""`propsam segment-batch PROMPTS.csv`: many objects, one model load.

Each CSV row is one object, with the columns of `propsam segment`'s options:
    image, out, [png], one of box | two_view_box | mask_prompt, [slice_index], [slice_axis]
Relative paths are taken from the CSV file's folder. Every row's outputs are validated before
any work, with the same rules as `segment` (suffix, folder, no overwrite without --force, never
an input of any row, no two outputs naming one file); rows that fail are reported and skipped.
The model is loaded once and an image shared by consecutive rows is read once. Each row's mask
(and PNG) is written atomically as soon as it is done; a failing row does not stop the others.
Exit 0 when every row succeeded, 2 when any failed (bad CSV: 2 before any work).
"""

from __future__ import annotations

import csv
import sys
import time
from argparse import Namespace
from pathlib import Path

from ..errors import InputError, PropSAMError

PATH_COLUMNS = ("image", "out", "png", "mask_prompt")
PROMPT_COLUMNS = ("box", "two_view_box", "mask_prompt")
COLUMNS = ("image", "out", "png", *PROMPT_COLUMNS, "slice_index", "slice_axis")


def register(subparsers) -> None:
    from .cli import add_engine_options

    p = subparsers.add_parser(
        "segment-batch", help="segment many objects listed in a CSV, loading the model once",
        description="Segment many objects, one CSV row each, with the model loaded once. Columns: "
        + ", ".join(COLUMNS) + ". Relative paths are taken from the CSV's folder. Per-row status, then a summary.",
    )
    p.add_argument("prompts", metavar="PROMPTS.csv",
                   help="one object per row; columns: " + ", ".join(COLUMNS) + " (see README)")
    add_engine_options(p)
    p.set_defaults(func=run_batch)


def read_rows(csv_path: str) -> list[Namespace]:
    """The CSV's rows as `segment`-like arguments (paths resolved); a malformed file is an InputError."""
    path = Path(csv_path) if str(csv_path).strip() else None
    if path is None or not path.is_file():
        raise InputError(f"prompt list {csv_path!r} does not exist or is not a file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            raw = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"prompt list {path} is not a readable CSV: {exc}") from None
    unknown = [h for h in header if h not in COLUMNS]
    if unknown or "image" not in header or "out" not in header:
        raise InputError(f"prompt list {path} needs the columns image, out and one of {', '.join(PROMPT_COLUMNS)}"
                         + (f"; unknown column(s) {', '.join(unknown)}" if unknown else ""))
    if not raw:
        raise InputError(f"prompt list {path} has no rows")
    base = path.parent
    rows = []
    for number, values in enumerate(raw, start=1):
        fields = {c: values.get(c) or None for c in COLUMNS}
        for column in PATH_COLUMNS:
            if fields[column] is not None:
                fields[column] = str(base / fields[column])
        rows.append(Namespace(row=number, **fields))
    return rows


def check_row(row: Namespace, force: bool, images: list[str], files: list[str]) -> dict:
    """Everything that can be checked before work: prompt columns, slice options, outputs."""
    from .cli import AXES, check_object_outputs

    given = [c for c in PROMPT_COLUMNS if getattr(row, c) is not None]
    if len(given) != 1:
        raise InputError(f"give exactly one of {', '.join(PROMPT_COLUMNS)} ({len(given)} given)")
    if row.image is None:
        raise InputError("image is empty")
    row.slice_axis = row.slice_axis or "z"
    if row.slice_axis not in AXES:
        raise InputError(f"slice_axis must be one of {', '.join(sorted(AXES))}, got {row.slice_axis!r}")
    if row.slice_index is not None:
        try:
            row.slice_index = int(row.slice_index)
        except ValueError:
            raise InputError(f"slice_index must be an integer, got {row.slice_index!r}") from None
    return check_object_outputs(row.out, row.png, force, images, files)


def run_batch(args) -> int:
    from .cli import ProgressLine, build_prompt, check_options, segment_options, write_object_outputs

    check_options(args)
    rows = read_rows(args.prompts)
    images = sorted({r.image for r in rows if r.image})
    files = sorted({r.mask_prompt for r in rows if r.mask_prompt})
    planned, failed = [], 0
    claimed: dict[Path, int] = {}  # output file -> row: two rows may not write one file
    for row in rows:
        try:
            outputs = check_row(row, args.force, images, files)
            for path in outputs.values():
                other = claimed.setdefault(path.resolve(), row.row)
                if other != row.row:
                    raise InputError(f"{path} is also an output of row {other}")
            planned.append((row, outputs))
        except PropSAMError as exc:
            failed += 1
            print(f"row {row.row}: error: {exc}", flush=True)
    if not planned:
        print(f"segment-batch: {len(rows)} row(s), 0 ok, {failed} failed; nothing was segmented")
        return 2

    from ..cli import Terminated
    from ..io.volume import read_volume
    from .segmenter import Segmenter

    start = time.perf_counter()
    segmenter = Segmenter.load(args.model, args.device, threads=args.threads)
    options = segment_options(args)
    done, cached = 0, (None, None)
    for index, (row, outputs) in enumerate(planned):
        progress = ProgressLine(args.quiet)
        try:
            if cached[0] != row.image:
                cached = (None, None)  # free the previous volume before reading the next
                cached = (row.image, read_volume(row.image))
            volume = cached[1]
            prompt = build_prompt(row, volume)
            prompt.validate(volume.shape)
            try:
                result = segmenter.segment(volume, prompt, options, progress=progress)
            finally:
                progress.end()
            write_object_outputs(volume, result, outputs["--out"], outputs.get("--png"), args.force,
                                 f"PropSAM {segmenter.config.name}: {Path(row.image).name}")
        except PropSAMError as exc:
            failed += 1
            print(f"row {row.row}: error: {exc}", flush=True)
            continue
        except MemoryError:
            failed += 1
            cached = (None, None)
            print(f"row {row.row}: error: out of memory; crop the volume first", flush=True)
            continue
        except (KeyboardInterrupt, Terminated) as exc:
            stopped = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated"
            print(f"propsam: {stopped} at row {row.row}: {done} mask(s) were written before it, rows from "
                  f"{row.row} on were not (no partial files)", file=sys.stderr)
            return 130 if isinstance(exc, KeyboardInterrupt) else 143
        done += 1
        lo, hi = result.stats.extent
        print(f"row {row.row}: ok: {int(result.mask.sum())} voxels on slices {lo}..{hi} along {'zyx'[result.axis]} "
              f"in {result.seconds:.2f} s; mask: {outputs['--out']}", flush=True)
    seconds = time.perf_counter() - start
    rate = done / seconds * 60 if seconds > 0 else 0.0
    print(f"segment-batch: {len(rows)} row(s), {done} ok, {failed} failed, {seconds:.1f} s with the model loaded once "
          f"({rate:.1f} objects/minute)")
    return 0 if failed == 0 else 2
