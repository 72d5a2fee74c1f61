"""The OAuth2 token endpoint's decisions (RFC 6749): which grant, whose credentials, which token.

Plain functions of the parsed request and the stores; ``api.py`` adapts HTTP to them.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus

import jwt

from edge.auth.hooks import AuditSink, _audit_login
from edge.auth.keys import ALGORITHM, KeyRing, SigningKey
from edge.auth.passwords import Hashing
from edge.auth.users import LockoutPolicy, User, UserStore

# One answer for an unknown user, a wrong password and a locked account: the endpoint must not
# tell an attacker which names exist or when a lock ends.
BAD_CREDENTIALS = "invalid user name or password, or the account is locked for a while"


class TokenError(Exception):
    """An error response of RFC 6749 5.2."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class TokenConfig:
    issuer: str
    audience: str
    lifetime: int
    lockout: LockoutPolicy


@dataclass(frozen=True)
class Issued:
    access_token: str
    expires_in: int
    subject: str
    role: str

    def to_json(self) -> dict[str, object]:
        # RFC 6749 5.1
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }


def issue_token(
    key: SigningKey,
    *,
    subject: str,
    role: str,
    config: TokenConfig,
    now: float | None = None,
    not_before: int = 0,
) -> Issued:
    """A signed access token (RFC 9068 shape) for ``subject`` in ``role``.

    ``not_before``: the user's "tokens not before" second (a revocation, rounded up). A token
    issued in that second, after the revocation, says ``iat`` = ``not_before`` (under a second
    ahead, within every verifier's leeway), so that it is not taken for one issued before."""
    issued_at = max(int(now if now is not None else time.time()), not_before)
    claims = {
        "iss": config.issuer,
        "aud": config.audience,
        "sub": subject,
        "role": role,
        "iat": issued_at,
        "exp": issued_at + config.lifetime,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
    return Issued(token, config.lifetime, subject, role)


def single(form: Mapping[str, Sequence[str]], name: str) -> str | None:
    """A form parameter: absent or empty is None (RFC 6749 3.2), repeated is an error."""
    values = [v for v in form.get(name, ()) if v != ""]
    if len(values) > 1:
        raise TokenError("invalid_request", f"parameter {name} given more than once")
    return values[0] if values else None


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """Client id and secret of an ``Authorization: Basic`` header (RFC 6749 2.3.1: each is
    form-urlencoded before the base64)."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise TokenError("invalid_client", "malformed Basic credentials", 401) from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise TokenError("invalid_client", "malformed Basic credentials", 401)
    return unquote_plus(client_id), unquote_plus(secret)


async def authenticate(
    users: UserStore, hashing: Hashing, username: str, password: str, policy: LockoutPolicy
) -> tuple[User | None, str]:
    """``(user, "")`` when ``password`` is theirs and they are not locked; else ``(None,
    reason)``, the failure counted (a lockout starts after ``policy.threshold`` in a row)."""
    async with hashing.slot():
        user = await users.get(username)
        if user is not None and user.locked:
            # No verification while locked: a locked account is no password oracle.
            return None, "locked"
        matches = await hashing.verify(user.password_hash if user else None, password)
        if user is None:
            return None, "unknown user"
        if not matches:
            locked_until = await users.record_failure(username, policy)
            return None, "wrong password" + ("; now locked" if locked_until else "")
        new_hash = None
        if hashing.needs_rehash(user.password_hash):
            new_hash = await hashing.hash_in_slot(password)
        await users.record_success(username, new_hash)
        return user, ""


async def grant(
    form: Mapping[str, Sequence[str]],
    authorization: str | None,
    *,
    users: UserStore,
    hashing: Hashing,
    keys: KeyRing,
    config: TokenConfig,
    address: str | None,
    audit: AuditSink | None = None,
) -> Issued:
    """Answer a token request: the issued token, or :class:`TokenError`."""
    grant_type = single(form, "grant_type")
    if grant_type is None:
        raise TokenError("invalid_request", "grant_type is required")
    if grant_type == "password":
        username, password = single(form, "username"), single(form, "password")
        if username is None or password is None:
            raise TokenError("invalid_request", "the password grant needs username and password")
        user, reason = await authenticate(users, hashing, username, password, config.lockout)
        _audit_login(audit, username, address, success=user is not None, reason=reason)
        if user is None:
            raise TokenError("invalid_grant", BAD_CREDENTIALS)
    elif grant_type == "client_credentials":
        basic = basic_credentials(authorization)
        body_id, body_secret = single(form, "client_id"), single(form, "client_secret")
        if basic is not None and (body_id is not None or body_secret is not None):
            raise TokenError("invalid_request", "client credentials given twice (header and body)")
        client_id, secret = basic if basic is not None else (body_id, body_secret)
        if client_id is None or secret is None:
            raise TokenError("invalid_client", "client authentication is required", 401)
        user, reason = await authenticate(users, hashing, client_id, secret, config.lockout)
        if user is not None and user.role != "service":
            _audit_login(audit, client_id, address, success=False, reason="not a service user")
            raise TokenError(
                "unauthorized_client", "the client_credentials grant is for service users only"
            )
        _audit_login(audit, client_id, address, success=user is not None, reason=reason)
        if user is None:
            raise TokenError("invalid_client", BAD_CREDENTIALS, 401)
    else:
        raise TokenError("unsupported_grant_type", "supported: password, client_credentials")
    key = await keys.signer()
    return issue_token(
        key,
        subject=user.username,
        role=user.role,
        config=config,
        not_before=user.tokens_not_before,
    )
