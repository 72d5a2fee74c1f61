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
