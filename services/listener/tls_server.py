"""The DICOM TLS port: pynetdicom's association server whose TLS handshake runs in the
connection's own thread, under a deadline, with every refusal reported.

pynetdicom's server wraps each accepted socket with the handshake done at once, in the thread
that accepts every connection: one peer that connects and sends nothing would hold up every
other. Here the acceptor only accepts; the connection's own thread (socketserver's, one per
connection, before any association exists) looks at the first byte, performs the handshake
under ``AE.acse_timeout`` (the time a peer has to ask for its association once connected) and
only then hands the connection to pynetdicom. A peer that fails (plain DICOM, TLS 1.0/1.1, a
certificate our CA did not sign or its CRL lists, silence) loses only its own connection, and
``on_refused(address, reason)`` hears of it with the reason in our words
(:func:`refusal_reason`): the listener audits it and counts it (``handshakes.py``).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

OnRefused = Callable[[str, str], None]  # (peer address, reason)

# OpenSSL verify results (X509_V_ERR_*) with a reason of their own; others: "certificate verify
# failed" (an unknown CA, a missing CRL, a bad signature...).
_VERIFY_REASONS = {
    9: "certificate not yet valid",
    10: "certificate expired",
    23: "certificate revoked",
}
# OpenSSL reason codes (SSLError.reason) by the reason we give.
_SSL_REASONS = {
    "protocol version": (
        "UNSUPPORTED_PROTOCOL",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "WRONG_SSL_VERSION",
        "VERSION_TOO_LOW",
    ),
    "not TLS": ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL"),
    "no shared cipher": (
        "NO_SHARED_CIPHER",
        "NO_CIPHERS_AVAILABLE",
        "NO_SUITABLE_SIGNATURE_ALGORITHM",
    ),
    "no client certificate": (
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    ),
    "our certificate refused by the peer": (
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    ),
    "closed in the handshake": ("UNEXPECTED_EOF_WHILE_READING",),
}
REASONS = frozenset(
    [*_VERIFY_REASONS.values(), *_SSL_REASONS, "certificate verify failed"]
    + ["alert from the peer", "handshake timed out", "handshake failed"]
)  # a closed set: the label values of edge_tls_handshakes_refused_total


def refusal_reason(exc: BaseException) -> str:
    """The reason a handshake failed, in our words and from a closed set (:data:`REASONS`):
    never OpenSSL's message, which may carry a certificate's names."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(exc.verify_code, "certificate verify failed")
    if isinstance(exc, TimeoutError):  # socket.timeout, and the ssl module's handshake timeout
        return "handshake timed out"
    if isinstance(exc, ssl.SSLError):
        code = str(exc.reason or "").upper()
        for reason, codes in _SSL_REASONS.items():
            if code in codes:
                return reason
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return "closed in the handshake"
        if "_ALERT_" in code:  # the peer gave up on us (e.g. a decrypt_error alert)
            return "alert from the peer"
        return "handshake failed"
    if isinstance(exc, ConnectionError):
        return "closed in the handshake"
    return "handshake failed"


class Refused(Exception):
    """The connection gets no association: ``reason`` None when the peer closed it before
    sending a byte (a TCP health check, a port scan: no authentication was attempted)."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason or "closed before the handshake")
        self.reason = reason


def handshake(raw: socket.socket, context: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """The server side of the TLS handshake on an accepted socket, all of it within
    ``timeout`` seconds; the socket returned is back in the blocking mode it came in. Raises
    :class:`Refused` (the socket closed) otherwise."""
    deadline = time.monotonic() + timeout
    mode = raw.gettimeout()
    raw.settimeout(timeout)
    try:
        first = raw.recv(1, socket.MSG_PEEK)
    except OSError as exc:
        _close(raw)
        raise Refused(None if isinstance(exc, ConnectionError) else refusal_reason(exc)) from exc
    if not first:
        _close(raw)
        raise Refused(None)
    # A TLS record starts 0x16 (handshake), an SSLv2-style hello with its high bit; a DICOM PDU
    # starts with its type, 0x01-0x07 (PS3.8 9.3): plain DICOM sent to the TLS port.
    if first[0] != 0x16 and not first[0] & 0x80:
        _close(raw)
        raise Refused("not TLS")
    try:
        tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError) as exc:
        _close(raw)
        raise Refused(refusal_reason(exc)) from exc
    try:
        tls.settimeout(max(deadline - time.monotonic(), 0.001))
        tls.do_handshake()
    except (OSError, ValueError) as exc:
        _close(tls)
        raise Refused(refusal_reason(exc)) from exc
    tls.settimeout(mode)
    return tls


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class TlsAssociationServer(ThreadedAssociationServer):
    # Connection threads may wait out a silent peer's handshake: shutdown() must not join them.
    daemon_threads = True
    on_refused: OnRefused | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock = cast(socket.socket, self.socket)
        return sock.accept()  # the handshake waits for the connection's own thread

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        assert self.ssl_context is not None
        address = str(client_address[0])
        try:
            wrapped = handshake(request, self.ssl_context, float(self.ae.acse_timeout or 30))
        except Refused as refused:
            if refused.reason is None:
                log.debug("TLS port: %s closed the connection before the handshake", address)
            elif self.on_refused is not None:
                self.on_refused(address, refused.reason)
            else:
                log.warning("TLS handshake from %s refused: %s", address, refused.reason)
            return
        super().process_request_thread(wrapped, client_address)


def start_tls_server(
    ae: AE,
    address: tuple[str, int],
    context: ssl.SSLContext,
    handlers: list[Any],
    *,
    on_refused: OnRefused | None = None,
) -> TlsAssociationServer:
    """Serve ``ae`` on ``address`` over TLS in a daemon thread; ``shutdown()`` stops it.
    ``on_refused(address, reason)`` is called, from the connection's thread, for every failed
    handshake (without it, each is logged)."""
    server = ae.make_server(
        address, evt_handlers=handlers, ssl_context=context, server_class=TlsAssociationServer
    )
    server = cast(TlsAssociationServer, server)
    server.on_refused = on_refused
    thread = threading.Thread(
        target=server.serve_forever, name=f"TlsAcceptor@{address[1]}", daemon=True
    )
    thread.start()
    ae._servers.append(server)  # as AE.start_server does: shutdown() takes it off this list
    return server
