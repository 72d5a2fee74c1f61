"""The retrieval service's outbound DICOM TLS against a real TLS peer: the client context its
C-MOVE sub-operation associations use (``MoveHandler.tls_context``, built from EDGE_TLS_*) checks
the destination's certificate against EDGE_TLS_CRL_FILE, so a revoked destination certificate
fails the handshake and no association is made."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from edge.common.netutil import free_ports
from edge.common.tls import DevPki, ensure_dev_pki, server_context, write_dev_crl
from edge.retrieval.move import MoveHandler
from edge.retrieval.settings import RetrievalSettings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """The dev CA, with certificates for two destinations; the CRL revokes REVOKED's."""
    pki = ensure_dev_pki(tmp_path_factory.mktemp("pki"), ("DEST", "REVOKED"))
    write_dev_crl(pki, (pki.client_cert("REVOKED"),))
    return pki


@pytest.fixture(scope="module")
def destinations(pki: DevPki) -> Iterator[dict[str, int]]:
    """A TLS Verification SCP per destination, each presenting its own certificate."""
    ports = dict(zip(("DEST", "REVOKED"), free_ports(2), strict=True))
    servers = []
    for title, port in ports.items():
        ae = AE(ae_title=title)
        ae.acse_timeout = ae.network_timeout = 5
        ae.add_supported_context(Verification)
        context = server_context(pki.client_cert(title), pki.client_key(title))
        servers.append(ae.start_server(("127.0.0.1", port), block=False, ssl_context=context))
    yield ports
    for server in servers:
        assert server is not None
        server.shutdown()


def mover(monkeypatch: pytest.MonkeyPatch, pki: DevPki, crl: Path | None) -> MoveHandler:
    """The C-MOVE handler as the retrieval service builds it from its environment."""
    monkeypatch.setenv("EDGE_TLS_CA_FILE", str(pki.ca))
    monkeypatch.setenv("EDGE_TLS_CERT_FILE", str(pki.server_cert))
    monkeypatch.setenv("EDGE_TLS_KEY_FILE", str(pki.server_key))
    if crl is not None:
        monkeypatch.setenv("EDGE_TLS_CRL_FILE", str(crl))
    none: Any = None  # the pool, registry and store play no part in the TLS context
    return MoveHandler(none, none, none, RetrievalSettings())


def associate(handler: MoveHandler, port: int) -> Any:
    """What a sub-operation association does (transfer.py): TLS to the registered host."""
    assert handler.tls_context is not None
    client = AE(ae_title="EDGE")
    client.acse_timeout = client.network_timeout = 5
    client.add_requested_context(Verification)
    return client.associate("127.0.0.1", port, tls_args=(handler.tls_context, "localhost"))


def established(assoc: Any) -> bool:
    ok = bool(assoc.is_established)
    if ok:
        assoc.release()
    return ok


def test_a_revoked_destination_certificate_fails_the_outbound_handshake(
    monkeypatch: pytest.MonkeyPatch, pki: DevPki, destinations: dict[str, int]
) -> None:
    handler = mover(monkeypatch, pki, pki.crl)

    assert not established(associate(handler, destinations["REVOKED"]))
    assert established(associate(handler, destinations["DEST"]))  # not listed: accepted


def test_without_a_crl_the_same_certificate_is_accepted(
    monkeypatch: pytest.MonkeyPatch, pki: DevPki, destinations: dict[str, int]
) -> None:
    monkeypatch.delenv("EDGE_TLS_CRL_FILE", raising=False)
    handler = mover(monkeypatch, pki, None)

    assert established(associate(handler, destinations["REVOKED"]))
