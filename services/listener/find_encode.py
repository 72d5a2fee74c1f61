"""Pending C-FIND responses written straight to the association's socket.

pynetdicom spends ~1.5 ms on every pending response: a pydicom Dataset from the JSON, the
identifier encoded by pydicom's writer, and the response command built as a Dataset and encoded
again, although it is the same for every pending of a request; then every response is one
P-DATA primitive through the DUL thread's queue (which sleeps 1 ms whenever it is empty).

Here the query service sends each identifier already encoded (``render.cfind`` in the
``query.find`` payload: :mod:`edge.common.findwire`, for this presentation context's transfer
syntax and the requester's character sets); a match that reaches the listener as DICOM JSON is
encoded by the same encoder, or by pydicom where that does not cover it (a sequence with items,
binary values). The pending command set is built once per request; each pending is one
P-DATA-TF PDU (the command and the identifier as two PDVs, PS3.8 9.3.5), fragmented only when
the peer's maximum PDU length asks for it, and several PDUs go to the socket in one write, from
the handler's thread, as :mod:`edge.common.direct` does for C-MOVE and C-GET.

Only one thread may write to a socket at a time: pynetdicom's DUL thread writes only what is
queued for it, and during a C-FIND nothing is queued for it until the final response, which the
handler yields to pynetdicom after the last write here. A write is at most ``BATCH_COUNT``
pendings, so a C-CANCEL (read by the DUL thread) is seen within that many.
"""

from __future__ import annotations

import struct
from typing import Any

from edge.common.direct import DATA_SET_PRESENT, command_set, wait_until_quiet
from edge.common.findwire import SYNTAXES

PENDING = 0xFF00
C_FIND_RSP = 0x8020
# PDV message control headers (PS3.8 E.2): command or data set, last fragment or not.
COMMAND_MORE, COMMAND_LAST, DATA_MORE, DATA_LAST = 0x01, 0x03, 0x00, 0x02
UNLIMITED = 1 << 20  # the peer said 0 (no limit): PDUs of at most 1 MiB


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


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    # PDV item (PS3.8 9.3.5.1): item length, presentation context ID, message control header.
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def _pdu(items: list[bytes]) -> bytes:
    # P-DATA-TF (PS3.8 9.3.5): type 4, reserved, length of the PDV items.
    body = b"".join(items)
    return struct.pack(">BBI", 4, 0, len(body)) + body


class PendingSender:
    """Writes the pending responses of one C-FIND request to the association's socket (see
    the module): :meth:`send` gathers them, :meth:`flush` writes what is gathered."""

    BATCH_COUNT = 16
    BATCH_BYTES = 64 * 1024

    def __init__(self, assoc: Any, context_id: int, transfer_syntax: str, command: bytes) -> None:
        self.assoc = assoc
        self.context_id = context_id
        self.transfer_syntax = transfer_syntax
        self.command = command
        limit = int(assoc.requestor.maximum_length or 0)
        self.max_pdu = limit if limit else UNLIMITED  # the PDV items of one PDU, in bytes
        self.command_pdus = self._fragments(command, COMMAND_MORE, COMMAND_LAST)
        self.batch: list[bytes] = []
        self.batch_count = 0
        self.batch_bytes = 0
        self.quiet = False

    @classmethod
    def for_event(cls, event: Any) -> PendingSender | None:
        """A sender for this C-FIND, or None when its transfer syntax is not one the encoder
        covers (big endian, deflated): then every response goes through pynetdicom."""
        try:
            context = event.context
            command = event.request
            syntax = str(context.transfer_syntax)
            if syntax not in SYNTAXES:
                return None
            return cls(
                event.assoc,
                int(context.context_id),
                syntax,
                pending_command(int(command.MessageID), str(command.AffectedSOPClassUID)),
            )
        except (AttributeError, TypeError, ValueError):
            return None

    @property
    def alive(self) -> bool:
        return bool(self.assoc.is_established)

    def send(self, identifier: bytes) -> bool:
        """Gather one pending response with this encoded identifier (written when the batch is
        full). False when the association is gone."""
        if 12 + len(self.command) + len(identifier) <= self.max_pdu:
            pdus = [
                _pdu(
                    [
                        _pdv(self.context_id, COMMAND_LAST, self.command),
                        _pdv(self.context_id, DATA_LAST, identifier),
                    ]
                )
            ]
        else:
            pdus = [*self.command_pdus, *self._fragments(identifier, DATA_MORE, DATA_LAST)]
        self.batch.extend(pdus)
        self.batch_count += 1
        self.batch_bytes += sum(len(p) for p in pdus)
        if self.batch_count >= self.BATCH_COUNT or self.batch_bytes >= self.BATCH_BYTES:
            self.flush()
        return self.alive

    def _fragments(self, data: bytes, more: int, last: int) -> list[bytes]:
        size = max(self.max_pdu - 6, 1)
        out = []
        for start in range(0, max(len(data), 1), size):
            chunk = data[start : start + size]
            final = start + size >= len(data)
            out.append(_pdu([_pdv(self.context_id, last if final else more, chunk)]))
        return out

    def flush(self) -> None:
        """Write what is gathered (before waiting for the next page, and before the final
        response goes to pynetdicom)."""
        if not self.batch:
            return
        data = b"".join(self.batch)
        self.batch, self.batch_count, self.batch_bytes = [], 0, 0
        if not self.alive:
            return
        if not self.quiet:  # once: whatever pynetdicom had queued goes first
            wait_until_quiet(self.assoc)
            self.quiet = True
        # pynetdicom's AssociationSocket: writes all of it; on an error it closes the
        # transport (Evt17) and the association is no longer established.
        self.assoc.dul.socket.send(data)
