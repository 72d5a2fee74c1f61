"""The DICOM TLS port: pynetdicom's association server whose TLS handshake runs in the
association's own thread.

pynetdicom's server wraps each accepted socket with the handshake done at once, in the thread
that accepts every connection: one peer that connects and sends nothing would hold up every
other. Here the socket is wrapped without the handshake; OpenSSL performs it on the first read,
in the association's DUL thread, under the network timeout. A peer that fails it (plain DICOM,
TLS 1.0/1.1, a certificate our CA did not sign) loses only its own connection.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)


class TlsAssociationServer(ThreadedAssociationServer):
    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock = cast(socket.socket, self.socket)
        client, address = sock.accept()
        assert self.ssl_context is not None
        wrapped = self.ssl_context.wrap_socket(
            client, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address


def start_tls_server(
    ae: AE, address: tuple[str, int], context: ssl.SSLContext, handlers: list[Any]
) -> TlsAssociationServer:
    """Serve ``ae`` on ``address`` over TLS in a daemon thread; ``shutdown()`` stops it."""
    server = ae.make_server(
        address, evt_handlers=handlers, ssl_context=context, server_class=TlsAssociationServer
    )
    thread = threading.Thread(
        target=server.serve_forever, name=f"TlsAcceptor@{address[1]}", daemon=True
    )
    thread.start()
    ae._servers.append(server)  # as AE.start_server does: shutdown() takes it off this list
    return cast(TlsAssociationServer, server)
