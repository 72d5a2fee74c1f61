"""Token revocation: the decision (a token issued before its user's "not before" second is void),
the verifier's answers (401 like an expired token; 503 while the map is not loaded), and the
issuer's side (a token issued after a revocation is never taken for one issued before)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from edge.auth.tokens import issue_token
from edge.common.authn import AuthUnavailable, InvalidToken
from edge.common.events import TokensRevoked, from_parts, to_body, to_headers
from edge.common.revocation import Revocations, revocations_from_json
from tests.unit.test_authn import CONFIG, Keys, app_with, make_key, verifier


def loaded(entries: dict[str, int] | None = None) -> Revocations:
    revocations = Revocations()
    revocations.merge(entries or {})
    revocations.set_ready(True)
    return revocations


def test_a_token_issued_before_the_users_not_before_second_is_revoked() -> None:
    revocations = loaded({"alice": 1000})
    assert revocations.revoked("alice", 999)
    assert not revocations.revoked("alice", 1000)
    assert not revocations.revoked("alice", 1001)
    assert not revocations.revoked("bob", 1)


def test_times_only_move_forward_whatever_the_order_of_events_and_loads() -> None:
    revocations = Revocations()
    revocations.note("alice", 2000)
    revocations.merge({"alice": 1000, "bob": 1500})  # a load older than the event
    assert revocations.revoked("alice", 1999) and revocations.revoked("bob", 1499)
    revocations.note("bob", 1700)
    assert revocations.revoked("bob", 1699)
    assert len(revocations) == 2


def test_the_rpc_reply_is_a_map_of_logins_to_seconds() -> None:
    assert revocations_from_json({"revocations": {"a": 5, "b": "6"}}) == {"a": 5, "b": 6}
    with pytest.raises(ValueError):
        revocations_from_json({"error": "x"})


def test_the_event_round_trips_through_the_codec() -> None:
    event = TokensRevoked(login="alice", not_before=1764370000, reason="password")
    back = from_parts(to_headers(event, "/edge/auth"), to_body(event))
    assert back == event and back.name == "auth.tokens_revoked"


async def test_the_verifier_refuses_a_revoked_token_and_takes_a_newer_one() -> None:
    key, jwk = make_key()
    now = time.time()
    revocations = loaded()
    check = verifier(Keys(jwk), revocations=revocations)
    old = issue_token(key, subject="alice", role="radiologist", config=CONFIG, now=now - 5)
    assert (await check.verify(old.access_token)).subject == "alice"
    revocations.note("alice", int(now))
    with pytest.raises(InvalidToken, match="revoked"):
        await check.verify(old.access_token)
    new = issue_token(key, subject="alice", role="radiologist", config=CONFIG, now=now)
    assert (await check.verify(new.access_token)).subject == "alice"
    other = issue_token(key, subject="bob", role="radiologist", config=CONFIG, now=now - 5)
    assert (await check.verify(other.access_token)).subject == "bob"


async def test_until_the_map_is_loaded_tokens_cannot_be_checked() -> None:
    key, jwk = make_key()
    check = verifier(Keys(jwk), revocations=Revocations())
    token = issue_token(key, subject="alice", role="admin", config=CONFIG).access_token
    with pytest.raises(AuthUnavailable, match="revocations"):
        await check.verify(token)


async def test_a_token_without_iat_is_refused() -> None:
    key, jwk = make_key()
    claims: dict[str, Any] = {
        "iss": "dicom-edge",
        "aud": "dicom-edge",
        "sub": "alice",
        "role": "admin",
        "exp": int(time.time()) + 600,
        "jti": "x",
    }
    token = jwt.encode(claims, key.private_key, algorithm="ES256", headers={"kid": key.kid})
    with pytest.raises(InvalidToken):
        await verifier(Keys(jwk), revocations=loaded()).verify(token)


def test_a_token_issued_in_the_second_of_a_revocation_says_that_second() -> None:
    key, _ = make_key()
    now = 1000.4  # revoked at 1000.2: not before 1001, rounded up
    issued = issue_token(key, subject="a", role="admin", config=CONFIG, now=now, not_before=1001)
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert claims["iat"] == 1001 and claims["exp"] == 1001 + CONFIG.lifetime
    assert not loaded({"a": 1001}).revoked("a", claims["iat"])
    later = issue_token(key, subject="a", role="admin", config=CONFIG, now=2000.0, not_before=1001)
    assert jwt.decode(later.access_token, options={"verify_signature": False})["iat"] == 2000


async def test_a_revoked_token_gets_the_same_401_problem_as_an_expired_one() -> None:
    key, jwk = make_key()
    now = time.time()
    revocations = loaded({"alice": int(now)})
    revoked = issue_token(key, subject="alice", role="radiologist", config=CONFIG, now=now - 60)
    expired = issue_token(key, subject="bob", role="radiologist", config=CONFIG, now=now - 3600)
    async with app_with(verifier(Keys(jwk), revocations=revocations)) as http:
        answers = [
            await http.get(
                "/dicom-web/studies", headers={"Authorization": f"Bearer {t.access_token}"}
            )
            for t in (revoked, expired)
        ]
    for response in answers:
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["title"] == "Unauthorized"
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert answers[0].json()["detail"] == "token revoked"
    assert answers[1].json()["detail"] == "token expired"
