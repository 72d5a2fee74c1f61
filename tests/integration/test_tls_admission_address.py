"""Over DICOM TLS the source address is checked against the AE's registered hosts, as on the
plain port: a client certificate naming the AE does not stand in for its address. The listener's
acceptance on both ports, admission answered by auth's own decision (``handlers.admit``) from
the real registry in Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from edge.auth.handlers import admit
from edge.auth.registry import PsycopgAERegistry, RemoteAE
from edge.common.admission import Admission
from edge.common.audit import Auditor
from edge.common.netutil import free_ports
from edge.common.tls import DevPki, ensure_dev_pki, server_context
from edge.listener.acceptance import on_conn_open
from edge.listener.dimse import on_c_echo
from edge.listener.tls_server import start_tls_server
from tests.integration.test_listener_tls_identity import echo_ok, rejection, tls_args

CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)


@dataclass
class Node:
    pki: DevPki
    tls_port: int
    registry: PsycopgAERegistry
    addresses: list[str] = field(default_factory=list)
    auditor: Auditor = field(
        default_factory=lambda: Auditor(None, source="edge-listener", hash_key="k")
    )

    def admit(self, calling: str, address: str) -> Admission:
        self.addresses.append(address)
        return asyncio.run(admit(self.registry, calling, address))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Node]:
    pki = ensure_dev_pki(tmp_path_factory.mktemp("tls"), ("CT1",))
    (tls_port,) = free_ports(1)
    node = Node(pki, tls_port, PsycopgAERegistry(database_url))
    ae = AE(ae_title="EDGE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_supported_context(Verification)
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, on_conn_open, [node.admit, "EDGE", node.auditor]),
        (evt.EVT_C_ECHO, on_c_echo),
    ]
    tls = start_tls_server(
        ae,
        ("127.0.0.1", tls_port),
        server_context(pki.server_cert, pki.server_key, pki.ca),
        handlers,
    )
    try:
        yield node
    finally:
        tls.shutdown()


def register(node: Node, *hosts: str) -> None:
    ae = RemoteAE("CT1", hosts, 11119, frozenset({"echo"}), tls_required=True, tls_client_cert=True)
    asyncio.run(node.registry.put(ae))


def tls_echo(node: Node) -> Any:
    client = AE(ae_title="CT1")
    client.acse_timeout = client.dimse_timeout = client.network_timeout = 10
    client.add_requested_context(Verification)
    context = tls_args(node, "CT1")  # type: ignore[arg-type]
    return client.associate("127.0.0.1", node.tls_port, ae_title="EDGE", tls_args=context)


def test_a_certificate_naming_the_ae_from_an_unregistered_address_is_rejected(node: Node) -> None:
    register(node, "10.9.9.9", "192.0.2.0/24")
    node.addresses.clear()

    assoc = tls_echo(node)

    assert rejection(assoc) == CALLING_AE_NOT_RECOGNISED
    assert node.addresses == ["127.0.0.1"]  # the TLS peer's address is what admission saw
    assert any("not registered for 127.0.0.1" in str(e.outcome_description)
               for e in node.auditor.pending)  # fmt: skip


def test_the_same_certificate_from_a_registered_address_is_accepted(node: Node) -> None:
    register(node, "10.9.9.9", "127.0.0.0/8")

    assert echo_ok(tls_echo(node))
