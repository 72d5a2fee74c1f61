"""The listener's acceptance over real sockets, in process: pynetdicom's plain and TLS servers
with the listener's ACSE (``acceptance.py``), the TLS server of ``tls_server.py`` and the
EVT_USER_ID handler, admission and identity answered by fakes. What the registry and auth decide
is unit-tested; this proves the wiring: handshakes, certificate binding, TLS versions, User
Identity negotiation and its positive response, the A-ASSOCIATE-RJ reasons, and the audit of
refused handshakes."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from edge.common.admission import Admission, Identified
from edge.common.audit import Auditor
from edge.common.netutil import free_ports
from edge.common.tls import (
    DevPki,
    client_context,
    ensure_dev_pki,
    server_context,
    write_dev_crl,
)
from edge.listener.acceptance import on_conn_open
from edge.listener.dimse import on_c_echo
from edge.listener.handshakes import HandshakeRefusals
from edge.listener.identity import on_user_identity
from edge.listener.tls_server import start_tls_server

ECHO = frozenset({"echo"})
PASSWORD = "alice-password-1"


@dataclass
class Node:
    """The listener's acceptance on a plain and a TLS port, with fakes behind it."""

    pki: DevPki
    plain_port: int
    tls_port: int
    terms: dict[str, Admission] = field(default_factory=dict)
    auditor: Auditor = field(
        default_factory=lambda: Auditor(None, source="edge-listener", hash_key="k")
    )

    def admit(self, calling: str, address: str) -> Admission:
        return self.terms.get(
            calling, Admission(False, f"calling AE {calling!r} is not registered")
        )

    def identify(
        self, kind: str, primary: bytes, secondary: bytes | None, address: str
    ) -> Identified:
        if kind == "password" and primary == b"alice" and secondary == PASSWORD.encode():
            return Identified(True, "alice", "radiologist")
        if kind == "jwt" and primary == b"good.jwt.token":
            return Identified(True, "router", "service")
        return Identified(False, reason="wrong password" if kind == "password" else "forged")

    def refusals(self) -> list[str]:
        return [
            str(e.outcome_description)
            for e in self.auditor.pending
            if e.name == "audit.security-alert"
        ]

    def handshake_refusals(self, reason: str, timeout: float = 5.0) -> list[Any]:
        """The audited refusals of handshakes for ``reason`` (waiting up to ``timeout`` for one:
        the server's connection thread reports after the client has seen the failure)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                e
                for e in self.auditor.pending
                if e.name == "audit.security-alert"
                and e.participants[0].kind == "node"
                and e.objects[0].details[0].value == reason
            ]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def users(self) -> list[str]:
        return [
            p.user_id
            for e in self.auditor.pending
            if e.name == "audit.user-authentication"
            for p in e.participants
            if p.kind == "user"
        ]


@contextmanager
def serving(pki: DevPki, crl_file: Path | None = None, timeout: float = 10) -> Iterator[Node]:
    """A :class:`Node` on two free ports whose TLS port trusts ``pki``'s CA (and its CRL), its
    refused handshakes audited as the listener does (``HandshakeRefusals``)."""
    plain_port, tls_port = free_ports(2)
    node = Node(pki, plain_port, tls_port)
    ae = AE(ae_title="EDGE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_supported_context(Verification)
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, on_conn_open, [node.admit, "EDGE", node.auditor]),
        (evt.EVT_USER_ID, on_user_identity, [node.identify]),
        (evt.EVT_C_ECHO, on_c_echo),
    ]
    plain = ae.start_server(("127.0.0.1", plain_port), block=False, evt_handlers=handlers)
    assert plain is not None
    context = server_context(pki.server_cert, pki.server_key, pki.ca, crl_file)
    tls = start_tls_server(
        ae,
        ("127.0.0.1", tls_port),
        context,
        handlers,
        on_refused=HandshakeRefusals(node.auditor),
    )
    try:
        yield node
    finally:
        plain.shutdown()
        tls.shutdown()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with serving(ensure_dev_pki(tmp_path_factory.mktemp("tls"), ("CT1", "MR1"))) as node:
        yield node


def tls_args(node: Node, ae_title: str | None = None) -> tuple[ssl.SSLContext, str]:
    cert = node.pki.client_cert(ae_title) if ae_title else None
    key = node.pki.client_key(ae_title) if ae_title else None
    return client_context(node.pki.ca, cert, key), "localhost"


def associate(
    node: Node,
    calling: str,
    *,
    tls: tuple[ssl.SSLContext, str] | None = None,
    called: str = "EDGE",
    identity: tuple[int, bytes, bytes | None, bool] | None = None,
) -> Any:
    client = AE(ae_title=calling)
    client.acse_timeout = client.dimse_timeout = client.network_timeout = 10
    client.add_requested_context(Verification)
    port = node.tls_port if tls else node.plain_port
    options: dict[str, Any] = {}
    if identity is not None:
        from pynetdicom.pdu_primitives import UserIdentityNegotiation

        item = UserIdentityNegotiation()
        item.user_identity_type, item.primary_field, secondary, positive = identity
        if secondary is not None:
            item.secondary_field = secondary
        item.positive_response_requested = positive
        options["ext_neg"] = [item]
    return client.associate("127.0.0.1", port, ae_title=called, tls_args=tls, **options)


def echo_ok(assoc: Any) -> bool:
    try:
        if not assoc.is_established:
            return False
        return int(assoc.send_c_echo().Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()


def assert_node_authentication_failure(events: list[Any], reason: str) -> None:
    """The first of ``events`` is a Security Alert, Node Authentication, minor failure, naming
    this host's address as the peer and ``reason`` as the outcome."""
    assert events, f"no audited handshake refusal {reason!r}"
    event = events[0]
    assert [c.code for c in event.event_types] == ["110126"]
    assert event.outcome == 4 and event.outcome_description == reason
    peer = event.participants[0]
    assert (peer.user_id, peer.network_access_point, peer.is_requestor) == (
        "127.0.0.1",
        "127.0.0.1",
        True,
    )


def rejection(assoc: Any) -> tuple[int, int, int] | None:
    rj = assoc.acceptor.primitive if assoc.is_rejected else None
    return (rj.result, rj.result_source, rj.diagnostic) if rj is not None else None


def test_echo_over_tls_with_a_client_certificate_naming_the_ae(node: Node) -> None:
    node.terms["CT1"] = Admission(True, "registered", ECHO, tls_required=True, tls_client_cert=True)

    assert echo_ok(associate(node, "CT1", tls=tls_args(node, "CT1")))


def test_certificate_of_another_ae_is_rejected_and_audited(node: Node) -> None:
    node.terms["CT1"] = Admission(True, "registered", ECHO, tls_required=True, tls_client_cert=True)

    assoc = associate(node, "CT1", tls=tls_args(node, "MR1"))

    assert rejection(assoc) == (0x01, 0x01, 0x01)
    assert "client certificate does not name this AE" in node.refusals()


def test_tls_required_ae_is_rejected_on_the_plain_port_and_audited(node: Node) -> None:
    node.terms["TLSONLY"] = Admission(True, "registered", ECHO, tls_required=True)

    assert rejection(associate(node, "TLSONLY")) == (0x01, 0x01, 0x01)
    assert echo_ok(associate(node, "TLSONLY", tls=tls_args(node)))
    assert "TLS required for this AE" in node.refusals()


def test_wrong_called_ae_over_tls_is_rejected_as_called_ae_not_recognised(node: Node) -> None:
    node.terms["OPEN"] = Admission(True, "registered", ECHO)

    assoc = associate(node, "OPEN", tls=tls_args(node), called="NOT-EDGE")

    assert rejection(assoc) == (0x01, 0x01, 0x07)


def test_plain_dicom_to_the_tls_port_gets_no_association(node: Node) -> None:
    node.terms["OPEN"] = Admission(True, "registered", ECHO)
    client = AE(ae_title="OPEN")
    client.acse_timeout = client.network_timeout = 5
    client.add_requested_context(Verification)

    assoc = client.associate("127.0.0.1", node.tls_port, ae_title="EDGE")

    assert not assoc.is_established and not assoc.is_rejected
    assert echo_ok(associate(node, "OPEN", tls=tls_args(node)))  # the server is still there
    assert_node_authentication_failure(node.handshake_refusals("not TLS"), "not TLS")


def test_a_client_certificate_of_another_ca_fails_the_handshake_and_is_audited(
    node: Node, tmp_path: Path
) -> None:
    node.terms["CT1"] = Admission(True, "registered", ECHO, tls_required=True, tls_client_cert=True)
    stranger = ensure_dev_pki(tmp_path / "stranger", ("CT1",))
    context = client_context(node.pki.ca, stranger.client_cert("CT1"), stranger.client_key("CT1"))

    assoc = associate(node, "CT1", tls=(context, "localhost"))

    assert not assoc.is_established and not assoc.is_rejected
    reason = "certificate verify failed"
    assert_node_authentication_failure(node.handshake_refusals(reason), reason)


def test_a_handshake_left_unfinished_times_out_and_is_audited(tmp_path: Path) -> None:
    with serving(ensure_dev_pki(tmp_path / "pki"), timeout=1) as node:
        with socket.create_connection(("127.0.0.1", node.tls_port), timeout=5) as raw:
            raw.sendall(b"\x16\x03\x01")  # the start of a TLS record, and then nothing
            reason = "handshake timed out"
            assert_node_authentication_failure(node.handshake_refusals(reason), reason)
            assert raw.recv(1) == b""  # the listener closed it


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_are_refused_in_the_handshake(node: Node, version: ssl.TLSVersion) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(node.pki.ca)
    # Let this client offer the old versions at all (OpenSSL's default security level forbids).
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = version
    with socket.create_connection(("127.0.0.1", node.tls_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError, match="(?i)protocol version|unsupported protocol"):
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.recv(1)
    reason = "protocol version"
    assert_node_authentication_failure(node.handshake_refusals(reason), reason)


def test_a_silent_connection_to_the_tls_port_holds_up_nobody(node: Node) -> None:
    node.terms["OPEN"] = Admission(True, "registered", ECHO)
    with socket.create_connection(("127.0.0.1", node.tls_port), timeout=5):
        assert echo_ok(associate(node, "OPEN", tls=tls_args(node)))


# -- certificate revocation (EDGE_TLS_CRL_FILE) -------------------------------------------------


@pytest.fixture(scope="module")
def crl_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A TLS port whose CA has revoked the certificate of REVOKED (and only that one)."""
    pki = ensure_dev_pki(tmp_path_factory.mktemp("crl"), ("CT1", "REVOKED"))
    crl = write_dev_crl(pki, (pki.client_cert("REVOKED"),))
    with serving(pki, crl) as node:
        node.terms["CT1"] = Admission(True, "registered", ECHO, tls_client_cert=True)
        node.terms["REVOKED"] = Admission(True, "registered", ECHO, tls_client_cert=True)
        yield node


def test_a_revoked_client_certificate_fails_the_handshake(crl_node: Node) -> None:
    with socket.create_connection(("127.0.0.1", crl_node.tls_port), timeout=5) as raw:
        # TLS 1.3 sends the client certificate after the client's handshake is done: the
        # server's verdict (a certificate_revoked alert) arrives with the first read.
        with pytest.raises(ssl.SSLError, match="(?i)certificate revoked"):
            with tls_args(crl_node, "REVOKED")[0].wrap_socket(
                raw, server_hostname="localhost"
            ) as tls:
                tls.recv(1)

    assoc = associate(crl_node, "REVOKED", tls=tls_args(crl_node, "REVOKED"))

    assert not assoc.is_established and not assoc.is_rejected  # no association at all
    reason = "certificate revoked"
    assert_node_authentication_failure(crl_node.handshake_refusals(reason), reason)


def test_a_certificate_the_crl_does_not_list_is_accepted(crl_node: Node) -> None:
    assert echo_ok(associate(crl_node, "CT1", tls=tls_args(crl_node, "CT1")))
    crl_node.terms["NOCERT"] = Admission(True, "registered", ECHO, tls_required=True)
    assert echo_ok(associate(crl_node, "NOCERT", tls=tls_args(crl_node)))  # none sent: no check


def test_a_crl_file_without_a_crl_or_without_a_ca_is_refused_at_start(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "pki")
    with pytest.raises(ValueError, match="no PEM CRL"):
        server_context(pki.server_cert, pki.server_key, pki.ca, pki.ca)
    with pytest.raises(ValueError, match="needs a CA file"):
        server_context(pki.server_cert, pki.server_key, None, write_dev_crl(pki))


def test_password_identity_is_verified_and_answered_with_a_positive_response(node: Node) -> None:
    node.terms["ID1"] = Admission(
        True, "registered", ECHO, identity="required", identity_kinds=frozenset({"password"})
    )

    assoc = associate(node, "ID1", identity=(2, b"alice", PASSWORD.encode(), True))

    assert assoc.is_established
    assert assoc.acceptor.user_identity is not None  # the positive response came
    assert echo_ok(assoc)
    assert "alice" in node.users()


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        (None, "user identity required"),
        ((2, b"alice", b"wrong-password!", False), "user identity: wrong password"),
        ((5, b"forged.jwt.token", None, False), "user identity: forged"),
        ((1, b"alice", None, False), "user identity type username not accepted"),
    ],
)
def test_required_identity_missing_or_wrong_is_rejected_and_audited(
    node: Node, identity: tuple[int, bytes, bytes | None, bool] | None, reason: str
) -> None:
    node.terms["ID2"] = Admission(
        True, "registered", ECHO, identity="required", identity_kinds=frozenset({"password", "jwt"})
    )

    assoc = associate(node, "ID2", identity=identity)

    assert rejection(assoc) == (0x01, 0x02, 0x01)
    assert reason in node.refusals()


def test_jwt_identity_is_accepted_where_optional(node: Node) -> None:
    node.terms["ID3"] = Admission(
        True, "registered", ECHO, identity="optional", identity_kinds=frozenset({"jwt"})
    )

    assert echo_ok(associate(node, "ID3"))  # none given: fine
    assert echo_ok(associate(node, "ID3", identity=(5, b"good.jwt.token", None, False)))
    assert "router" in node.users()


def test_identity_offered_to_an_ae_without_identity_terms_is_ignored(node: Node) -> None:
    node.terms["PLAIN"] = Admission(True, "registered", ECHO)

    assoc = associate(node, "PLAIN", identity=(2, b"alice", b"anything-at-all", True))

    assert assoc.is_established
    assert assoc.acceptor.user_identity is None  # not supported: no response (PS3.7 D.3.3.7)
    assert echo_ok(assoc)
