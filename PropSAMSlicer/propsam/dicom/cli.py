"""`propsam export-dicom-seg`: a mask file on a DICOM series' grid -> one DICOM-SEG file."""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.atomic import check_outputs
from ..io.volume import read_image
from .codes import DEFAULT_SEGMENT_TYPE, SEGMENT_TYPES, parse_code
from .seg_export import SegmentSpec, export_dicom_seg
from .series import UIDRepairWarning


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-dicom-seg",
        help="write a mask as DICOM-SEG referencing its DICOM series",
        description="Write a mask (NIfTI/NRRD/MHA on the grid of a DICOM series) as a DICOM "
        "Segmentation. A label map gives one segment per value. Blank source UIDs are repaired "
        "with a warning (see propsam.dicom.series) unless --no-uid-repair.",
    )
    parser.add_argument("--seg", required=True, metavar="MASK", help="mask or label map file")
    parser.add_argument("--dicom", required=True, metavar="DIR", help="folder holding exactly one DICOM series")
    parser.add_argument("--out", required=True, metavar="FILE.dcm")
    parser.add_argument("--label", action="append", metavar="NAME",
                        help="segment label; repeat once per mask value, in increasing value order")
    parser.add_argument("--segment-type", choices=sorted(SEGMENT_TYPES), default=DEFAULT_SEGMENT_TYPE,
                        help=f"preset category/type codes (default {DEFAULT_SEGMENT_TYPE})")
    parser.add_argument("--category", type=_code, metavar="SCHEME:VALUE:MEANING",
                        help="overrides the preset's segmented property category")
    parser.add_argument("--type", dest="property_type", type=_code, metavar="SCHEME:VALUE:MEANING",
                        help="overrides the preset's segmented property type, e.g. SCT:10200004:Liver")
    parser.add_argument("--edited", action="store_true",
                        help="the reader edited the result: algorithm type MANUAL instead of SEMIAUTOMATIC")
    parser.add_argument("--model", default="unspecified", help="name of the PropSAM model that made the mask")
    parser.add_argument("--no-uid-repair", action="store_true", help="refuse series with blank UIDs")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # every output is checked before any reading: never into the series folder, never over the mask
    check_outputs({"--out": (args.out, None)}, args.force, inputs=[args.seg, args.dicom])
    mask = read_image(args.seg, "--seg mask", allow_folder=False)
    values = _segment_values(mask, args.seg)
    labels = args.label or [f"Segment {v}" for v in values]
    if len(labels) != len(values):
        raise InputError(
            f"mask {args.seg} holds values {values}: give one --label per value ({len(labels)} given)"
        )
    segments = [
        SegmentSpec(
            mask=sitk.Cast(mask == int(value), sitk.sitkUInt8),
            label=label,
            edited=args.edited,
            segment_type=args.segment_type,
            category=args.category,
            property_type=args.property_type,
        )
        for value, label in zip(values, labels)
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UIDRepairWarning)
        out = export_dicom_seg(segments, args.dicom, args.out, model_name=args.model, force=args.force,
                               repair_uids=not args.no_uid_repair)
    for warning in caught:
        print(f"propsam: warning: {warning.message}", file=sys.stderr)
    print(f"wrote {out}: {len(segments)} segment(s) {', '.join(labels)}")
    return 0


def _code(text: str):
    try:
        return parse_code(text)
    except InputError as exc:  # argparse turns this into its own one-line usage error, exit 2
        raise argparse.ArgumentTypeError(str(exc)) from None


def _segment_values(mask: sitk.Image, name: str) -> list[int]:
    array = sitk.GetArrayViewFromImage(mask)
    values = np.unique(array)
    if not np.array_equal(values, np.round(values)) or values.min() < 0:
        raise InputError(f"mask {name} must hold non-negative integer labels, found {values[:6].tolist()}")
    values = [int(v) for v in values if v != 0]
    if not values:
        raise InputError(f"mask {name} is empty (all zero); nothing to export")
    return values
