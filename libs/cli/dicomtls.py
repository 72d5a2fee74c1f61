"""DICOM TLS for ``edge echo`` and ``edge send``: the options, the client context (the one
outbound associations use, ``edge.common.tls.client_context``) and the reason a connection
failed, which pynetdicom only logs."""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from edge.common.tls import client_context

# `edge up --dev` (`make run`) makes its development CA here, relative to where it runs.
DEV_CA = Path(".run/tls/ca.pem")
PLAIN_PORT = 11112
TLS_PORT = 2762  # the listener's EDGE_TLS_PORT default

TlsOption = Annotated[
    bool, typer.Option("--tls", help=f"DICOM TLS (TLS 1.2+; port {TLS_PORT} unless --port)")
]
CaOption = Annotated[
    Path | None,
    typer.Option(
        "--ca",
        help="CA the node's certificate must chain to [EDGE_TLS_CA_FILE, else the dev CA "
        f"{DEV_CA} when present, else the system store]",
    ),
]
CertOption = Annotated[
    Path | None, typer.Option("--cert", help="our client certificate (PEM) [none]")
]
KeyOption = Annotated[Path | None, typer.Option("--key", help="its private key (PEM)")]
ServerNameOption = Annotated[
    str | None,
    typer.Option("--server-name", help="name the node's certificate must carry [--host]"),
]


class TlsOptionError(ValueError):
    """TLS options that cannot make a client context (missing file, key not matching)."""


def default_ca() -> Path | None:
    """EDGE_TLS_CA_FILE, else the development CA of ``make run`` if there is one, else None
    (the system's trust store)."""
    if configured := os.environ.get("EDGE_TLS_CA_FILE"):
        return Path(configured)
    return DEV_CA if DEV_CA.is_file() else None


def port_for(port: int | None, tls: bool) -> int:
    return port if port is not None else (TLS_PORT if tls else PLAIN_PORT)


def tls_args(
    *,
    host: str,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    server_name: str | None = None,
) -> tuple[ssl.SSLContext, str]:
    """pynetdicom's ``tls_args``: a client context verifying the node against ``ca`` (default:
    :func:`default_ca`) and the name it must carry (``server_name``, else ``host``)."""
    if (cert is None) != (key is None):
        raise TlsOptionError("--cert and --key go together")
    ca = ca if ca is not None else default_ca()
    for option, path in (("--ca", ca), ("--cert", cert), ("--key", key)):
        if path is not None and not path.is_file():
            raise TlsOptionError(f"{option} {path}: no such file")
    try:
        return client_context(ca, cert, key), server_name or host
    except (ssl.SSLError, OSError) as exc:
        raise TlsOptionError(f"cannot load the TLS files: {brief(exc)}") from exc


def brief(error: BaseException | str) -> str:
    """An SSL error without OpenSSL's source location: ``... (_ssl.c:1006)``."""
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(error)).strip()


class _Reasons(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        # pynetdicom: "TCP Initialisation Error: <OSError>" (the TLS handshake included)
        if message.startswith("TCP Initialisation Error:"):
            self.reasons.append(brief(message.partition(":")[2]))
        elif record.exc_info and isinstance(record.exc_info[1], ssl.SSLError):
            self.reasons.append(brief(record.exc_info[1]))


@contextmanager
def connection_failures() -> Iterator[list[str]]:
    """The reasons pynetdicom gives (in its log only) for a connection that failed while the
    block ran: a refused TCP connect, a failed TLS handshake, the peer's TLS alert."""
    handler = _Reasons()
    logger = logging.getLogger("pynetdicom")
    logger.addHandler(handler)
    try:
        yield handler.reasons
    finally:
        logger.removeHandler(handler)


def failure(reasons: list[str]) -> str:
    """The first distinct reason, as ``: reason`` (empty when pynetdicom logged none)."""
    unique = list(dict.fromkeys(r for r in reasons if r))
    return f": {unique[0]}" if unique else ""
