"""DIMSE messages written straight to an association's socket by the thread that sends them.

pynetdicom hands every P-DATA-TF PDU to the association's DUL thread through a queue: a
primitive, an event, a state-machine action, an encode, then the socket, and the DUL thread
sleeps 1 ms whenever its queue is empty. A 0.5 MB instance to a peer that takes 16 kB PDUs is
~33 PDUs, and that hand-over, not the network, bounded C-MOVE and C-GET to ~10 MB/s. Here the
sending thread writes the PDUs itself, several to a system call, from the spooled object (in
memory or in a file).

Only one thread may write to a socket at a time. pynetdicom's DUL thread writes only what is
queued for it, so these functions first wait until its queue is empty, and are used only where
everything else sent on the association during the operation goes through them too (a C-MOVE
sub-operation association we own; the C-MOVE or C-GET request being served, whose responses are
sent here as well). Responses still arrive through pynetdicom (its DUL reads the socket).
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pynetdicom.dimse import _RSP_TO_MESSAGE
from pynetdicom.pdu import P_DATA_TF

C_STORE_RQ = 0x0001
DATA_SET_PRESENT = 0x0001  # CommandDataSetType: anything but 0x0101 (PS3.7 E.1)
UNLIMITED_FRAGMENT = 1 << 20  # the peer said 0 (no limit): fragments of 1 MiB
BATCH = 1 << 20  # bytes of PDUs gathered into one write (a 0.5 MB instance: one system call)


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
    return data_set_offset_in(f.read(132 + 12))


def data_set_offset_in(head: bytes | memoryview) -> int | None:
    """:func:`data_set_offset` of a Part-10 object's first 144 bytes (or more)."""
    head = bytes(head[:144])
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    tag, vr, length = struct.unpack("<I2sH", head[132:140])
    if tag != 0x00000002 or vr != b"UL" or length != 4:  # (0002,0000) read as group, element
        return None
    (group_length,) = struct.unpack("<I", head[140:144])
    return 144 + group_length


def _pdu_head(context_id: int, control: int, length: int) -> bytes:
    # P-DATA-TF (PS3.8 9.3.5): type 4, reserved, length; one PDV item: length, context, control.
    return struct.pack(">BBIIBB", 4, 0, length + 6, length + 2, context_id, control)


def _pdu(context_id: int, control: int, data: bytes) -> bytes:
    return _pdu_head(context_id, control, len(data)) + data


class Checkpoint:
    """An association reactor's pause point that says for certain whether the reactor is held.

    pynetdicom pauses its reactor by clearing an Event and spinning until ``_is_paused`` is
    True; the reactor sets that flag *before* ``Event.wait()`` and clears it after. A sender
    that set the event at the end of one message and clears it again at once for the next (as
    a C-MOVE sending back to back does) wakes the reactor, which, once it runs, leaves the wait
    even though the event is cleared again (``Event.wait`` returns on the notification) while
    the flag still reads True: the reactor then takes the next C-STORE response off the DIMSE
    queue ("Received unexpected C-STORE service message") and the sender waits for it until
    the DIMSE timeout. Here the reactor leaves the wait only while the event is set, and
    ``holding`` is True exactly while it waits with the event cleared, both under the event's
    own lock: once a pauser has cleared the event and seen ``holding``, the reactor stays put.
    """

    # The Event interface pynetdicom uses (set, clear, is_set, wait), on a lock of our own.

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._flag = True
        self.holding = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._flag:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.holding = True
                try:
                    self._cond.wait(left)
                finally:
                    self.holding = False
            return True


def checkpoint_of(assoc: Any) -> Checkpoint:
    """The association's reactor checkpoint, a :class:`Checkpoint` from now on. Swapped in while
    the old one is set (nobody is pausing the reactor): the reactor reads the attribute on every
    turn, and a turn begun on the old one is caught by :func:`reactor_paused` waiting for
    ``holding`` on the new one."""
    current = assoc._reactor_checkpoint
    if not isinstance(current, Checkpoint):
        current = Checkpoint()
        assoc._reactor_checkpoint = current
    return current


RESPONSE_POLL = 0.0001  # seconds between the DUL's socket polls while a response is awaited
PAUSE_TIMEOUT = 10.0  # seconds a pause waits for the reactor before giving up on it


@contextmanager
def reactor_paused(assoc: Any) -> Iterator[None]:
    """The association's reactor held at its checkpoint for the block, so that a response the
    block waits for is not taken by the reactor. pynetdicom's own ``send_*`` methods may be
    called inside (their pause finds the reactor already held). Not waited for when the
    calling thread is the reactor itself (a handler serving a request), or the reactor has
    stopped."""
    checkpoint = checkpoint_of(assoc)
    checkpoint.clear()
    try:
        if threading.current_thread() is not assoc:
            deadline = time.monotonic() + PAUSE_TIMEOUT
            while not checkpoint.holding and assoc.is_alive() and not assoc._kill:
                if time.monotonic() > deadline:
                    raise TimeoutError("the association's reactor did not pause")
                time.sleep(0.0001)
        yield
    finally:
        checkpoint.set()


def wait_until_quiet(assoc: Any, timeout: float = 5.0) -> None:
    """Wait (at most ``timeout`` s) until the association's DUL has nothing queued to send
    (responses queued by pynetdicom), before the calling thread writes to the socket itself."""
    dul = assoc.dul
    deadline = time.monotonic() + timeout
    while not dul.to_provider_queue.empty() and time.monotonic() < deadline:
        time.sleep(0.0002)


class DirectSender:
    """Writes the messages of one association from the calling thread (see the module)."""

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self.socket = assoc.dul.socket
        limit = int(assoc.dimse.maximum_pdu_size or 0)
        self.fragment = (limit - 6) if limit else UNLIMITED_FRAGMENT

    def _quiet(self) -> None:
        wait_until_quiet(self.assoc)

    def _write(self, chunks: list[bytes | memoryview]) -> None:
        # One copy (the join); a memoryview, so that pynetdicom's loop over partial sends
        # slices without copying the rest again.
        self.socket.send(memoryview(b"".join(chunks)))  # type: ignore[arg-type]

    def _response(self) -> tuple[int | None, Any]:
        """The next DIMSE message, the DUL polling the socket every 0.1 ms meanwhile instead of
        its idle 1 ms: the response to a C-STORE just written is all that is awaited, and
        each 0.5 ms it would lie unread on average is ~10 % of a 0.5 MB sub-operation here."""
        dul = self.assoc.dul
        idle = dul._run_loop_delay
        dul._run_loop_delay = RESPONSE_POLL
        try:
            return self.assoc.dimse.get_msg(block=True)  # type: ignore[no-any-return]
        finally:
            dul._run_loop_delay = idle

    def send_message(self, primitive: Any, context_id: int) -> None:
        """A response (e.g. a C-MOVE or C-GET pending) encoded by pynetdicom, written here."""
        message = _RSP_TO_MESSAGE[primitive.__class__]()
        message.primitive_to_message(primitive)
        limit = int(self.assoc.dimse.maximum_pdu_size or 0)
        self._quiet()
        self._write([P_DATA_TF(p).encode() for p in message.encode_msg(context_id, limit)])

    def c_store_file(self, path: Path, context_id: int, command: bytes) -> Dataset | None:
        """Send a C-STORE-RQ whose data set is the part of the Part-10 file ``path`` after its
        File Meta Information, unchanged; wait for the response. The response status data set
        (pynetdicom's own checks); None when the file's meta cannot be skipped here."""
        with open(path, "rb") as f:
            offset = data_set_offset(f)
            if offset is None:
                return None
            size = f.seek(0, 2) - offset
            f.seek(offset)
            return self._c_store(f.read, size, context_id, command)

    def c_store_bytes(self, data: bytes, context_id: int, command: bytes) -> Dataset | None:
        """:meth:`c_store_file` of a Part-10 object held in memory (sliced, not copied)."""
        offset = data_set_offset_in(data)
        if offset is None:
            return None
        view = memoryview(data)[offset:]
        position = 0

        def read(n: int) -> memoryview:
            nonlocal position
            piece = view[position : position + n]
            position += len(piece)
            return piece

        return self._c_store(read, len(view), context_id, command)

    def _c_store(
        self,
        read: Callable[[int], bytes | memoryview],
        size: int,
        context_id: int,
        command: bytes,
    ) -> Dataset:
        assoc = self.assoc
        with reactor_paused(assoc):
            self._quiet()
            batch: list[bytes | memoryview] = [_pdu(context_id, 0x03, command)]
            pending = len(batch[0])
            sent = 0
            while sent < size or size == 0:
                data = read(min(self.fragment, size - sent))
                sent += len(data)
                if not data and size:
                    raise OSError("spooled object shorter than it was")
                last = sent >= size
                batch += (_pdu_head(context_id, 0x02 if last else 0x00, len(data)), data)
                pending += len(data) + 12
                if last or pending >= BATCH:
                    self._write(batch)
                    batch, pending = [], 0
                if last:
                    break
            _cx, rsp = self._response()
        if rsp is None:
            assoc._handle_no_response()
            return Dataset()
        status: Dataset = assoc._check_received_status(rsp)
        return status
