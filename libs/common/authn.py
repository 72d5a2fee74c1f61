"""Who may call which HTTP API: bearer tokens checked locally against auth's JWKS, and one
policy from roles to permissions to routes.

Every service's HTTP app runs :class:`AuthMiddleware` (``edge.common.runtime.serve``). A request
to an open path (health, metrics, the token endpoint, the JWKS) passes untouched; any other
needs ``Authorization: Bearer <JWT>`` (RFC 6750) signed by one of auth's keys, for our issuer and
audience, not expired, whose ``role`` grants the permission :data:`POLICY` names for the route.
A route no rule names needs ``admin``: deny by default, so a new API is never open by accident.
Answers are RFC 9457 problems: 401 with ``WWW-Authenticate`` (RFC 6750 3) for a missing or bad
token, 403 when the role lacks the permission, 503 when no key for the token can be had.

Tokens are verified here, without a call to auth per request: the JWKS is fetched (over HTTP
from ``EDGE_AUTH_URL``), cached, and fetched again when a token names a key id it lacks (auth
rotated its key) or the cache is older than its TTL. A token issued before its user was locked,
removed, given a new password or role, or revoked is refused like an expired one (401); the map
of such users is kept current from auth's events (:mod:`edge.common.revocation`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt
from prometheus_client import Counter
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.common.http import problem
from edge.common.revocation import Revocations

log = logging.getLogger(__name__)

ROLES = ("admin", "radiologist", "him", "requester", "service")
ALGORITHMS = ("ES256",)
REALM = "dicom-edge"

AUTH_REQUESTS = Counter(
    "edge_http_auth_total",
    "HTTP API requests by authentication outcome",
    ["outcome"],
)


class Permission(StrEnum):
    SEARCH = "search"  # QIDO-RS
    RETRIEVE = "retrieve"  # WADO-RS, WADO-URI
    STORE = "store"  # STOW-RS
    CHANGES = "changes"  # the change feed, GET /api/changes
    AUDIT = "audit"  # reading the audit trail, GET /api/audit
    ADMIN = "admin"  # everything else: /api/scrub, users, AEs, any route no rule names


# Role -> permissions. `requester` (an outside physician) gets nothing directly: what they may
# see is released to them per study by the sharing workflow. `him` approves releases and reads
# the audit trail. `service` is a program: a router, an AI node, a downstream subscriber.
ROLE_PERMISSIONS: Mapping[str, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "radiologist": frozenset({Permission.SEARCH, Permission.RETRIEVE, Permission.STORE}),
    "him": frozenset({Permission.AUDIT}),
    "requester": frozenset(),
    "service": frozenset(
        {Permission.SEARCH, Permission.RETRIEVE, Permission.STORE, Permission.CHANGES}
    ),
}

# Open to anyone: liveness, readiness and metrics (probes and scrapers carry no token), the
# token endpoint itself and the public keys.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/auth/token", "/api/auth/jwks"})
# The viewer's static files (the OHIF app shell, no patient data): a browser loads them before
# it has a token; the DICOMweb requests the viewer then makes carry one.
OPEN_PREFIXES = ("/viewer",)


@dataclass(frozen=True)
class Rule:
    method: str
    pattern: re.Pattern[str]
    permission: Permission


def _rule(method: str, pattern: str, permission: Permission) -> Rule:
    return Rule(method, re.compile(pattern), permission)


_UID = r"[^/]+"
# First full match wins; anything unmatched needs ADMIN.
POLICY: tuple[Rule, ...] = (
    # PS3.18 10.5: STOW-RS
    _rule("POST", rf"/dicom-web/studies(/{_UID})?", Permission.STORE),
    # PS3.18 10.6: the six QIDO-RS search resources
    _rule(
        "GET",
        rf"/dicom-web/(studies|series|instances"
        rf"|studies/{_UID}/(series|instances)|studies/{_UID}/series/{_UID}/instances)",
        Permission.SEARCH,
    ),
    # PS3.18 10.4 (WADO-RS: studies, metadata, frames, bulk data, rendered, thumbnails), WADO-URI
    _rule("GET", r"/dicom-web/.+", Permission.RETRIEVE),
    _rule("GET", r"/api/changes", Permission.CHANGES),
    _rule("GET", r"/api/audit(/.*)?", Permission.AUDIT),
)


def required_permission(method: str, path: str) -> Permission | None:
    """The permission a request needs; None for an open path."""
    if path in OPEN_PATHS or any(
        path == prefix or path.startswith(prefix + "/") for prefix in OPEN_PREFIXES
    ):
        return None
    method = "GET" if method == "HEAD" else method
    for rule in POLICY:
        if rule.method == method and rule.pattern.fullmatch(path):
            return rule.permission
    return Permission.ADMIN


def role_allows(role: str, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS.get(role, frozenset())


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    role: str
    token_id: str
    expires_at: int


VERIFIED_CACHE_SIZE = 10_000  # verified tokens remembered (~1 kB each)


class InvalidToken(Exception):
    """The token is malformed, forged, expired, or not meant for us."""


class AuthUnavailable(Exception):
    """The token cannot be checked now: no key for it could be had (auth's JWKS does not
    answer), or the map of revoked tokens is not loaded."""


# Returns a JWKS document (RFC 7517 5): {"keys": [...]}.
KeySource = Callable[[], Awaitable[dict[str, Any]]]


def http_jwks(url: str, timeout: float = 3.0) -> KeySource:
    """A key source fetching the JWKS at ``url`` (auth's ``/api/auth/jwks``)."""

    def fetch() -> dict[str, Any]:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            document: dict[str, Any] = json.load(response)
        return document

    async def source() -> dict[str, Any]:
        return await asyncio.to_thread(fetch)

    return source


class TokenVerifier:
    """Verifies access tokens against a cached JWKS; fetches it again for an unknown key id
    (at most once per ``min_refresh`` seconds: a flood of made-up key ids costs one fetch a
    second) or when the cache is older than ``cache_ttl``."""

    def __init__(
        self,
        source: KeySource,
        *,
        issuer: str,
        audience: str,
        cache_ttl: float = 300.0,
        min_refresh: float = 1.0,
        leeway: float = 10.0,
        revocations: Revocations | None = None,
    ) -> None:
        self._source = source
        self._issuer = issuer
        self._audience = audience
        self._cache_ttl = cache_ttl
        self._min_refresh = min_refresh
        self._leeway = leeway
        self.revocations = revocations
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        # Tokens whose signature and claims were checked: (principal, iat, kid) by token text,
        # so that a client's every request does not pay for an ECDSA verification (~9 % of the
        # listener's CPU on a loop of small searches). Still checked each time: expiry and
        # revocation; forgotten when the key that signed them leaves the JWKS.
        self._verified: dict[str, tuple[Principal, int, str]] = {}

    async def _refresh(self, kid: str | None) -> None:
        async with self._lock:
            if kid is not None and kid in self._keys:
                return  # another request fetched it while we waited
            wait = self._fetched_at + self._min_refresh - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                document = await self._source()
            except Exception as exc:
                self._fetched_at = time.monotonic()
                raise AuthUnavailable(f"JWKS unavailable: {type(exc).__name__}") from exc
            keys: dict[str, jwt.PyJWK] = {}
            for jwk in document.get("keys", []):
                if jwk.get("alg") in ALGORITHMS and jwk.get("kid"):
                    try:
                        keys[str(jwk["kid"])] = jwt.PyJWK(jwk)
                    except jwt.PyJWTError:
                        log.warning("ignoring an unusable key in the JWKS")
            if set(keys) != set(self._keys):
                self._verified = {t: v for t, v in self._verified.items() if v[2] in keys}
            self._keys, self._fetched_at = keys, time.monotonic()

    async def _key(self, kid: str) -> jwt.PyJWK:
        if time.monotonic() - self._fetched_at > self._cache_ttl:
            try:
                await self._refresh(None)
            except AuthUnavailable:
                if not self._keys:
                    raise
                log.warning("JWKS refresh failed; verifying with the cached keys")
        if kid not in self._keys:
            await self._refresh(kid)
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("signed by an unknown key")
        return key

    async def verify(self, token: str) -> Principal:
        """The principal ``token`` speaks for; :class:`InvalidToken` or :class:`AuthUnavailable`."""
        known = self._verified.get(token)
        if known is not None:
            principal, issued_at, kid = known
            if time.time() > principal.expires_at + self._leeway:
                del self._verified[token]
                raise InvalidToken("token expired")
            try:
                await self._key(kid)  # the JWKS refreshed as usual; its key may have left it
            except InvalidToken:
                self._verified.pop(token, None)
                raise
            self._check_revocation(principal.subject, issued_at)
            return principal
        principal, issued_at, kid = await self._verify(token)
        self._check_revocation(principal.subject, issued_at)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[token] = (principal, issued_at, kid)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, int, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or alg not in ALGORITHMS:
            raise InvalidToken("token names no key or an algorithm we do not accept")
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "jti", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token expired") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"token rejected ({type(exc).__name__})") from exc
        role = claims.get("role")
        if role not in ROLES:
            raise InvalidToken("token carries no known role")
        issued_at = claims["iat"]
        if not isinstance(issued_at, int | float) or isinstance(issued_at, bool):
            raise InvalidToken("token has no usable iat")
        principal = Principal(str(claims["sub"]), str(role), str(claims["jti"]), int(claims["exp"]))
        return principal, int(issued_at), kid

    def _check_revocation(self, subject: str, issued_at: int) -> None:
        if self.revocations is None:
            return
        if not self.revocations.ready:
            # Which tokens were revoked meanwhile is not known: refuse for now (503), never
            # accept one that may be void.
            raise AuthUnavailable("token revocations not loaded")
        if self.revocations.revoked(subject, issued_at):
            raise InvalidToken("token revoked")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 2.1), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def _challenge(error: str | None = None, description: str | None = None) -> str:
    # RFC 6750 3: no error code when the request carried no credentials at all.
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    return "Bearer " + ", ".join(parts)


class AuthMiddleware:
    """ASGI middleware enforcing :data:`POLICY` with tokens from ``verifier``.

    Pure ASGI (not Starlette's BaseHTTPMiddleware) so streamed responses (WADO-RS multipart,
    STOW-RS uploads) pass through untouched. The verified :class:`Principal` is put in
    ``request.state.principal`` for routes that want to know who asks.
    """

    def __init__(self, app: ASGIApp, *, verifier: TokenVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        permission = required_permission(scope["method"], scope["path"])
        if permission is None:
            await self.app(scope, receive, send)
            return
        token = bearer_token(Headers(scope=scope).get("authorization"))
        if token is None:
            AUTH_REQUESTS.labels("missing").inc()
            response = problem(
                401,
                "Unauthorized",
                "this API needs a bearer token (POST /api/auth/token on the auth service)",
                headers={"WWW-Authenticate": _challenge()},
            )
            await response(scope, receive, send)
            return
        try:
            principal = await self.verifier.verify(token)
        except InvalidToken as exc:
            AUTH_REQUESTS.labels("invalid").inc()
            response = problem(
                401,
                "Unauthorized",
                str(exc),
                headers={"WWW-Authenticate": _challenge("invalid_token", str(exc))},
            )
            await response(scope, receive, send)
            return
        except AuthUnavailable as exc:
            AUTH_REQUESTS.labels("unavailable").inc()
            response = problem(
                503, "Authentication unavailable", f"tokens cannot be checked now ({exc})"
            )
            await response(scope, receive, send)
            return
        if not role_allows(principal.role, permission):
            AUTH_REQUESTS.labels("forbidden").inc()
            response = problem(
                403,
                "Forbidden",
                f"role {principal.role!r} lacks the {permission.value!r} permission",
            )
            await response(scope, receive, send)
            return
        AUTH_REQUESTS.labels("ok").inc()
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
