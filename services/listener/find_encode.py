"""Pending C-FIND responses written straight from the query service's DICOM JSON.

pynetdicom spends ~1.5 ms on every pending response: a pydicom Dataset from the JSON, the
identifier encoded by pydicom's writer, and the response command built as a Dataset and encoded
again, although it is the same for every pending of a request. A C-FIND match is a flat list of
short elements, so this module encodes it directly (Implicit or Explicit VR Little Endian), builds
the pending command set once per request, and hands both to the association's DUL as one P-DATA
(two PDVs: the command, then the identifier; PS3.8 9.3.5 allows several PDVs in a P-DATA-TF).

Anything this encoder does not cover (a sequence with items, binary values, a value too long for
its length field, a big-endian or deflated syntax) is returned as ``None``, and the caller sends
that match the slow way, through pynetdicom: the output is the same, only slower.
"""

from __future__ import annotations

import struct
import time
from typing import Any, cast

from pydicom.valuerep import format_number_as_ds
from pynetdicom.pdu_primitives import P_DATA

from edge.common.direct import DATA_SET_PRESENT, command_set
from edge.common.direct import element as encode_element

PENDING = 0xFF00
C_FIND_RSP = 0x8020
SPECIFIC_CHARACTER_SET = 0x00080005

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

# Explicit VR: these have a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_BINARY = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "FL": "<f", "FD": "<d"}
_BINARY |= {"UV": "<Q", "SV": "<q"}
_OPAQUE = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "AT"})  # left to pydicom
_CODECS = {None: "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def _pn(value: Any) -> str:
    if not isinstance(value, dict):
        return "" if value is None else str(value)
    groups = [value.get("Alphabetic", ""), value.get("Ideographic", ""), value.get("Phonetic", "")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _text(vr: str, values: list[Any]) -> str | None:
    """The values of a string element as DICOM text, or None when they are not plain text."""
    if vr == "PN":
        return "\\".join(_pn(v) for v in values)
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


def _charset(texts: list[str], requested: list[str]) -> str | None:
    """As :func:`edge.listener.find_scp.response_charset`: none for ASCII, the requester's
    Latin-1 when it carries the values, else UTF-8."""
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


def encode_identifier(
    match: dict[str, Any], requested: list[str], transfer_syntax: str
) -> bytes | None:
    """The identifier of one match (DICOM JSON, keys in any order), or None when this encoder
    does not cover it. Adds the Specific Character Set the values need."""
    if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        explicit = False
    elif transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        explicit = True
    else:
        return None
    parsed: list[tuple[int, str, str | bytes]] = []
    texts: list[str] = []
    for key, element in match.items():
        tag = int(key, 16)
        if tag == SPECIFIC_CHARACTER_SET or not isinstance(element, dict):
            continue
        vr = element.get("vr")
        values = element.get("Value")
        if not isinstance(vr, str) or "InlineBinary" in element or "BulkDataURI" in element:
            return None
        if not values:
            parsed.append((tag, vr, b""))
            continue
        if vr == "SQ" or vr in _OPAQUE:
            return None
        fmt = _BINARY.get(vr)
        if fmt is not None:
            try:
                parsed.append((tag, vr, b"".join(struct.pack(fmt, v) for v in values)))
            except (struct.error, TypeError):
                return None
            continue
        text = _text(vr, values)
        if text is None:
            return None
        parsed.append((tag, vr, text))
        texts.append(text)
    charset = _charset(texts, requested)
    if charset is not None:
        parsed.append((SPECIFIC_CHARACTER_SET, "CS", charset))
    codec = _CODECS[charset]
    parts = []
    for tag, vr, value in sorted(parsed, key=lambda item: item[0]):
        raw = value.encode(codec) if isinstance(value, str) else value
        encoded = encode_element(tag, vr, raw, explicit)
        if encoded is None:
            return None
        parts.append(encoded)
    return b"".join(parts)


def pending_command(message_id: int, sop_class_uid: str) -> bytes:
    """The command set of a pending C-FIND-RSP (PS3.7 9.3.2.2), Implicit VR Little Endian as
    every command set is: the same bytes for every pending response to one request."""
    return command_set(
        [
            (0x00000002, "UI", sop_class_uid.encode("ascii")),
            (0x00000100, "US", struct.pack("<H", C_FIND_RSP)),
            (0x00000120, "US", struct.pack("<H", message_id)),
            (0x00000800, "US", struct.pack("<H", DATA_SET_PRESENT)),
            (0x00000900, "US", struct.pack("<H", PENDING)),
        ]
    )


def _p_data(pdvs: list[bytes], context_id: int) -> P_DATA:
    pdata = P_DATA()
    # pynetdicom checks for lists of [ID, PDV] (its annotation says tuples).
    pdata.presentation_data_value_list = cast(Any, [[context_id, pdv] for pdv in pdvs])
    return pdata


class PendingSender:
    """Sends the pending responses of one C-FIND request through the association's DUL.

    The DUL sends what is queued in order, so these P-DATAs and whatever pynetdicom itself sends
    (a slow-path pending, the final response) reach the peer in the order they were queued.
    The queue is kept short, so that a C-CANCEL is seen within a few responses, not hundreds."""

    MAX_QUEUED = 8

    def __init__(self, assoc: Any, context_id: int, transfer_syntax: str, command: bytes) -> None:
        self.dul = assoc.dul
        self.assoc = assoc
        self.context_id = context_id
        self.transfer_syntax = transfer_syntax
        self.command = b"\x03" + command  # command, last fragment
        self.max_pdu = int(assoc.requestor.maximum_length or 0)

    @classmethod
    def for_event(cls, event: Any) -> PendingSender | None:
        try:
            context = event.context
            command = event.request
            return cls(
                event.assoc,
                int(context.context_id),
                str(context.transfer_syntax),
                pending_command(int(command.MessageID), str(command.AffectedSOPClassUID)),
            )
        except (AttributeError, TypeError, ValueError):
            return None

    def send(self, match: dict[str, Any], requested: list[str]) -> bool:
        """Queue one pending response; False when the caller must send it through pynetdicom."""
        identifier = encode_identifier(match, requested, self.transfer_syntax)
        if identifier is None:
            return False
        data = b"\x02" + identifier  # data set, last fragment
        # Each PDV item is 4 bytes of length, then the context ID, then the data.
        if self.max_pdu and len(data) + 6 > self.max_pdu:
            return False
        self._wait_for_room()
        if not self.max_pdu or len(self.command) + len(data) + 12 <= self.max_pdu:
            self.dul.send_pdu(_p_data([self.command, data], self.context_id))
            return True
        for pdv in (self.command, data):
            self.dul.send_pdu(_p_data([pdv], self.context_id))
        return True

    def _wait_for_room(self) -> None:
        queue = self.dul.to_provider_queue
        deadline = time.monotonic() + 30.0  # the network timeout aborts a peer that stops reading
        while queue.qsize() >= self.MAX_QUEUED and self.assoc.is_established:
            if time.monotonic() > deadline:
                break
            time.sleep(0.0002)
