"""C-FIND identifiers encoded straight from DICOM JSON, shared by the query service (which sends
the pending identifiers of a C-FIND ready to write) and the listener (which encodes a match that
reaches it as DICOM JSON).

A C-FIND match is a flat list of short elements, so it is encoded here directly (Implicit or
Explicit VR Little Endian) instead of through a pydicom Dataset and pydicom's writer (~0.75 ms a
match). Anything this encoder does not cover (a sequence with items, binary values it cannot
pack, a value too long for its length field, a big-endian or deflated syntax) is ``None``, and
the caller encodes that match the slow way, through pydicom: the output is the same.

The response's Specific Character Set is chosen from the values: none when they are ASCII, the
requester's own Latin-1 (ISO_IR 100) when it carries them, else UTF-8 (ISO_IR 192), which every
value the catalog holds can be written in.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.valuerep import format_number_as_ds

SPECIFIC_CHARACTER_SET = 0x00080005

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
SYNTAXES = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN})

# Explicit VR: these have a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
BINARY = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "FL": "<f", "FD": "<d"}
BINARY |= {"UV": "<Q", "SV": "<q"}
OPAQUE = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "AT"})  # left to pydicom
CODECS = {None: "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def explicit_vr(transfer_syntax: str) -> bool | None:
    """True for Explicit, False for Implicit VR Little Endian, None for a syntax not covered."""
    if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        return False
    if transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return True
    return None


def element_head(tag: int, vr: str, explicit: bool) -> bytes:
    """What comes before an element's length: its tag, and in Explicit VR its VR (and the
    reserved bytes of a long one)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if not explicit:
        return head
    return head + vr.encode("ascii") + (b"\0\0" if vr in LONG_VRS else b"")


def element(tag: int, vr: str, value: bytes, explicit: bool) -> bytes | None:
    """One data element, Little Endian; None when the value is too long for its length field."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "UN") else b" "
    head = element_head(tag, vr, explicit)
    if explicit and vr not in LONG_VRS:
        if len(value) > 0xFFFF:
            return None
        return head + struct.pack("<H", len(value)) + value
    return head + struct.pack("<I", len(value)) + value


def pn_text(value: Any) -> str:
    """A PN value of DICOM JSON (an object of component groups) as DICOM text."""
    if not isinstance(value, dict):
        return "" if value is None else str(value)
    groups = [value.get("Alphabetic", ""), value.get("Ideographic", ""), value.get("Phonetic", "")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def text_of(vr: str, values: list[Any]) -> str | None:
    """The values of a string element as DICOM text, or None when they are not plain text."""
    if vr == "PN":
        return "\\".join(pn_text(v) for v in values)
    out = []
    for v in values:
        if v is None:
            out.append("")
        elif isinstance(v, str):
            out.append(v)
        elif isinstance(v, bool) or not isinstance(v, int | float):
            return None
        elif vr == "IS":
            out.append(str(int(v)))
        elif vr == "DS":
            text = repr(v) if isinstance(v, float) else str(v)
            out.append(text if len(text) <= 16 else format_number_as_ds(float(v)))
        else:
            out.append(str(v))
    return "\\".join(out)


def charset_for(texts: list[str], requested: list[str]) -> str | None:
    """The Specific Character Set a response with these values needs (see the module)."""
    if all(t.isascii() for t in texts):
        return None
    if requested and requested[0] == "ISO_IR 100":
        try:
            for t in texts:
                t.encode("latin-1")
            return "ISO_IR 100"
        except UnicodeEncodeError:
            pass
    return "ISO_IR 192"


def json_element(tag: int, element: dict[str, Any]) -> tuple[str, str | bytes] | None:
    """An element of DICOM JSON as (VR, its DICOM text or packed binary value); None when this
    encoder does not cover it."""
    vr = element.get("vr")
    values = element.get("Value")
    if not isinstance(vr, str) or "InlineBinary" in element or "BulkDataURI" in element:
        return None
    if not values:
        return vr, b""
    if vr == "SQ" or vr in OPAQUE:
        return None
    fmt = BINARY.get(vr)
    if fmt is not None:
        try:
            return vr, b"".join(struct.pack(fmt, v) for v in values)
        except (struct.error, TypeError):
            return None
    text = text_of(vr, values)
    if text is None:
        return None
    return vr, text


def encode_identifier(
    match: dict[str, Any], requested: list[str], transfer_syntax: str
) -> bytes | None:
    """The identifier of one match (DICOM JSON, keys in any order), or None when this encoder
    does not cover it. Adds the Specific Character Set the values need."""
    explicit = explicit_vr(transfer_syntax)
    if explicit is None:
        return None
    parsed: list[tuple[int, str, str | bytes]] = []
    texts: list[str] = []
    for key, elem in match.items():
        tag = int(key, 16)
        if tag == SPECIFIC_CHARACTER_SET or not isinstance(elem, dict):
            continue
        got = json_element(tag, elem)
        if got is None:
            return None
        vr, value = got
        parsed.append((tag, vr, value))
        if isinstance(value, str):
            texts.append(value)
    charset = charset_for(texts, requested)
    if charset is not None:
        parsed.append((SPECIFIC_CHARACTER_SET, "CS", charset))
    codec = CODECS[charset]
    parts = []
    for tag, vr, value in sorted(parsed, key=lambda item: item[0]):
        raw = value.encode(codec) if isinstance(value, str) else value
        encoded = element(tag, vr, raw, explicit)
        if encoded is None:
            return None
        parts.append(encoded)
    return b"".join(parts)
