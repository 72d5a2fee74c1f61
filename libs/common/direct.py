"""DIMSE messages written straight to an association's socket by the thread that sends them.

pynetdicom hands every P-DATA-TF PDU to the association's DUL thread through a queue: a
primitive, an event, a state-machine action, an encode, then the socket, and the DUL thread
sleeps 1 ms whenever its queue is empty. A 0.5 MB instance to a peer that takes 16 kB PDUs is
~33 PDUs, and that hand-over, not the network, bounded C-MOVE and C-GET to ~10 MB/s. Here the
sending thread writes the PDUs itself, several to a system call, from the spooled file.

Only one thread may write to a socket at a time. pynetdicom's DUL thread writes only what is
queued for it, so these functions first wait until its queue is empty, and are used only where
everything else sent on the association during the operation goes through them too (a C-MOVE
sub-operation association we own; the C-MOVE or C-GET request being served, whose responses are
sent here as well). Responses still arrive through pynetdicom (its DUL reads the socket).
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pynetdicom.dimse import _RSP_TO_MESSAGE
from pynetdicom.pdu import P_DATA_TF

C_STORE_RQ = 0x0001
DATA_SET_PRESENT = 0x0001  # CommandDataSetType: anything but 0x0101 (PS3.7 E.1)
UNLIMITED_FRAGMENT = 1 << 20  # the peer said 0 (no limit): fragments of 1 MiB
BATCH = 256 * 1024  # bytes of PDUs gathered into one write


def element(tag: int, vr: str, value: bytes, explicit: bool = False) -> bytes | None:
    """One data element, Little Endian; None when the value is too long for its length field.
    ``vr`` only decides the padding byte in Implicit VR."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "UN") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if not explicit:
        return head + struct.pack("<I", len(value)) + value
    if vr in LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack("<I", len(value)) + value
    if len(value) > 0xFFFF:
        return None
    return head + vr.encode() + struct.pack("<H", len(value)) + value


# Explicit VR: these have a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


def command_set(elements: list[tuple[int, str, bytes]]) -> bytes:
    """A command set (Implicit VR Little Endian, PS3.7 6.3.1) with its group length first."""
    body = b"".join(element(tag, vr, value) or b"" for tag, vr, value in sorted(elements))
    return (element(0x00000000, "UL", struct.pack("<I", len(body))) or b"") + body


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def c_store_command(
    message_id: int,
    sop_class: str,
    sop_instance: str,
    *,
    priority: int = 0,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> bytes:
    """The command set of a C-STORE-RQ (PS3.7 9.3.1.1)."""
    elements = [
        (0x00000002, "UI", sop_class.encode("ascii")),
        (0x00000100, "US", _us(C_STORE_RQ)),
        (0x00000110, "US", _us(message_id)),
        (0x00000700, "US", _us(priority)),
        (0x00000800, "US", _us(DATA_SET_PRESENT)),
        (0x00001000, "UI", sop_instance.encode("ascii")),
    ]
    if originator_aet:
        elements.append((0x00001030, "AE", originator_aet.encode("ascii")))
        if originator_id is not None:
            elements.append((0x00001031, "US", _us(originator_id)))
    return command_set(elements)


def data_set_offset(f: BinaryIO) -> int | None:
    """Where a Part-10 file's data set starts (after the preamble and the File Meta
    Information, whose group length says how long it is); None when the file does not say."""
    f.seek(0)
    head = f.read(132 + 12)
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    tag, vr, length = struct.unpack("<I2sH", head[132:140])
    if tag != 0x00000002 or vr != b"UL" or length != 4:  # (0002,0000) read as group, element
        return None
    (group_length,) = struct.unpack("<I", head[140:144])
    return 144 + group_length


def _pdu(context_id: int, control: int, data: bytes) -> bytes:
    # P-DATA-TF (PS3.8 9.3.5): type 4, reserved, length; one PDV item: length, context, control.
    return struct.pack(">BBIIBB", 4, 0, len(data) + 6, len(data) + 2, context_id, control) + data


class DirectSender:
    """Writes the messages of one association from the calling thread (see the module)."""

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self.socket = assoc.dul.socket
        limit = int(assoc.dimse.maximum_pdu_size or 0)
        self.fragment = (limit - 6) if limit else UNLIMITED_FRAGMENT

    def _quiet(self) -> None:
        """Wait until the DUL has nothing queued to send (responses queued by pynetdicom)."""
        dul = self.assoc.dul
        deadline = time.monotonic() + 5.0
        while not dul.to_provider_queue.empty() and time.monotonic() < deadline:
            time.sleep(0.0002)

    def _write(self, chunks: list[bytes]) -> None:
        self.socket.send(b"".join(chunks))

    def send_message(self, primitive: Any, context_id: int) -> None:
        """A response (e.g. a C-MOVE or C-GET pending) encoded by pynetdicom, written here."""
        message = _RSP_TO_MESSAGE[primitive.__class__]()
        message.primitive_to_message(primitive)
        limit = int(self.assoc.dimse.maximum_pdu_size or 0)
        self._quiet()
        self._write([P_DATA_TF(p).encode() for p in message.encode_msg(context_id, limit)])

    def c_store_file(
        self,
        path: Path,
        context_id: int,
        command: bytes,
    ) -> Dataset | None:
        """Send a C-STORE-RQ whose data set is the part of the Part-10 file ``path`` after its
        File Meta Information, unchanged; wait for the response. The response status data set
        (pynetdicom's own checks); None when the file's meta cannot be skipped here."""
        assoc = self.assoc
        with open(path, "rb") as f:
            offset = data_set_offset(f)
            if offset is None:
                return None
            size = f.seek(0, 2) - offset
            f.seek(offset)
            assoc._reactor_checkpoint.clear()
            try:
                while not assoc._is_paused:
                    time.sleep(0.0001)
                self._quiet()
                batch = [_pdu(context_id, 0x03, command)]
                pending = len(batch[0])
                sent = 0
                while sent < size or size == 0:
                    data = f.read(min(self.fragment, size - sent))
                    sent += len(data)
                    if not data and size:
                        raise OSError("spool file shorter than it was")
                    last = sent >= size
                    batch.append(_pdu(context_id, 0x02 if last else 0x00, data))
                    pending += len(batch[-1])
                    if last or pending >= BATCH:
                        self._write(batch)
                        batch, pending = [], 0
                    if last:
                        break
                _cx, rsp = assoc.dimse.get_msg(block=True)
            finally:
                assoc._reactor_checkpoint.set()
        if rsp is None:
            assoc._handle_no_response()
            return Dataset()
        status: Dataset = assoc._check_received_status(rsp)
        return status
