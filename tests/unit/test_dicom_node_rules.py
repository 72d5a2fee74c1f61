"""DICOM nodes: the registry's terms for an AE (TLS, client certificate, user identity), the
listener's decisions on what an association brought, the EVT_USER_ID handler, auth's
``identify`` (argon2id, lockout, audited) and the development PKI's certificates."""

from __future__ import annotations

import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge.auth.handlers import admit, identify
from edge.auth.passwords import Hashing
from edge.auth.registry import RemoteAE
from edge.common.admission import Admission, Identified
from edge.common.tls import (
    certificate_names,
    certificate_names_ae,
    client_context,
    ensure_dev_pki,
    server_context,
)
from edge.listener.identity import (
    JWT,
    SAML,
    USERNAME,
    USERNAME_PASSCODE,
    identity_refusal,
    on_user_identity,
    outcome_of,
    transport_refusal,
)
from tests.unit.test_auth_admission import DictRegistry
from tests.unit.test_auth_tokens import FAST, POLICY, MemoryUsers, Recorder

BOTH = frozenset({"password", "jwt"})


def terms(**kw: Any) -> Admission:
    return Admission(True, "registered", frozenset({"echo"}), **kw)


def cert(cn: str, *dns: str) -> dict[str, Any]:
    """A peer certificate as ``SSLSocket.getpeercert()`` returns it."""
    return {
        "subject": ((("commonName", cn),),),
        "subjectAltName": tuple(("DNS", d) for d in dns),
    }


# -- the registry's terms ----------------------------------------------------------------------


async def test_admission_carries_the_registry_terms_for_tls_and_identity() -> None:
    ae = RemoteAE(
        "CT1",
        ("10.0.0.5",),
        104,
        frozenset({"store"}),
        tls_client_cert=True,
        user_identity="required",
        identity_kinds=frozenset({"jwt"}),
    )

    admission = await admit(DictRegistry(ae), "CT1", "10.0.0.5")

    assert admission.allowed
    assert admission.tls_required and admission.tls_client_cert  # a certificate implies TLS
    assert admission.identity == "required"
    assert admission.identity_kinds == frozenset({"jwt"})


def test_admission_terms_survive_json_and_an_old_reply_means_no_terms() -> None:
    admission = terms(tls_required=True, identity="optional", identity_kinds=BOTH)

    assert Admission.from_json(admission.to_json()) == admission
    old = Admission.from_json({"allowed": True, "reason": "registered", "permissions": ["echo"]})
    assert (old.tls_required, old.tls_client_cert, old.identity) == (False, False, "none")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"user_identity": "sometimes"}, "user identity must be one of"),
        ({"identity_kinds": frozenset({"kerberos"})}, "unknown identity kind"),
        ({"user_identity": "required", "identity_kinds": frozenset()}, "at least one"),
    ],
)
def test_registry_entry_refuses_unknown_identity_terms(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RemoteAE("CT1", ("10.0.0.5",), 104, **options)


# -- transport -----------------------------------------------------------------------------------


def test_tls_required_ae_is_refused_on_the_plain_port() -> None:
    reason = transport_refusal(
        terms(tls_required=True), over_tls=False, peer_cert=None, calling_ae="CT1"
    )
    assert reason == "TLS required for this AE"


def test_tls_required_ae_without_client_certificate_is_admitted_over_tls() -> None:
    assert (
        transport_refusal(terms(tls_required=True), over_tls=True, peer_cert=None, calling_ae="CT1")
        is None
    )


def test_client_certificate_must_name_the_calling_ae() -> None:
    wanted = terms(tls_required=True, tls_client_cert=True)

    assert transport_refusal(wanted, over_tls=True, peer_cert=None, calling_ae="CT1") == (
        "client certificate required for this AE"
    )
    assert transport_refusal(wanted, over_tls=True, peer_cert=cert("CT1"), calling_ae="CT1") is None
    assert (
        transport_refusal(wanted, over_tls=True, peer_cert=cert("x", "CT1"), calling_ae="CT1")
        is None
    )
    assert transport_refusal(wanted, over_tls=True, peer_cert=cert("MR1"), calling_ae="CT1") == (
        "client certificate does not name this AE"
    )


def test_someone_elses_certificate_is_refused_even_when_none_is_required() -> None:
    assert transport_refusal(terms(), over_tls=True, peer_cert=cert("MR1"), calling_ae="CT1")


def test_plain_association_of_an_ae_without_tls_terms_is_fine() -> None:
    assert transport_refusal(terms(), over_tls=False, peer_cert=None, calling_ae="CT1") is None


def test_certificate_names_are_subject_cns_and_san_dns_names() -> None:
    names = certificate_names(
        {
            "subject": ((("countryName", "NL"),), (("commonName", "CT1"),)),
            "subjectAltName": (("DNS", "ct1.hospital"), ("IP Address", "10.0.0.5")),
        }
    )
    assert names == frozenset({"CT1", "ct1.hospital"})
    assert certificate_names(None) == frozenset()
    assert certificate_names_ae(cert("CT1"), "CT1 ")
    assert not certificate_names_ae(cert("ct1"), "CT1")


# -- user identity -------------------------------------------------------------------------------


def test_missing_identity_is_refused_only_where_required() -> None:
    assert identity_refusal(terms(identity="required", identity_kinds=BOTH), None) == (
        "user identity required"
    )
    assert identity_refusal(terms(identity="optional", identity_kinds=BOTH), None) is None
    assert identity_refusal(terms(), None) is None


def test_identity_offered_to_an_ae_without_identity_terms_is_ignored() -> None:
    assert identity_refusal(terms(), USERNAME_PASSCODE) is None
    assert identity_refusal(terms(), SAML) is None


def test_identity_of_a_kind_the_ae_may_not_use_is_refused() -> None:
    jwt_only = terms(identity="required", identity_kinds=frozenset({"jwt"}))

    assert identity_refusal(jwt_only, JWT) is None
    assert identity_refusal(jwt_only, USERNAME_PASSCODE) == (
        "user identity type username and passcode not accepted"
    )
    # A bare username proves nothing: never accepted as an identity.
    assert identity_refusal(terms(identity="optional", identity_kinds=BOTH), USERNAME)


def user_id_event(user_id_type: int, primary: bytes, secondary: bytes | None = None) -> Any:
    assoc = SimpleNamespace(requestor=SimpleNamespace(address="10.0.0.5"))
    return SimpleNamespace(
        assoc=assoc, user_id_type=user_id_type, primary_field=primary, secondary_field=secondary
    )


def test_user_identity_handler_verifies_a_passcode_and_answers_with_an_empty_response() -> None:
    asked: list[tuple[str, bytes, bytes | None, str]] = []

    def identify(kind: str, primary: bytes, secondary: bytes | None, address: str) -> Identified:
        asked.append((kind, primary, secondary, address))
        return Identified(True, "alice", "radiologist")

    event = user_id_event(USERNAME_PASSCODE, b"alice", b"secret")

    assert on_user_identity(event, identify) == (True, b"")
    assert asked == [("password", b"alice", b"secret", "10.0.0.5")]
    outcome = outcome_of(event.assoc)
    assert outcome is not None and outcome.user == "alice"


def test_user_identity_handler_refuses_a_bad_token_with_the_reason() -> None:
    event = user_id_event(JWT, b"not-a-token")

    verdict = on_user_identity(event, lambda *_: Identified(False, reason="token expired"))

    assert verdict == (False, None)
    outcome = outcome_of(event.assoc)
    assert outcome is not None and outcome.reason == "token expired"


def test_user_identity_handler_refuses_when_it_cannot_ask() -> None:
    def down(*_: Any) -> Identified:
        raise TimeoutError

    event = user_id_event(USERNAME_PASSCODE, b"alice", b"secret")

    assert on_user_identity(event, down) == (False, None)
    outcome = outcome_of(event.assoc)
    assert outcome is not None and outcome.reason == "user identity could not be checked"
    assert outcome.unavailable  # no verdict: the association is rejected transiently


def test_user_identity_handler_passes_on_an_answer_that_says_it_could_not_check() -> None:
    event = user_id_event(USERNAME_PASSCODE, b"alice", b"secret")
    away = Identified(False, reason="user database unavailable", unavailable=True)

    assert on_user_identity(event, lambda *_: away) == (False, None)
    outcome = outcome_of(event.assoc)
    assert outcome is not None and outcome.unavailable
    wrong = user_id_event(USERNAME_PASSCODE, b"alice", b"wrong")
    on_user_identity(wrong, lambda *_: Identified(False, reason="wrong password"))
    assert not outcome_of(wrong.assoc).unavailable  # type: ignore[union-attr]


# -- auth.identify -------------------------------------------------------------------------------


@pytest.fixture
def users() -> MemoryUsers:
    store = MemoryUsers()
    store.add("alice", "radiologist", "alice-password-1")
    return store


async def test_identify_verifies_username_and_passcode_and_audits_the_login(
    users: MemoryUsers,
) -> None:
    audit = Recorder()
    hashing = Hashing(1, FAST)

    answer = await identify(
        users, hashing, POLICY, "alice", "alice-password-1", address="10.0.0.5", audit=audit
    )

    assert answer == Identified(True, "alice", "radiologist")
    assert audit.logins == [("alice", True, "")]


async def test_identify_counts_wrong_passcodes_towards_the_lockout(users: MemoryUsers) -> None:
    audit = Recorder()
    hashing = Hashing(1, FAST)

    answers = [
        await identify(users, hashing, POLICY, "alice", "wrong-password-x", audit=audit)
        for _ in range(POLICY.threshold)
    ]
    locked = await identify(users, hashing, POLICY, "alice", "alice-password-1", audit=audit)

    assert [a.verified for a in answers] == [False] * POLICY.threshold
    assert answers[0].reason == "wrong password"
    assert answers[-1].reason == "wrong password; now locked"
    assert locked == Identified(False, reason="locked")
    assert [success for _, success, _ in audit.logins] == [False] * (POLICY.threshold + 1)


async def test_identify_of_an_unknown_user_fails(users: MemoryUsers) -> None:
    answer = await identify(users, Hashing(1, FAST), POLICY, "mallory", "whatever-password")

    assert answer == Identified(False, reason="unknown user")


# -- the development PKI -------------------------------------------------------------------------


def test_dev_pki_makes_a_ca_a_server_and_client_certificates_once(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "tls", ("STORESCU",))
    first = pki.server_cert.read_bytes()

    again = ensure_dev_pki(tmp_path / "tls", ("STORESCU", "MOVESCU"))

    assert again.server_cert.read_bytes() == first
    assert again.client_cert("MOVESCU").exists()
    assert oct(pki.ca_key.stat().st_mode & 0o777) == "0o600"
    server = server_context(pki.server_cert, pki.server_key, pki.ca)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_OPTIONAL
    client = client_context(pki.ca, pki.client_cert("STORESCU"), pki.client_key("STORESCU"))
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.check_hostname
