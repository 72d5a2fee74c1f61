"""Users in Postgres: one role each, an argon2id hash, and lockout state that survives restarts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row

from edge.common.authn import ROLES

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
    "last_login_at, (disabled OR coalesce(locked_until > now(), false)) AS locked"
)


class PsycopgUserStore:
    """The ``auth_user`` table; one short connection per call (logins and admin commands)."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url

    async def _connect(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        return await psycopg.AsyncConnection.connect(
            self._url, connect_timeout=5, row_factory=dict_row
        )

    async def get(self, username: str) -> User | None:
        async with await self._connect() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM auth_user WHERE username = %s", (username,)
            )
            row = await cur.fetchone()
        return User(**row) if row else None

    async def list(self) -> list[User]:
        async with await self._connect() as conn:
            cur = await conn.execute(f"SELECT {_COLUMNS} FROM auth_user ORDER BY username")
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

    async def set_password(self, username: str, password_hash: str) -> bool:
        async with await self._connect() as conn:
            cur = await conn.execute(
                "UPDATE auth_user SET password_hash = %s, password_changed_at = now(), "
                "updated_at = now() WHERE username = %s",
                (password_hash, username),
            )
            return cur.rowcount == 1

    async def set_role(self, username: str, role: str) -> bool:
        check_role(role)
        async with await self._connect() as conn:
            cur = await conn.execute(
                "UPDATE auth_user SET role = %s, updated_at = now() WHERE username = %s",
                (role, username),
            )
            return cur.rowcount == 1

    async def set_locked(self, username: str, locked: bool) -> bool:
        """An admin's lock (until unlocked); unlocking also clears the failure counts."""
        async with await self._connect() as conn:
            cur = await conn.execute(
                "UPDATE auth_user SET disabled = %s, failed_attempts = 0, lockouts = 0, "
                "locked_until = NULL, updated_at = now() WHERE username = %s",
                (locked, username),
            )
            return cur.rowcount == 1

    async def remove(self, username: str) -> bool:
        async with await self._connect() as conn:
            cur = await conn.execute("DELETE FROM auth_user WHERE username = %s", (username,))
            return cur.rowcount == 1

    async def count_role(self, role: str) -> int:
        async with await self._connect() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM auth_user WHERE role = %s", (role,))
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def record_failure(self, username: str, policy: LockoutPolicy) -> datetime | None:
        """Count a failed login in one statement (concurrent failures all count); returns the
        end of the lockout this failure started, if it started one."""
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
        return row["locked_until"] if row and row["locked"] else None

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
