"""`propsam segment` and `propsam info`.

One object is done in three steps that `propsam segment-batch` (engine/batch.py) shares:
`check_object_outputs` validates every output before any work, `build_prompt` reads the prompt,
and `write_object_outputs` writes the mask and its PNG together (both or neither).
Heavy modules (torch, SimpleITK, matplotlib) are imported inside the functions that need them,
so `propsam --help` and argument errors stay fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError
from .prompts import AXES


def add_engine_options(p) -> None:
    """Options shared by `segment` and `segment-batch`."""
    p.add_argument("--model", default="lite", help="lite, paper, or a model folder / manifest.json")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--threads", type=int,
                   help="CPU threads for the engine (default: $OMP_NUM_THREADS if set, else the idle cores)")
    p.add_argument("--thickness-mm", type=float, default=20.0, help="propagation thickness per round (mm)")
    p.add_argument("--context", type=float, default=1.5, help="ROI size as a multiple of the mask's box")
    p.add_argument("--leak-limit", type=float, default=None,
                   help="a slice larger than this many times the prompt's area ends the object (a leak into a "
                   "neighbour; the prompt belongs on the object's largest slice); 0 = off (default: the engine's, 2)")
    p.add_argument("--tta", default=None, help="in-plane test-time averaging, BOX2MASKxPROPMASK orientations "
                   "(1/2/4/8; 8x8 = slowest; PropMask's may be 'auto') or 'off' (default: the engine's, 8xauto: PropMask "
                   "over 2 on a GPU, over 1 on the CPU, where 2 would pass the 2 s target); the networks see each object in "
                   "the pose its prompt picks, so the result does not depend on the stored axes; a '-stored' "
                   "suffix (e.g. 8x1-stored) shows them the slices as stored instead")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def register(subparsers) -> None:
    p = subparsers.add_parser("segment", help="segment one object from a one-view (or two-view) prompt")
    p.add_argument("--image", required=True, help="NIfTI/NRRD/MHA file or a DICOM series folder")
    p.add_argument("--out", required=True, help="output mask (.nrrd, .mha, .nii.gz, .nii), on the image's grid")
    p.add_argument("--png", help="write an overlay montage PNG here")
    add_engine_options(p)
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--box", help="X0,Y0,X1,Y1: inclusive array indices on the prompt slice (see README)")
    prompt.add_argument("--mask-prompt", help="mask on the image grid with one non-empty slice, or a 2D mask file")
    prompt.add_argument("--two-view-box", help="X0,Y0,Z0,X1,Y1,Z1: inclusive array indices of a 3D box")
    p.add_argument("--slice-index", type=int, help="prompt slice index (with --box or a 2D --mask-prompt)")
    p.add_argument("--slice-axis", default="z", choices=sorted(AXES), help="array axis the prompt slice is normal to")
    p.add_argument("--corrections", help="corrections.json: corrections applied in order after the run (see docs/CORRECTIONS.md)")
    p.set_defaults(func=run_segment)

    q = subparsers.add_parser("info", help="versions, device and models found")
    q.set_defaults(func=run_info)


def _ints(text: str, count: int, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{flag} expects {count} comma-separated integers, got {text!r}") from None
    if len(values) != count:
        raise InputError(f"{flag} expects {count} comma-separated integers, got {len(values)}")
    return values


def check_options(args) -> None:
    if not 1.0 <= args.context <= 4.0:
        raise InputError(f"--context must be within 1..4, got {args.context}")
    if not 0 < args.thickness_mm <= 200:
        raise InputError(f"--thickness-mm must be within (0, 200], got {args.thickness_mm}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    if args.leak_limit is not None:
        from .propagation import check_leak_limit

        check_leak_limit(args.leak_limit, "--leak-limit")
    if args.tta:
        from .tta import parse_tta

        parse_tta(args.tta)  # a bad setting is refused before anything is read


def check_object_outputs(out, png, force: bool, images: list, files: list = ()) -> dict:
    """Every output of one object, validated before any work (see io.atomic.check_outputs).
    `images` may be DICOM series folders (nothing may be written inside one); `files` are other
    inputs, which must be files (a folder given there is refused when it is read)."""
    from ..io.atomic import check_outputs
    from ..io.volume import OUTPUT_SUFFIXES

    inputs = [*images, *(f for f in files if f and not Path(f).is_dir())]
    return check_outputs({"--out": (out, OUTPUT_SUFFIXES), "--png": (png, (".png",))}, force, inputs)


def build_prompt(args, volume):
    """The prompt from --box / --two-view-box / --mask-prompt (+ --slice-index/--slice-axis)."""
    from ..io.volume import Volume, read_image
    from .prompts import BoxPrompt, MaskPrompt, TwoViewBoxPrompt

    axis = AXES[args.slice_axis]
    if args.box is not None:
        box = _ints(args.box, 4, "--box")
        if args.slice_index is None:
            raise InputError("--box needs --slice-index (and --slice-axis if not z)")
        return BoxPrompt(args.slice_index, box, axis)
    if args.two_view_box is not None:
        return TwoViewBoxPrompt(_ints(args.two_view_box, 6, "--two-view-box"))
    import SimpleITK as sitk

    image = read_image(args.mask_prompt, "mask prompt", allow_2d=True, allow_folder=False)
    if image.GetDimension() == 2:
        if args.slice_index is None:
            raise InputError("a 2D --mask-prompt needs --slice-index (and --slice-axis if not z)")
        return MaskPrompt(args.slice_index, sitk.GetArrayFromImage(image) > 0, axis)
    prompt_volume = Volume.from_sitk(image)
    if not prompt_volume.same_grid(volume):
        raise InputError("--mask-prompt is not on the image's grid (size, spacing, origin or direction differ)")
    return MaskPrompt.from_volume_mask(prompt_volume.array > 0)


def write_object_outputs(volume, result, out: Path, png: Path | None, force: bool, title: str) -> None:
    """The mask and its preview, committed together: never a mask without its requested PNG."""
    from ..io.atomic import atomic_outputs
    from ..io.preview import write_preview
    from ..io.volume import write_mask

    with atomic_outputs(replace=force) as outputs:
        write_mask(volume, result.mask, out, outputs=outputs)
        if png is not None:
            write_preview(volume.array, result.mask, result.axis, result.slice_index, png, title=title, outputs=outputs)


def nifti_grid_note(volume, out: Path) -> str:
    """NIfTI keeps the grid only to float32: say so when that changes this image's grid."""
    import numpy as np

    from ..io.volume import geometry_rtol

    if geometry_rtol(out) == 1e-12:
        return ""
    values = np.array(volume.spacing + volume.origin, dtype=np.float64)
    change = float(np.abs(values.astype(np.float32).astype(np.float64) - values).max())
    if change == 0:
        return ""
    return (f"note: NIfTI stores the grid as float32; {out.name}'s spacing/origin differ from the input's by up to "
            f"{change:.2g} mm (.nrrd or .mha keep it exactly)")


class ProgressLine:
    """'propagating: k/n slices' rewritten in place on stderr; `end` closes the line, so that a
    following message (an error too) starts on a line of its own."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.open = False

    def __call__(self, done: int, total: int) -> None:
        if not self.quiet:
            print(f"\rpropagating: {done}/{total} slices", end="", file=sys.stderr, flush=True)
            self.open = True

    def end(self) -> None:
        if self.open:
            print(file=sys.stderr, flush=True)
            self.open = False


def segment_options(args):
    from .propagation import user_options
    from .segmenter import SegmentOptions

    from .tta import TestTimeAugmentation, parse_tta

    tta = parse_tta(args.tta) if args.tta else TestTimeAugmentation()
    return SegmentOptions(propagation=user_options(args.thickness_mm, args.context, args.leak_limit), tta=tta)


def run_segment(args) -> int:
    from ..io.volume import read_volume

    check_options(args)
    outputs = check_object_outputs(args.out, args.png, args.force, [args.image], [args.mask_prompt, args.corrections])
    volume = read_volume(args.image)
    prompt = build_prompt(args, volume)
    prompt.validate(volume.shape)
    # torch is imported only now, once the inputs and outputs are known to be usable
    from .confidence import slice_confidence
    from .corrections import apply_corrections, read_corrections
    from .propagation import LEAK, ends_text
    from .segmenter import Segmenter

    corrections = read_corrections(args.corrections, volume) if args.corrections else []

    segmenter = Segmenter.load(args.model, args.device, threads=args.threads)
    progress = ProgressLine(args.quiet)
    options = segment_options(args)
    try:
        result = segmenter.segment(volume, prompt, options, progress=progress)
        result = apply_corrections(segmenter, volume, result, corrections, options, progress=progress)
    finally:
        progress.end()
    out, png = outputs["--out"], outputs.get("--png")
    write_object_outputs(volume, result, out, png, args.force, f"PropSAM {segmenter.config.name}: {Path(args.image).name}")
    note = nifti_grid_note(volume, out)
    if note:
        print(f"propsam: {note}", file=sys.stderr)
    lo, hi = result.stats.extent
    print(
        f"segmented {int(result.mask.sum())} voxels on slices {lo}..{hi} along {'zyx'[result.axis]} "
        f"in {result.seconds:.2f} s ({result.stats.slices_predicted} slices predicted, {result.stats.rounds} rounds, "
        f"device {segmenter.device.type}); mask: {out}" + (f"; preview: {png}" if png else "")
    )
    print(f"ends ({ends_text(result.stats.stop_reasons)})"
          + ("; if the object goes on, raise --leak-limit" if LEAK in result.stats.stop_reasons.values() else ""))
    suspects = slice_confidence(result.mask, result.axis, result.stats.presence, result.stats.agreement).suspects()
    print(f"least confident slices: {', '.join(map(str, suspects)) or 'none'}" + (f" (after {len(corrections)} correction(s))" if corrections else ""))
    return 0


def run_info(args) -> int:
    import numpy as np
    import SimpleITK as sitk
    import torch

    from .. import __version__
    from ..weights import MANIFEST, SHIPPED_MODELS_DIR, read_manifest
    from .device import default_threads, pick_device

    print(f"propsam {__version__}; python {sys.version.split()[0]}; torch {torch.__version__}; "
          f"SimpleITK {sitk.Version.VersionString()}; numpy {np.__version__}")
    print(f"device (auto): {pick_device('auto')}; engine CPU threads (default): {default_threads()}")
    manifests = sorted(SHIPPED_MODELS_DIR.glob(f"*/{MANIFEST}"))
    if not manifests:
        print(f"models: none found in {SHIPPED_MODELS_DIR}")
    for path in manifests:
        manifest = read_manifest(path)
        print(f"model {manifest['name']}: {path.parent} ({', '.join(e['file'] for e in manifest['networks'].values())})")
    return 0
