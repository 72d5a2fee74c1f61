"""Users in Postgres: one role each, an argon2id hash, and lockout state that survives restarts.

Every change that must end a user's sessions (locked by an admin or by a lockout, removed, a new
password or role, an explicit revocation) also sets the user's "tokens not before" time
(``auth_token_revocation``, migration 0011) in the same transaction, and once committed tells
``on_revoked`` (auth and the CLI announce it as ``auth.tokens_revoked``): one place, so no write
path can forget it."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import psycopg
from psycopg.rows import dict_row

from edge.common.authn import ROLES
from edge.common.events import TokensRevoked

log = logging.getLogger(__name__)

USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def check_username(username: str) -> None:
    if not USERNAME_RE.fullmatch(username):
        raise ValueError("a user name is 1-64 characters: letters, digits and . _ @ - (not first)")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose from {', '.join(ROLES)}")


@dataclass(frozen=True)
class User:
    username: str
    role: str
    password_hash: str
    disabled: bool = False
    failed_attempts: int = 0
    lockouts: int = 0
    locked_until: datetime | None = None
    last_login_at: datetime | None = None
    # True while a lockout after repeated failures runs (by the database's clock, the one that
    # set it) or an admin locked the user.
    locked: bool = False
    # Epoch seconds: tokens of this user issued earlier are revoked (0: never revoked).
    tokens_not_before: int = 0


@dataclass(frozen=True)
class LockoutPolicy:
    """``threshold`` failures in a row lock the user for ``base`` seconds; each further lock in
    a row lasts twice as long as the one before, up to ``cap``. A success resets both counts."""

    threshold: int = 5
    base: float = 60.0
    cap: float = 3600.0

    def duration(self, previous_lockouts: int) -> float:
        return float(min(self.base * 2 ** min(previous_lockouts, 30), self.cap))


class UserStore(Protocol):
    async def get(self, username: str) -> User | None: ...

    async def record_failure(self, username: str, policy: LockoutPolicy) -> datetime | None: ...

    async def record_success(self, username: str, new_hash: str | None = None) -> None: ...


_COLUMNS = (
    "username, role, password_hash, disabled, failed_attempts, lockouts, locked_until, "
    "last_login_at, (disabled OR coalesce(locked_until > now(), false)) AS locked, "
    "coalesce(ceil(extract(epoch FROM r.not_before)), 0)::bigint AS tokens_not_before"
)
_USERS = "auth_user LEFT JOIN auth_token_revocation r USING (username)"

# The second from which tokens are valid again, rounded up: a token's iat is whole seconds
# (RFC 7519 NumericDate as issued here), and one issued in the second of the change but before
# it must be refused; tokens issued after it carry at least this iat (tokens.issue_token).
# A change within the same second as the one before moves that second on by one: a token issued
# between the two says iat = the earlier second, and must be refused too (it would not be if
# both rounded up to the same second). Tokens then issued say a second or two ahead, within
# every verifier's leeway.
_REVOKE = """
    INSERT INTO auth_token_revocation (username, not_before, reason) VALUES (%s, now(), %s)
    ON CONFLICT (username) DO UPDATE
        SET not_before = greatest(
                excluded.not_before,
                date_trunc('second', auth_token_revocation.not_before)
                    + interval '1 second' + interval '1 microsecond'),
            reason = excluded.reason
    RETURNING ceil(extract(epoch FROM not_before))::bigint AS not_before
"""

Reason = Literal["locked", "lockout", "removed", "password", "role", "revoked"]
OnRevoked = Callable[[TokensRevoked], None]


class PsycopgUserStore:
    """The ``auth_user`` table; one short connection per call (logins and admin commands).
    ``on_revoked`` hears of every revocation once it is committed."""

    def __init__(self, database_url: str, *, on_revoked: OnRevoked | None = None) -> None:
        self._url = database_url
        self.on_revoked = on_revoked

    async def _revoke(
        self, conn: psycopg.AsyncConnection[dict[str, Any]], username: str, reason: Reason
    ) -> TokensRevoked:
        cur = await conn.execute(_REVOKE, (username, reason))
        row = await cur.fetchone()
        assert row is not None
        return TokensRevoked(login=username, not_before=int(row["not_before"]), reason=reason)

    def _announce(self, revoked: TokensRevoked | None) -> None:
        if revoked is None:
            return
        log.info("tokens of %s revoked (%s)", revoked.login, revoked.reason)
        if self.on_revoked is not None:
            self.on_revoked(revoked)

    async def _connect(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        return await psycopg.AsyncConnection.connect(
            self._url, connect_timeout=5, row_factory=dict_row
        )

    async def get(self, username: str) -> User | None:
        async with await self._connect() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM {_USERS} WHERE username = %s", (username,)
            )
            row = await cur.fetchone()
        return User(**row) if row else None

    async def list(self) -> list[User]:
        async with await self._connect() as conn:
            cur = await conn.execute(f"SELECT {_COLUMNS} FROM {_USERS} ORDER BY username")
            return [User(**row) for row in await cur.fetchall()]

    async def add(self, username: str, role: str, password_hash: str) -> bool:
        """Create the user; False when the name is taken."""
        check_username(username)
        check_role(role)
        async with await self._connect() as conn:
            cur = await conn.execute(
                "INSERT INTO auth_user (username, role, password_hash) VALUES (%s, %s, %s) "
                "ON CONFLICT (username) DO NOTHING",
                (username, role, password_hash),
            )
            return cur.rowcount == 1

    async def _change(
        self, sql: str, params: tuple[Any, ...], username: str, reason: Reason | None
    ) -> bool:
        """Run ``sql`` on the user; when it found them and ``reason`` is given, revoke their
        tokens in the same transaction. False when there is no such user."""
        revoked = None
        async with await self._connect() as conn:
            cur = await conn.execute(sql, params)
            if cur.rowcount != 1:
                return False
            if reason is not None:
                revoked = await self._revoke(conn, username, reason)
        self._announce(revoked)
        return True

    async def set_password(self, username: str, password_hash: str) -> bool:
        """A new password; tokens issued before it are revoked."""
        return await self._change(
            "UPDATE auth_user SET password_hash = %s, password_changed_at = now(), "
            "updated_at = now() WHERE username = %s",
            (password_hash, username),
            username,
            "password",
        )

    async def set_role(self, username: str, role: str) -> bool:
        """A new role; tokens issued before it (naming the old role) are revoked."""
        check_role(role)
        return await self._change(
            "UPDATE auth_user SET role = %s, updated_at = now() WHERE username = %s",
            (role, username),
            username,
            "role",
        )

    async def set_locked(self, username: str, locked: bool) -> bool:
        """An admin's lock (until unlocked), which revokes the user's tokens; unlocking also
        clears the failure counts."""
        return await self._change(
            "UPDATE auth_user SET disabled = %s, failed_attempts = 0, lockouts = 0, "
            "locked_until = NULL, updated_at = now() WHERE username = %s",
            (locked, username),
            username,
            "locked" if locked else None,
        )

    async def remove(self, username: str) -> bool:
        """Remove the user; the tokens issued to the name stay revoked."""
        return await self._change(
            "DELETE FROM auth_user WHERE username = %s", (username,), username, "removed"
        )

    async def revoke(self, username: str) -> bool:
        """Revoke the user's tokens issued until now (they sign in again for new ones)."""
        return await self._change(
            "UPDATE auth_user SET updated_at = now() WHERE username = %s",
            (username,),
            username,
            "revoked",
        )

    async def revocations(self, window: float) -> dict[str, int]:
        """The users whose tokens were revoked in the last ``window`` seconds (older revocations
        concern expired tokens only): user -> tokens not before, epoch seconds."""
        async with await self._connect() as conn:
            cur = await conn.execute(
                "SELECT username, ceil(extract(epoch FROM not_before))::bigint AS not_before "
                "FROM auth_token_revocation "
                "WHERE not_before > now() - make_interval(secs => %s)",
                (window,),
            )
            return {row["username"]: int(row["not_before"]) for row in await cur.fetchall()}

    async def count_role(self, role: str) -> int:
        async with await self._connect() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM auth_user WHERE role = %s", (role,))
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def record_failure(self, username: str, policy: LockoutPolicy) -> datetime | None:
        """Count a failed login in one statement (concurrent failures all count); returns the
        end of the lockout this failure started, if it started one."""
        revoked = None
        async with await self._connect() as conn:
            cur = await conn.execute(
                """
                UPDATE auth_user SET
                    failed_attempts = CASE WHEN failed_attempts + 1 >= %(threshold)s
                                           THEN 0 ELSE failed_attempts + 1 END,
                    lockouts = CASE WHEN failed_attempts + 1 >= %(threshold)s
                                    THEN lockouts + 1 ELSE lockouts END,
                    locked_until = CASE WHEN failed_attempts + 1 >= %(threshold)s
                        THEN now() + make_interval(secs => least(
                            %(base)s * power(2, least(lockouts, 30)), %(cap)s))
                        ELSE locked_until END,
                    updated_at = now()
                WHERE username = %(username)s
                RETURNING (failed_attempts = 0) AS locked, locked_until
                """,
                {
                    "threshold": policy.threshold,
                    "base": policy.base,
                    "cap": policy.cap,
                    "username": username,
                },
            )
            row = await cur.fetchone()
            locked_until = row["locked_until"] if row and row["locked"] else None
            if locked_until is not None:
                revoked = await self._revoke(conn, username, "lockout")
        self._announce(revoked)
        return locked_until

    async def record_success(self, username: str, new_hash: str | None = None) -> None:
        async with await self._connect() as conn:
            await conn.execute(
                "UPDATE auth_user SET failed_attempts = 0, lockouts = 0, locked_until = NULL, "
                "last_login_at = now(), password_hash = coalesce(%s, password_hash), "
                "updated_at = now() WHERE username = %s",
                (new_hash, username),
            )

    async def ping(self) -> None:
        async with await self._connect() as conn:
            await conn.execute("SELECT 1")
