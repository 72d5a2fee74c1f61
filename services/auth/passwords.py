"""Password hashing with argon2id (RFC 9106), and what a password must be."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024

# argon2-cffi's defaults are RFC 9106's second recommended option (argon2id, t=3, 64 MiB, p=4).
HASHER = PasswordHasher()


def check_password_policy(password: str) -> None:
    """Raise ValueError when ``password`` may not be set (NIST SP 800-63B 5.1.1: length, not
    composition rules)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"a password may have at most {MAX_PASSWORD_LENGTH} characters")


def hash_password(password: str, hasher: PasswordHasher = HASHER) -> str:
    return hasher.hash(password)


@functools.cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    # Verified when the user does not exist, so that an unknown name costs as long as a wrong
    # password (no user enumeration by timing). Made on first use, not at import.
    return hasher.hash("no user has this password: timing only")


def verify_password(
    password_hash: str | None, password: str, hasher: PasswordHasher = HASHER
) -> bool:
    """True when ``password`` matches ``password_hash``; None (no such user) never matches."""
    try:
        matches = hasher.verify(password_hash or _dummy_hash(hasher), password)
    except (VerificationError, InvalidHashError):
        return False
    return matches and password_hash is not None


class Hashing:
    """Runs argon2 off the event loop, a few at a time: each hash takes 64 MiB and a core for a
    while, so a burst of logins queues here instead of exhausting memory. A login holds its slot
    from reading the user's lockout state to recording the outcome, so parallel guesses cannot
    all pass the check before the first failure is counted."""

    def __init__(self, concurrency: int = 2, hasher: PasswordHasher = HASHER) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._hasher = hasher

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            yield

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Call inside :meth:`slot`."""
        return await asyncio.to_thread(verify_password, password_hash, password, self._hasher)

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with weaker parameters than today's."""
        return self._hasher.check_needs_rehash(password_hash)

    async def hash_in_slot(self, password: str) -> str:
        """Call inside :meth:`slot`."""
        return await asyncio.to_thread(hash_password, password, self._hasher)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await self.hash_in_slot(password)
