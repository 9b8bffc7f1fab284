"""Segmented property codes (category and type) for DICOM-SEG segments, and the rules for the
user's text that goes into the SEG (labels, names, code meanings).

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

# most characters a value of these value representations may hold (PS3.5 table 6.2-1)
MAX_CHARACTERS = {"SH": 16, "LO": 64}


def check_text(value: str, what: str, vr: str = "LO") -> str:
    """`value` as one valid value of a DICOM string VR, else InputError.

    A backslash separates values (a\\b would be stored as two), control characters are not
    allowed, and longer text would be cut or rejected by other DICOM software. Characters
    outside ASCII are allowed: the exporter picks a character set that holds them."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} must not be blank")
    shown = value if len(value) <= 40 else value[:40] + "..."
    if "\\" in value:
        raise InputError(f"{what} {shown!r} contains a backslash, which DICOM reads as a value separator")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InputError(f"{what} {shown!r} contains a control character (e.g. a line break)")
    if len(value) > MAX_CHARACTERS[vr]:
        raise InputError(f"{what} {shown!r} has {len(value)} characters; DICOM ({vr}) allows at most {MAX_CHARACTERS[vr]}")
    return value


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
    check_text(scheme, "coding scheme", "SH")
    check_text(value, "code value")  # longer than 16 characters: stored as LongCodeValue
    check_text(meaning, "code meaning")
    return Code(value=value, scheme_designator=scheme, meaning=meaning)
