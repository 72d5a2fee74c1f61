"""Refused TLS handshakes: the reason in our words from OpenSSL's errors, and the audit trail
fed by them coalesced per address and reason (``edge.listener.handshakes``)."""

from __future__ import annotations

import ssl

import pytest
from prometheus_client import REGISTRY

from edge.common.audit import Auditor
from edge.listener.handshakes import UNTRACKED, HandshakeRefusals
from edge.listener.tls_server import REASONS, refusal_reason


def verify_error(code: int) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = code
    return error


def ssl_error(reason: str, kind: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    error = kind(1, f"[SSL: {reason}] something (_ssl.c:1006)")
    error.reason = reason
    return error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (verify_error(23), "certificate revoked"),
        (verify_error(10), "certificate expired"),
        (verify_error(20), "certificate verify failed"),  # unable to get local issuer
        (ssl_error("UNSUPPORTED_PROTOCOL"), "protocol version"),
        (ssl_error("WRONG_VERSION_NUMBER"), "not TLS"),
        (ssl_error("NO_SHARED_CIPHER"), "no shared cipher"),
        (ssl_error("TLSV1_ALERT_UNKNOWN_CA"), "our certificate refused by the peer"),
        (ssl_error("TLSV1_ALERT_DECRYPT_ERROR"), "alert from the peer"),
        (ssl_error("SOMETHING_ELSE", ssl.SSLEOFError), "closed in the handshake"),
        (ssl_error("SOMETHING_ELSE"), "handshake failed"),
        (TimeoutError("_ssl.c:983: The handshake operation timed out"), "handshake timed out"),
        (ConnectionResetError(104, "Connection reset by peer"), "closed in the handshake"),
    ],
)
def test_refusal_reasons_are_our_words_from_a_closed_set(error: Exception, reason: str) -> None:
    assert refusal_reason(error) == reason
    assert reason in REASONS


def refused_total(reason: str) -> float:
    labels = {"reason": reason}
    return REGISTRY.get_sample_value("edge_tls_handshakes_refused_total", labels) or 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def alerts(auditor: Auditor) -> list[tuple[str, str | None, str]]:
    """(peer, description, failures) of each audited refusal, in order."""
    return [
        (e.participants[0].user_id, e.outcome_description, e.objects[0].details[1].value)
        for e in auditor.pending
    ]


def test_repeats_from_one_address_are_counted_and_audited_once_per_window() -> None:
    auditor, clock = Auditor(None, source="edge-listener", hash_key="k"), Clock()
    refusals = HandshakeRefusals(auditor, window=60, clock=clock)
    before = refused_total("certificate revoked")

    for _ in range(38):
        refusals("10.0.0.7", "certificate revoked")
        clock.now += 1
    refusals("10.0.0.8", "not TLS")  # another address: audited at once
    refusals.flush()  # 38 s in: the window of 10.0.0.7 is still open

    assert alerts(auditor) == [
        ("10.0.0.7", "certificate revoked", "1"),
        ("10.0.0.8", "not TLS", "1"),
    ]
    assert refused_total("certificate revoked") - before == 38

    clock.now += 30
    refusals.flush()  # both windows ended: one message with the 37 repeats, none for 10.0.0.8

    assert alerts(auditor)[2:] == [
        ("10.0.0.7", "certificate revoked (37 more within 60 s)", "37"),
    ]

    refusals("10.0.0.7", "certificate revoked")  # a new window: audited at once again
    assert alerts(auditor)[3:] == [("10.0.0.7", "certificate revoked", "1")]


def test_another_reason_from_the_same_address_is_audited_on_its_own() -> None:
    auditor = Auditor(None, source="edge-listener", hash_key="k")
    refusals = HandshakeRefusals(auditor, clock=Clock())

    refusals("10.0.0.7", "certificate revoked")
    refusals("10.0.0.7", "protocol version")

    assert [d for _, d, _ in alerts(auditor)] == ["certificate revoked", "protocol version"]


def test_addresses_beyond_the_tracked_ones_are_coalesced_together() -> None:
    auditor = Auditor(None, source="edge-listener", hash_key="k")
    refusals = HandshakeRefusals(auditor, max_tracked=2, clock=Clock())

    for host in range(1, 11):
        refusals(f"10.0.0.{host}", "not TLS")
    refusals.flush(everything=True)  # at shutdown: every open window's repeats

    assert alerts(auditor) == [
        ("10.0.0.1", "not TLS", "1"),
        ("10.0.0.2", "not TLS", "1"),
        (UNTRACKED, "not TLS", "1"),
        (UNTRACKED, "not TLS (7 more within 60 s)", "7"),
    ]
    untracked = auditor.pending[2].participants[0]
    assert untracked.kind == "node" and untracked.network_access_point is None
