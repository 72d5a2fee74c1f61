"""DICOM nodes end to end (issue 6): admission by the AE registry, DICOM User Identity checked
by auth (username and passcode) or against auth's JWKS (JWT), and DICOM TLS on its own port,
driven by DCMTK and pynetdicom against one running suite. Every refusal must be in the audit
trail as a Security Alert with its reason."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import jwt
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from bench.generate import generate_ct_study
from edge.cli.devsuite import DevSuite, dcmtk, dcmtk_env
from edge.common.dimse import NODELAY_HANDLER
from edge.common.netutil import free_ports
from edge.common.tls import client_context
from tests.e2e.conftest import Client
from tests.e2e.rawscu import send_raw

pytestmark = pytest.mark.e2e

LOCAL = "127.0.0.1"


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    [path] = generate_ct_study(
        tmp_path_factory.mktemp("ct"), series=1, per_series=1, rows=16, cols=16
    )
    return path


def register(suite: DevSuite, title: str, *options: str, allow: str = "echo,store") -> None:
    suite.edge("ae", "add", title, "--host", LOCAL, "--port", "104", "--allow", allow, *options)


def audited(suite: DevSuite, sql: str, *params: object, until: Any, timeout: float = 20) -> Any:
    """Rows of ``sql`` over the audit trail once ``until(rows)`` holds (events arrive through
    the broker, a moment after the association)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = Client(suite).query(sql, *params)
        if until(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def refused(suite: DevSuite, calling: str, reason: str) -> bool:
    """True once a Security Alert for ``calling`` whose reason contains ``reason`` is stored."""
    rows = audited(
        suite,
        "SELECT canonical::jsonb -> 'data' ->> 'outcome_description' FROM audit_log"
        " WHERE event_type = 'audit.security-alert' AND participants[1] = %s ORDER BY seq",
        calling,
        until=lambda rows: any(reason in str(r[0]) for r in rows),
    )
    return any(reason in str(r[0]) for r in rows)


def echo(
    suite: DevSuite,
    calling: str,
    *,
    tls: tuple[ssl.SSLContext, str] | None = None,
    identity: tuple[int, bytes, bytes | None] | None = None,
) -> Any:
    """A pynetdicom association (C-ECHO when established); returns it, released."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ae.add_requested_context(Verification)
    options: dict[str, Any] = {}
    if identity is not None:
        item = UserIdentityNegotiation()
        item.user_identity_type, item.primary_field, secondary = identity
        if secondary is not None:
            item.secondary_field = secondary
        item.positive_response_requested = True
        options["ext_neg"] = [item]
    port = suite.tls_port if tls else suite.dicom_port
    assoc = ae.associate(
        LOCAL, port, ae_title="EDGE", tls_args=tls, evt_handlers=[NODELAY_HANDLER], **options
    )
    if assoc.is_established:
        assoc.echo_status = int(assoc.send_c_echo().Status)  # type: ignore[attr-defined]
        assoc.release()
    return assoc


def dcmtk_tls(suite: DevSuite, calling: str) -> list[str]:
    cert, key = suite.client_certificate(calling)
    return ["+tls", str(key), str(cert), "-pw", "+cf", str(suite.pki.ca)]


# -- admission -----------------------------------------------------------------------------------


def test_unknown_ae_is_rejected_and_audited(client: Client) -> None:
    result = client.dcmtk("echoscu", aet="NOBODY", timeout=30)

    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    assert refused(client.suite, "NOBODY", "is not registered")


def test_known_ae_from_the_wrong_address_is_rejected_and_audited(client: Client) -> None:
    client.suite.edge("ae", "add", "FARAWAY", "--host", "192.0.2.7", "--port", "104")

    result = client.dcmtk("echoscu", aet="FARAWAY", timeout=30)

    assert "Calling AE Title Not Recognized" in result.stderr
    assert refused(client.suite, "FARAWAY", "is not registered for 127.0.0.1")


def test_wrong_called_ae_is_rejected_and_audited(client: Client, ct: Path) -> None:
    register(client.suite, "CALLER")

    assert send_raw(ct, port=client.suite.dicom_port, calling="CALLER", called="NOT-EDGE") is None
    assert refused(client.suite, "CALLER", "called AE 'NOT-EDGE' is not ours")


# -- user identity -------------------------------------------------------------------------------


def test_username_and_passcode_from_dcmtk_are_checked_by_auth(client: Client, ct: Path) -> None:
    suite = client.suite
    register(suite, "IDSCU")
    suite.edge("ae", "update", "IDSCU", "--identity", "required", "--identity-kinds", "password")
    assert client.query(
        "SELECT user_identity, identity_kinds, permissions FROM ae_registry WHERE ae_title = %s",
        "IDSCU",
    ) == [("required", ["password"], ["echo", "store"])]  # update kept the rest
    name, password = suite.user("radiologist")

    stored = client.storescu([ct], "--user", name, "--password", password, aet="IDSCU")
    wrong = client.storescu([ct], "--user", name, "--password", "not-the-password", aet="IDSCU")
    missing = client.storescu([ct], aet="IDSCU")

    assert stored.returncode == 0, stored.stderr[-2000:]
    assert wrong.returncode != 0 and missing.returncode != 0
    assert refused(suite, "IDSCU", "user identity: wrong password")
    assert refused(suite, "IDSCU", "user identity required")
    logins = audited(
        suite,
        "SELECT outcome FROM audit_log WHERE event_type = 'audit.user-authentication'"
        " AND participants[1] = %s ORDER BY seq",
        name,
        until=lambda rows: len(rows) >= 2,
    )
    assert [r[0] for r in logins] == [0, 4]  # auth's login events: the right and wrong passcode


def test_jwt_identity_valid_expired_and_forged(client: Client) -> None:
    suite = client.suite
    register(suite, "JWTSCU", "--identity", "required", "--identity-kinds", "jwt")
    token = suite.token("service")
    claims = jwt.decode(token, options={"verify_signature": False})
    header = jwt.get_unverified_header(token)
    forged = jwt.encode(
        {**claims, "role": "admin"},
        "a secret that is not auth's signing key",
        algorithm="HS256",
        headers={"kid": header["kid"]},
    )
    head = token.split(".")[0]
    tampered = ".".join([head, jwt.utils.base64url_encode(b'{"sub":"x"}').decode(), "AAAA"])
    expired = _expired_token(suite, claims, header)

    good = echo(suite, "JWTSCU", identity=(5, token.encode(), None))
    assert good.is_established is False and good.echo_status == 0  # released after the echo
    assert good.acceptor.user_identity is not None  # positive response, as asked
    for bad in (forged, tampered, expired):
        assoc = echo(suite, "JWTSCU", identity=(5, bad.encode(), None))
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x02, 0x01)
    assert refused(suite, "JWTSCU", "user identity: token rejected")
    assert refused(suite, "JWTSCU", "user identity: token names no key or an algorithm")
    assert refused(suite, "JWTSCU", "user identity: token expired")


def test_a_jwt_identity_is_refused_once_its_user_is_revoked(client: Client) -> None:
    suite = client.suite
    register(suite, "JWTREV", "--identity", "required", "--identity-kinds", "jwt")
    name, password = "jwt-revoked", "jwt-revoked-password-1"
    suite.edge("user", "add", name, "--role", "service", "--password", password)

    def token() -> bytes:
        from edge.cli.users import request_token

        return str(request_token(suite.auth_url, name, password)["access_token"]).encode()

    before = token()
    assert echo(suite, "JWTREV", identity=(5, before, None)).echo_status == 0
    suite.edge("user", "revoke", name)
    deadline = time.monotonic() + 10
    while (assoc := echo(suite, "JWTREV", identity=(5, before, None))).is_rejected is False:
        assert time.monotonic() < deadline, "the revoked token still opens associations"
        time.sleep(0.2)
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x02, 0x01)
    assert refused(suite, "JWTREV", "user identity: token revoked")
    assert echo(suite, "JWTREV", identity=(5, token(), None)).echo_status == 0
    suite.edge("user", "remove", name)


def _expired_token(suite: DevSuite, claims: dict[str, Any], header: dict[str, Any]) -> str:
    """A token auth's own key signed, expired an hour ago (the key read from the suite's
    database, as an attacker never could: the point is that expiry alone refuses it)."""
    from cryptography.hazmat.primitives import serialization

    [(pem,)] = Client(suite).query(
        "SELECT private_pem FROM auth_signing_key WHERE kid = %s", header["kid"]
    )
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    now = int(time.time())
    return jwt.encode(
        {**claims, "iat": now - 7200, "exp": now - 3600},
        key,  # type: ignore[arg-type]
        algorithm="ES256",
        headers={"kid": header["kid"]},
    )


# -- DICOM TLS -----------------------------------------------------------------------------------


def test_dcmtk_echo_and_store_over_tls_with_a_client_certificate(client: Client, ct: Path) -> None:
    suite = client.suite
    register(suite, "TLSSCU", "--tls-client-cert")
    tls = dcmtk_tls(suite, "TLSSCU")
    common = ["-aet", "TLSSCU", "-aec", "EDGE", *tls]

    echoed = subprocess.run(
        [dcmtk("echoscu"), *common, LOCAL, str(suite.tls_port)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    stored = subprocess.run(
        [dcmtk("storescu"), *common, LOCAL, str(suite.tls_port), str(ct)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    plain = client.dcmtk("echoscu", aet="TLSSCU", timeout=30)  # tls_client_cert: TLS only

    assert echoed.returncode == 0, echoed.stderr[-2000:]
    assert stored.returncode == 0, stored.stderr[-2000:]
    assert plain.returncode != 0
    assert refused(suite, "TLSSCU", "TLS required for this AE")


def test_pynetdicom_over_tls_and_a_certificate_for_another_ae_is_refused(client: Client) -> None:
    suite = client.suite
    register(suite, "PYTLS", "--tls-client-cert")
    ca = suite.pki.ca
    own = client_context(ca, *suite.client_certificate("PYTLS"))
    other = client_context(ca, *suite.client_certificate("SOMEONE"))

    assert echo(suite, "PYTLS", tls=(own, "localhost")).echo_status == 0
    assert echo(suite, "PYTLS", tls=(other, "localhost")).is_rejected
    assert refused(suite, "PYTLS", "client certificate does not name this AE")


def test_plain_dicom_to_the_tls_port_fails_and_is_audited(client: Client) -> None:
    suite = client.suite
    result = subprocess.run(
        [dcmtk("echoscu"), "-aet", "STORESCU", "-aec", "EDGE", LOCAL, str(suite.tls_port)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    # No AE title was read: the peer is its address (Security Alert, Node Authentication).
    assert refused(suite, LOCAL, "not TLS")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_are_refused(client: Client, version: ssl.TLSVersion) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(client.suite.pki.ca)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer the old versions
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = version
    with socket.create_connection((LOCAL, client.suite.tls_port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError, match="(?i)protocol version|unsupported protocol"):
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.recv(1)


def test_c_move_to_a_tls_destination_goes_over_tls(
    client: Client, ct: Path, tmp_path: Path
) -> None:
    suite = client.suite
    [dest_port] = free_ports(1)
    register(suite, "MOVER", allow="store,move")
    suite.edge(
        "ae", "add", "TLSDEST", "--host", LOCAL, "--port", str(dest_port), "--allow", "echo",
        "--tls",
    )  # fmt: skip
    study = str(pydicom.dcmread(ct).StudyInstanceUID)
    assert client.storescu([ct], aet="MOVER").returncode == 0
    assert client.wait_for_instances(1) >= 1
    cert, key = suite.client_certificate("TLSDEST")
    received = tmp_path / "received"
    received.mkdir()
    # The destination speaks TLS only and trusts our CA (it checks our certificate: -rc).
    storescp = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "TLSDEST", "+tls", str(key), str(cert), "-pw", "+cf",
         str(suite.pki.ca), "-od", str(received), str(dest_port)],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        moved = client.dcmtk(
            "movescu", "-S", "-aem", "TLSDEST", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study}", aet="MOVER", timeout=60,
        )  # fmt: skip
    finally:
        storescp.terminate()
        storescp.wait(10)
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert len(list(received.iterdir())) == 1
