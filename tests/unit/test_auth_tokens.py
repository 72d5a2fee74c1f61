"""The token endpoint's decisions (RFC 6749) with an in-memory user store: grants, errors,
lockout, and what reaches the audit trail."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from starlette.applications import Starlette

from edge.auth import api
from edge.auth.keys import SigningKey
from edge.auth.passwords import Hashing, check_password_policy
from edge.auth.tokens import BAD_CREDENTIALS, Issued, TokenConfig, TokenError, grant
from edge.auth.users import LockoutPolicy, User
from tests.unit.test_authn import make_key

# Cheap parameters: the unit tests check decisions, not argon2's cost.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
POLICY = LockoutPolicy(threshold=3, base=60, cap=200)
CONFIG = TokenConfig("dicom-edge", "dicom-edge", 300, POLICY)


class MemoryUsers:
    """The UserStore protocol in memory, with the lockout arithmetic of the SQL version."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def add(self, name: str, role: str, password: str) -> None:
        self.users[name] = User(name, role, FAST.hash(password))

    async def get(self, username: str) -> User | None:
        user = self.users.get(username)
        if user is None:
            return None
        locked = user.disabled or bool(user.locked_until and user.locked_until > self.now)
        return replace(user, locked=locked)

    async def record_failure(self, username: str, policy: LockoutPolicy) -> datetime | None:
        user = self.users[username]
        if user.failed_attempts + 1 >= policy.threshold:
            until = self.now + timedelta(seconds=policy.duration(user.lockouts))
            self.users[username] = replace(
                user, failed_attempts=0, lockouts=user.lockouts + 1, locked_until=until
            )
            return until
        self.users[username] = replace(user, failed_attempts=user.failed_attempts + 1)
        return None

    async def record_success(self, username: str, new_hash: str | None = None) -> None:
        user = self.users[username]
        self.users[username] = replace(
            user,
            failed_attempts=0,
            lockouts=0,
            locked_until=None,
            password_hash=new_hash or user.password_hash,
        )


class FixedKeys:
    def __init__(self) -> None:
        self.key, self.jwk = make_key()

    async def signer(self) -> SigningKey:
        return self.key


class Recorder:
    def __init__(self) -> None:
        self.logins: list[tuple[str, bool, str]] = []

    def login(
        self, login: str, *, address: str | None = None, success: bool, reason: str = ""
    ) -> None:
        self.logins.append((login, success, reason))

    def user_changed(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover
        raise AssertionError("no admin change expected")


@pytest.fixture
def users() -> MemoryUsers:
    store = MemoryUsers()
    store.add("alice", "radiologist", "alice-password-1")
    store.add("router", "service", "router-secret-12")
    return store


@pytest.fixture
def keys() -> FixedKeys:
    return FixedKeys()


@pytest.fixture
def audit() -> Recorder:
    return Recorder()


def form(**fields: str) -> dict[str, list[str]]:
    return {k: [v] for k, v in fields.items()}


async def ask(
    users: MemoryUsers,
    keys: FixedKeys,
    fields: dict[str, list[str]],
    authorization: str | None = None,
    audit: Recorder | None = None,
) -> Issued:
    return await grant(
        fields,
        authorization,
        users=users,
        hashing=Hashing(1, FAST),
        keys=keys,  # type: ignore[arg-type]
        config=CONFIG,
        address="10.0.0.7",
        audit=audit,
    )


async def test_password_grant_issues_a_token_with_the_users_role(
    users: MemoryUsers, keys: FixedKeys, audit: Recorder
) -> None:
    fields = form(grant_type="password", username="alice", password="alice-password-1")
    issued = await ask(users, keys, fields, audit=audit)
    claims = jwt.decode(
        issued.access_token,
        keys.key.private_key.public_key(),
        algorithms=["ES256"],
        audience="dicom-edge",
        issuer="dicom-edge",
    )
    assert (claims["sub"], claims["role"], issued.expires_in) == ("alice", "radiologist", 300)
    assert jwt.get_unverified_header(issued.access_token)["kid"] == keys.key.kid
    assert issued.to_json()["token_type"] == "Bearer"
    assert audit.logins == [("alice", True, "")]


async def test_wrong_password_and_unknown_user_get_the_same_invalid_grant(
    users: MemoryUsers, keys: FixedKeys, audit: Recorder
) -> None:
    for name in ("alice", "mallory"):
        with pytest.raises(TokenError) as caught:
            await ask(
                users,
                keys,
                form(grant_type="password", username=name, password="nope-nope-nope"),
                audit=audit,
            )
        assert (caught.value.error, caught.value.status) == ("invalid_grant", 400)
        assert caught.value.description == BAD_CREDENTIALS
    assert audit.logins == [("alice", False, "wrong password"), ("mallory", False, "unknown user")]


async def test_repeated_failures_lock_with_doubling_durations_and_success_resets(
    users: MemoryUsers, keys: FixedKeys, audit: Recorder
) -> None:
    wrong = form(grant_type="password", username="alice", password="wrong-password")
    right = form(grant_type="password", username="alice", password="alice-password-1")
    for _ in range(3):
        with pytest.raises(TokenError):
            await ask(users, keys, wrong)
    assert users.users["alice"].locked_until == users.now + timedelta(seconds=60)
    # Locked: even the right password is refused, and it is not verified (no oracle).
    with pytest.raises(TokenError):
        await ask(users, keys, right, audit=audit)
    assert audit.logins[-1] == ("alice", False, "locked")
    users.now += timedelta(seconds=61)
    for _ in range(3):
        with pytest.raises(TokenError):
            await ask(users, keys, wrong)
    assert users.users["alice"].locked_until == users.now + timedelta(seconds=120)
    users.now += timedelta(seconds=121)
    for _ in range(3):
        with pytest.raises(TokenError):
            await ask(users, keys, wrong)
    assert users.users["alice"].locked_until == users.now + timedelta(seconds=200)  # the cap
    users.now += timedelta(seconds=201)
    await ask(users, keys, right)
    assert (users.users["alice"].failed_attempts, users.users["alice"].lockouts) == (0, 0)


async def test_client_credentials_by_basic_header_or_body_for_service_users_only(
    users: MemoryUsers, keys: FixedKeys
) -> None:
    basic = "Basic " + base64.b64encode(b"router:router-secret-12").decode()
    issued = await ask(users, keys, form(grant_type="client_credentials"), basic)
    assert issued.role == "service"
    fields = form(
        grant_type="client_credentials", client_id="router", client_secret="router-secret-12"
    )
    assert (await ask(users, keys, fields)).subject == "router"
    human = form(
        grant_type="client_credentials", client_id="alice", client_secret="alice-password-1"
    )
    with pytest.raises(TokenError) as caught:
        await ask(users, keys, human)
    assert caught.value.error == "unauthorized_client"
    with pytest.raises(TokenError) as caught:
        await ask(
            users,
            keys,
            form(grant_type="client_credentials", client_id="router", client_secret="x" * 12),
        )
    assert (caught.value.error, caught.value.status) == ("invalid_client", 401)
    with pytest.raises(TokenError) as caught:
        await ask(users, keys, fields, basic)
    assert caught.value.error == "invalid_request"


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({}, "invalid_request"),
        (form(grant_type="authorization_code", code="x"), "unsupported_grant_type"),
        (form(grant_type="password", username="alice"), "invalid_request"),
        (
            {"grant_type": ["password"], "username": ["alice", "bob"], "password": ["p"]},
            "invalid_request",
        ),
        (form(grant_type="password", username="alice", password=""), "invalid_request"),
        (form(grant_type="client_credentials"), "invalid_client"),
    ],
)
async def test_malformed_requests_get_rfc_6749_errors(
    users: MemoryUsers, keys: FixedKeys, fields: dict[str, list[str]], error: str
) -> None:
    with pytest.raises(TokenError) as caught:
        await ask(users, keys, fields)
    assert caught.value.error == error


def test_password_policy_is_length() -> None:
    check_password_policy("x" * 12)
    with pytest.raises(ValueError, match="at least"):
        check_password_policy("short")


async def test_token_route_speaks_form_in_json_out_with_no_store(
    users: MemoryUsers, keys: FixedKeys
) -> None:
    async def the_grant(
        fields: dict[str, list[str]], authorization: str | None, address: str | None
    ) -> Issued:
        return await ask(users, keys, fields, authorization)

    async def jwks() -> dict[str, Any]:
        return {"keys": [keys.jwk]}

    app = Starlette(routes=api.routes(the_grant, jwks))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://a"
    ) as http:
        ok = await http.post(
            "/api/auth/token",
            data={"grant_type": "password", "username": "alice", "password": "alice-password-1"},
        )
        assert ok.status_code == 200
        assert ok.headers["cache-control"] == "no-store"
        assert set(ok.json()) == {"access_token", "token_type", "expires_in"}
        bad = await http.post(
            "/api/auth/token",
            data={"grant_type": "password", "username": "alice", "password": "wrong-one"},
        )
        assert (bad.status_code, bad.json()["error"]) == (400, "invalid_grant")
        as_json = await http.post("/api/auth/token", json={"grant_type": "password"})
        assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")
        client = await http.post("/api/auth/token", data={"grant_type": "client_credentials"})
        assert client.status_code == 401
        assert client.headers["www-authenticate"].startswith("Basic")
        published = await http.get("/api/auth/jwks")
        assert published.json()["keys"][0]["kid"] == keys.key.kid
        assert "d" not in published.json()["keys"][0]  # no private part
