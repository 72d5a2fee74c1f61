"""Bearer tokens on the HTTP APIs: the route policy, local verification, the middleware."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edge.auth.keys import SigningKey, new_key_pair
from edge.auth.tokens import TokenConfig, issue_token
from edge.auth.users import LockoutPolicy
from edge.common.authn import (
    ROLE_PERMISSIONS,
    AuthMiddleware,
    AuthUnavailable,
    InvalidToken,
    Permission,
    TokenVerifier,
    bearer_token,
    required_permission,
)

CONFIG = TokenConfig(
    issuer="dicom-edge", audience="dicom-edge", lifetime=600, lockout=LockoutPolicy()
)


def make_key() -> tuple[SigningKey, dict[str, Any]]:
    from cryptography.hazmat.primitives import serialization

    kid, pem, jwk = new_key_pair()
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    return SigningKey(kid, private, datetime.now(UTC)), jwk  # type: ignore[arg-type]


class Keys:
    """A key source that counts its fetches; ``down`` makes it fail."""

    def __init__(self, *jwks: dict[str, Any]) -> None:
        self.jwks = list(jwks)
        self.fetches = 0
        self.down = False

    async def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        if self.down:
            raise ConnectionError("auth down")
        return {"keys": self.jwks}


def verifier(keys: Keys, **options: Any) -> TokenVerifier:
    return TokenVerifier(keys, issuer="dicom-edge", audience="dicom-edge", min_refresh=0, **options)


@pytest.mark.parametrize(
    ("method", "path", "permission"),
    [
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("POST", "/api/auth/token", None),
        ("GET", "/api/auth/jwks", None),
        ("GET", "/viewer", None),
        ("GET", "/viewer/app-config.js", None),
        ("GET", "/viewerx", Permission.ADMIN),
        ("GET", "/dicom-web/studies", Permission.SEARCH),
        ("GET", "/dicom-web/series", Permission.SEARCH),
        ("GET", "/dicom-web/instances", Permission.SEARCH),
        ("GET", "/dicom-web/studies/1.2/series", Permission.SEARCH),
        ("GET", "/dicom-web/studies/1.2/instances", Permission.SEARCH),
        ("GET", "/dicom-web/studies/1.2/series/1.3/instances", Permission.SEARCH),
        ("HEAD", "/dicom-web/studies", Permission.SEARCH),
        ("GET", "/dicom-web/studies/1.2", Permission.RETRIEVE),
        ("GET", "/dicom-web/studies/1.2/metadata", Permission.RETRIEVE),
        ("GET", "/dicom-web/studies/1.2/series/1.3/instances/1.4", Permission.RETRIEVE),
        ("GET", "/dicom-web/studies/1.2/series/1.3/instances/1.4/frames/1", Permission.RETRIEVE),
        ("GET", "/dicom-web/studies/1.2/thumbnail", Permission.RETRIEVE),
        ("GET", "/dicom-web/wado", Permission.RETRIEVE),
        ("POST", "/dicom-web/studies", Permission.STORE),
        ("POST", "/dicom-web/studies/1.2", Permission.STORE),
        ("GET", "/api/changes", Permission.CHANGES),
        ("GET", "/api/audit", Permission.AUDIT),
        ("POST", "/api/scrub", Permission.ADMIN),
        ("DELETE", "/dicom-web/studies/1.2", Permission.ADMIN),
        ("POST", "/dicom-web/studies/1.2/series/1.3", Permission.ADMIN),
        ("GET", "/api/anything-new", Permission.ADMIN),
        ("GET", "/healthz/", Permission.ADMIN),
    ],
)
def test_each_route_needs_the_permission_of_its_rule_and_unknown_ones_need_admin(
    method: str, path: str, permission: Permission | None
) -> None:
    assert required_permission(method, path) == permission


def test_role_table() -> None:
    assert ROLE_PERMISSIONS["admin"] == frozenset(Permission)
    assert ROLE_PERMISSIONS["requester"] == frozenset()
    assert ROLE_PERMISSIONS["him"] == {Permission.AUDIT}
    assert Permission.ADMIN not in ROLE_PERMISSIONS["service"]
    assert Permission.CHANGES not in ROLE_PERMISSIONS["radiologist"]


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer a b", None),
        (None, None),
    ],
)
def test_bearer_token_from_the_authorization_header(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


async def test_a_token_from_a_published_key_is_verified_with_its_claims() -> None:
    key, jwk = make_key()
    issued = issue_token(key, subject="alice", role="radiologist", config=CONFIG)
    principal = await verifier(Keys(jwk)).verify(issued.access_token)
    assert (principal.subject, principal.role) == ("alice", "radiologist")
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert set(claims) == {"iss", "aud", "sub", "role", "iat", "exp", "jti"}
    assert claims["exp"] - claims["iat"] == 600


async def test_expired_foreign_audience_issuer_and_forged_tokens_are_invalid() -> None:
    key, jwk = make_key()
    check = verifier(Keys(jwk))
    old = issue_token(key, subject="a", role="admin", config=CONFIG, now=time.time() - 700)
    with pytest.raises(InvalidToken, match="expired"):
        await check.verify(old.access_token)
    for config in (
        TokenConfig("dicom-edge", "someone-else", 600, LockoutPolicy()),
        TokenConfig("evil", "dicom-edge", 600, LockoutPolicy()),
    ):
        with pytest.raises(InvalidToken):
            await check.verify(
                issue_token(key, subject="a", role="admin", config=config).access_token
            )
    # Same key id, another private key: the signature fails.
    other, _ = make_key()
    forged = issue_token(
        SigningKey(key.kid, other.private_key, key.created_at),
        subject="a",
        role="admin",
        config=CONFIG,
    )
    with pytest.raises(InvalidToken):
        await check.verify(forged.access_token)
    # A token whose payload was edited (role raised) after signing.
    head, body, sig = issue_token(
        key, subject="a", role="requester", config=CONFIG
    ).access_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["role"] = "admin"
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        await check.verify(f"{head}.{edited}.{sig}")


async def test_unsigned_and_symmetric_tokens_are_refused() -> None:
    key, jwk = make_key()
    check = verifier(Keys(jwk))
    claims = {
        "sub": "a",
        "role": "admin",
        "iss": "dicom-edge",
        "aud": "dicom-edge",
        "iat": int(time.time()),
        "exp": int(time.time()) + 60,
        "jti": "x",
    }
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": key.kid})
    with pytest.raises(InvalidToken):
        await check.verify(unsigned)
    # The public JWK's x coordinate used as an HMAC secret: the classic algorithm confusion.
    hs = jwt.encode(claims, jwk["x"].encode() * 2, algorithm="HS256", headers={"kid": key.kid})
    with pytest.raises(InvalidToken):
        await check.verify(hs)
    with pytest.raises(InvalidToken):
        await check.verify("not-a-token")


async def test_an_unknown_key_id_fetches_the_jwks_again_once() -> None:
    first, first_jwk = make_key()
    keys = Keys(first_jwk)
    check = verifier(keys)
    await check.verify(issue_token(first, subject="a", role="admin", config=CONFIG).access_token)
    assert keys.fetches == 1
    rotated, rotated_jwk = make_key()
    keys.jwks.append(rotated_jwk)
    await check.verify(issue_token(rotated, subject="a", role="admin", config=CONFIG).access_token)
    assert keys.fetches == 2
    stranger, _ = make_key()
    with pytest.raises(InvalidToken, match="unknown key"):
        await check.verify(
            issue_token(stranger, subject="a", role="admin", config=CONFIG).access_token
        )
    assert keys.fetches == 3


async def test_auth_down_is_unavailable_for_unknown_keys_but_cached_keys_still_verify() -> None:
    key, jwk = make_key()
    keys = Keys(jwk)
    check = verifier(keys, cache_ttl=0)
    token = issue_token(key, subject="a", role="admin", config=CONFIG).access_token
    await check.verify(token)
    keys.down = True
    assert (await check.verify(token)).subject == "a"  # stale cache, still the same keys
    other, _ = make_key()
    with pytest.raises(AuthUnavailable):
        await check.verify(
            issue_token(other, subject="a", role="admin", config=CONFIG).access_token
        )


def app_with(check: TokenVerifier) -> httpx.AsyncClient:
    async def echo(request: Request) -> JSONResponse:
        principal = request.state.principal
        return JSONResponse({"sub": principal.subject})

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/healthz", health),
            Route("/dicom-web/studies", echo),
            Route("/api/scrub", echo, methods=["POST"]),
        ],
        middleware=[Middleware(AuthMiddleware, verifier=check)],
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge")


async def test_middleware_answers_401_403_as_problems_and_passes_open_paths() -> None:
    key, jwk = make_key()
    async with app_with(verifier(Keys(jwk))) as http:
        assert (await http.get("/healthz")).status_code == 200
        missing = await http.get("/dicom-web/studies")
        assert missing.status_code == 401
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.headers["www-authenticate"] == 'Bearer realm="dicom-edge"'
        bad = await http.get("/dicom-web/studies", headers={"Authorization": "Bearer x.y.z"})
        assert bad.status_code == 401
        assert 'error="invalid_token"' in bad.headers["www-authenticate"]

        def auth(role: str) -> dict[str, str]:
            token = issue_token(key, subject=role, role=role, config=CONFIG).access_token
            return {"Authorization": f"Bearer {token}"}

        ok = await http.get("/dicom-web/studies", headers=auth("radiologist"))
        assert (ok.status_code, ok.json()) == (200, {"sub": "radiologist"})
        denied = await http.get("/dicom-web/studies", headers=auth("requester"))
        assert denied.status_code == 403
        assert denied.json()["title"] == "Forbidden"
        assert (await http.post("/api/scrub", headers=auth("service"))).status_code == 403
        assert (await http.post("/api/scrub", headers=auth("admin"))).status_code == 200


async def test_middleware_answers_503_when_no_key_can_be_fetched() -> None:
    key, _ = make_key()
    keys = Keys()
    keys.down = True
    token = issue_token(key, subject="a", role="admin", config=CONFIG).access_token
    async with app_with(verifier(keys)) as http:
        response = await http.get(
            "/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 503


async def test_a_verified_token_is_remembered_yet_still_expires_is_revoked_and_follows_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edge.common.revocation import Revocations

    key, jwk = make_key()
    keys = Keys(jwk)
    revocations = Revocations()
    revocations.set_ready(True)
    check = verifier(keys, cache_ttl=0, revocations=revocations)
    token = issue_token(key, subject="alice", role="admin", config=CONFIG).access_token
    decodes = 0
    real_decode = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal decodes
        decodes += 1
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    for _ in range(3):
        assert (await check.verify(token)).subject == "alice"
    assert decodes == 1  # the signature was checked once
    # Revoked after it was remembered: refused all the same.
    revocations.merge({"alice": int(time.time()) + 1})
    with pytest.raises(InvalidToken, match="revoked"):
        await check.verify(token)
    # Expiry is checked on every use (the remembered token passes its exp + leeway).
    bob = issue_token(key, subject="bob", role="admin", config=CONFIG).access_token
    await check.verify(bob)
    later = time.time() + CONFIG.lifetime + 11
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(InvalidToken, match="expired"):
        await check.verify(bob)
    monkeypatch.undo()
    # Its signing key withdrawn from the JWKS (cache_ttl 0: fetched again): forgotten.
    carol = issue_token(key, subject="carol", role="admin", config=CONFIG).access_token
    await check.verify(carol)
    _, other_jwk = make_key()
    keys.jwks = [other_jwk]
    with pytest.raises(InvalidToken, match="unknown key"):
        await check.verify(carol)
