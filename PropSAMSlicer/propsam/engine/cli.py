"""`propsam segment` and `propsam info`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from .prompts import AXES


def register(subparsers) -> None:
    p = subparsers.add_parser("segment", help="segment one object from a one-view (or two-view) prompt")
    p.add_argument("--image", required=True, help="NIfTI/NRRD/MHA file or a DICOM series folder")
    p.add_argument("--out", required=True, help="output mask (.nii.gz, .nrrd, .mha), on the image's grid")
    p.add_argument("--model", default="lite", help="lite, paper, or a model folder / manifest.json")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--thickness-mm", type=float, default=20.0, help="propagation thickness per round (mm)")
    p.add_argument("--context", type=float, default=1.5, help="ROI size as a multiple of the mask's box")
    p.add_argument("--tta", default=None, help="in-plane test-time averaging, BOX2MASKxPROPMASK orientations "
                   "(1/2/4/8; e.g. 8x8 = most invariant, slowest) or 'off' (default: the engine's, 8x1)")
    p.add_argument("--png", help="write an overlay montage PNG here")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--box", help="X0,Y0,X1,Y1: inclusive array indices on the prompt slice (see README)")
    prompt.add_argument("--mask-prompt", help="mask on the image grid with one non-empty slice, or a 2D mask file")
    prompt.add_argument("--two-view-box", help="X0,Y0,Z0,X1,Y1,Z1: inclusive array indices of a 3D box")
    p.add_argument("--slice-index", type=int, help="prompt slice index (with --box or a 2D --mask-prompt)")
    p.add_argument("--slice-axis", default="z", choices=sorted(AXES), help="array axis the prompt slice is normal to")
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


def build_prompt(args, volume):
    from ..io.volume import read_image
    from .prompts import BoxPrompt, MaskPrompt, TwoViewBoxPrompt

    axis = AXES[args.slice_axis]
    if args.box:
        if args.slice_index is None:
            raise InputError("--box needs --slice-index (and --slice-axis if not z)")
        return BoxPrompt(args.slice_index, _ints(args.box, 4, "--box"), axis)
    if args.two_view_box:
        return TwoViewBoxPrompt(_ints(args.two_view_box, 6, "--two-view-box"))
    import SimpleITK as sitk

    image = read_image(args.mask_prompt) if not _is_2d(args.mask_prompt) else sitk.ReadImage(str(args.mask_prompt))
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 2:
        if args.slice_index is None:
            raise InputError("a 2D --mask-prompt needs --slice-index (and --slice-axis if not z)")
        return MaskPrompt(args.slice_index, array > 0, axis)
    from ..io.volume import Volume

    prompt_volume = Volume.from_sitk(image)
    if not prompt_volume.same_grid(volume):
        raise InputError("--mask-prompt is not on the image's grid (size, spacing, origin or direction differ)")
    return MaskPrompt.from_volume_mask(prompt_volume.array > 0)


def _is_2d(path: str) -> bool:
    import SimpleITK as sitk

    if not Path(path).is_file():
        raise InputError(f"mask prompt {path} does not exist")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"cannot read mask prompt {path}") from None
    return reader.GetDimension() == 2


def run_segment(args) -> int:
    from ..io.atomic import check_writable
    from ..io.preview import write_preview
    from ..io.volume import read_volume, write_mask
    from .propagation import PropagationOptions
    from .segmenter import SegmentOptions, Segmenter
    from .tta import TestTimeAugmentation, parse_tta

    check_writable(args.out, args.force)
    if args.png:
        check_writable(args.png, args.force)
    if not 1.0 <= args.context <= 4.0:
        raise InputError(f"--context must be within 1..4, got {args.context}")
    if not 0 < args.thickness_mm <= 200:
        raise InputError(f"--thickness-mm must be within (0, 200], got {args.thickness_mm}")
    tta = parse_tta(args.tta) if args.tta else TestTimeAugmentation()
    volume = read_volume(args.image)
    prompt = build_prompt(args, volume)
    prompt.validate(volume.shape)
    segmenter = Segmenter.load(args.model, args.device)

    def progress(done: int, total: int) -> None:
        if not args.quiet:
            print(f"\rpropagating: {done}/{total} slices", end="", file=sys.stderr, flush=True)

    options = SegmentOptions(propagation=PropagationOptions(thickness_mm=args.thickness_mm, context=args.context), tta=tta)
    result = segmenter.segment(volume, prompt, options, progress=progress)
    if not args.quiet:
        print(file=sys.stderr)
    write_mask(volume, result.mask, args.out)
    if args.png:
        write_preview(volume.array, result.mask, result.axis, result.slice_index, args.png,
                      title=f"PropSAM {segmenter.config.name}: {Path(args.image).name}")
    lo, hi = result.stats.extent
    print(
        f"segmented {int(result.mask.sum())} voxels on slices {lo}..{hi} along {'zyx'[result.axis]} "
        f"in {result.seconds:.2f} s ({result.stats.slices_predicted} slices predicted, {result.stats.rounds} rounds, "
        f"device {segmenter.device.type}); mask: {args.out}" + (f"; preview: {args.png}" if args.png else "")
    )
    return 0


def run_info(args) -> int:
    import SimpleITK as sitk
    import torch

    from .. import __version__
    from ..weights import MANIFEST, SHIPPED_MODELS_DIR, read_manifest
    from .device import pick_device

    print(f"propsam {__version__}; python {sys.version.split()[0]}; torch {torch.__version__}; "
          f"SimpleITK {sitk.Version.VersionString()}; numpy {np.__version__}")
    print(f"device (auto): {pick_device('auto')}; torch CPU threads: {torch.get_num_threads()}")
    manifests = sorted(SHIPPED_MODELS_DIR.glob(f"*/{MANIFEST}"))
    if not manifests:
        print(f"models: none found in {SHIPPED_MODELS_DIR}")
    for path in manifests:
        manifest = read_manifest(path)
        print(f"model {manifest['name']}: {path.parent} ({', '.join(e['file'] for e in manifest['networks'].values())})")
    return 0
