"""Segmented property codes (category and type) for DICOM-SEG segments.

Presets cover what PropSAM usually segments; any other concept is given as
"SCHEME:VALUE:MEANING", e.g. "SCT:10200004:Liver".
"""

from __future__ import annotations

from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

from ..errors import InputError

# name -> (segmented property category, segmented property type)
SEGMENT_TYPES: dict[str, tuple[Code, Code]] = {
    "tissue": (codes.SCT.Tissue, codes.SCT.Tissue),
    "organ": (codes.SCT.AnatomicalStructure, codes.SCT.Organ),
    "lesion": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion),
    "tumor": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm),
    "mass": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Mass),
}
DEFAULT_SEGMENT_TYPE = "tissue"


def segment_type_codes(name: str) -> tuple[Code, Code]:
    try:
        return SEGMENT_TYPES[name]
    except KeyError:
        raise InputError(
            f"unknown segment type {name!r}; choose one of {', '.join(SEGMENT_TYPES)}"
        ) from None


def parse_code(text: str) -> Code:
    """A code written as SCHEME:VALUE:MEANING (the meaning may itself contain colons)."""
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise InputError(f"code {text!r} must be written as SCHEME:VALUE:MEANING, e.g. SCT:10200004:Liver")
    scheme, value, meaning = (p.strip() for p in parts)
    return Code(value=value, scheme_designator=scheme, meaning=meaning)
