"""pynetdicom glue shared by the listener and the CLI: sockets without Nagle, contexts."""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom import evt
from pynetdicom._globals import ALL_TRANSFER_SYNTAXES
from pynetdicom.presentation import AllStoragePresentationContexts

# Every storage SOP class pynetdicom knows, each with every transfer syntax it knows (implicit,
# explicit LE/BE, deflate, JPEG family, JPEG-LS, JPEG 2000, HTJ2K, RLE, MPEG/HEVC): we store the
# bytes as received and never decode pixels, so any encoding is acceptable.
STORAGE_SOP_CLASSES: list[str] = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
TRANSFER_SYNTAXES: list[str] = [str(ts) for ts in ALL_TRANSFER_SYNTAXES]


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: turn Nagle off on the association's socket.

    pynetdicom sends a DIMSE message as several writes; with Nagle on, the last one waits for the
    peer's delayed ACK (~40 ms), which caps a C-STORE exchange at a few dozen per second.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


NODELAY_HANDLER = (evt.EVT_CONN_OPEN, set_nodelay)


def prefer_requested_order(requested: Any, supported: Any) -> None:
    """Reorder our transfer syntaxes so that the requestor's first choice we support wins.

    PS3.8 9.3.2.2: a requestor lists transfer syntaxes in its order of preference, and the sender
    of a compressed instance puts the instance's own encoding first. pynetdicom's acceptor picks by
    its own list instead, which would make a sender decompress (or fail to) what we would have
    stored as it was. Called per association on its private copy of the supported contexts.
    """
    ours = {str(cx.abstract_syntax): cx for cx in supported}
    for proposal in requested or []:
        context = ours.get(str(proposal.abstract_syntax))
        if context is None:
            continue
        offered = [str(ts) for ts in proposal.transfer_syntax]
        current = [str(ts) for ts in context.transfer_syntax]
        first = [ts for ts in offered if ts in current]
        context.transfer_syntax = first + [ts for ts in current if ts not in first]
