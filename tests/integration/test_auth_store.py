"""Users, lockout and signing keys against the real Postgres (migration 0008)."""

from __future__ import annotations

import asyncio
import time

import jwt
import psycopg
import pytest

from edge.auth.keys import KeyRing, PsycopgKeyStore
from edge.auth.tokens import TokenConfig, issue_token
from edge.auth.users import LockoutPolicy, PsycopgUserStore
from edge.common.authn import TokenVerifier

HASH = "$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ"


async def test_users_are_added_once_and_bad_names_and_roles_refused(database_url: str) -> None:
    users = PsycopgUserStore(database_url)
    assert await users.add("alice", "radiologist", HASH)
    assert not await users.add("alice", "admin", HASH)
    user = await users.get("alice")
    assert user is not None and (user.role, user.locked) == ("radiologist", False)
    with pytest.raises(ValueError):
        await users.add("-bad", "admin", HASH)
    with pytest.raises(ValueError):
        await users.add("bob", "superuser", HASH)
    with pytest.raises(psycopg.errors.CheckViolation):
        await users.add("carol", "admin", "plain-text-password")
    assert [u.username for u in await users.list()] == ["alice"]


async def lock_remaining(database_url: str, username: str) -> float:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT extract(epoch FROM locked_until - now()) FROM auth_user WHERE username = %s",
            (username,),
        )
        row = await cur.fetchone()
    assert row is not None and row[0] is not None
    return float(row[0])


async def test_lockout_is_persisted_doubles_up_to_its_cap_and_is_reset_by_success(
    database_url: str,
) -> None:
    users = PsycopgUserStore(database_url)
    await users.add("dave", "him", HASH)
    policy = LockoutPolicy(threshold=3, base=60, cap=150)
    results = [await users.record_failure("dave", policy) for _ in range(3)]
    assert results[:2] == [None, None] and results[2] is not None
    # A new store (a restarted auth) sees the same lock.
    again = await PsycopgUserStore(database_url).get("dave")
    assert again is not None and again.locked and again.lockouts == 1
    assert 55 < await lock_remaining(database_url, "dave") <= 60
    for expected in (120, 150):  # doubled, then capped
        for _ in range(3):
            await users.record_failure("dave", policy)
        assert expected - 5 < await lock_remaining(database_url, "dave") <= expected
    await users.record_success("dave")
    user = await users.get("dave")
    assert user is not None and not user.locked and (user.failed_attempts, user.lockouts) == (0, 0)


async def test_concurrent_failures_all_count(database_url: str) -> None:
    users = PsycopgUserStore(database_url)
    await users.add("erin", "requester", HASH)
    policy = LockoutPolicy(threshold=100)
    await asyncio.gather(*(users.record_failure("erin", policy) for _ in range(20)))
    user = await users.get("erin")
    assert user is not None and user.failed_attempts == 20


async def test_admin_lock_holds_until_unlock(database_url: str) -> None:
    users = PsycopgUserStore(database_url)
    await users.add("frank", "service", HASH)
    assert await users.set_locked("frank", True)
    user = await users.get("frank")
    assert user is not None and user.locked and user.disabled
    assert await users.set_locked("frank", False)
    user = await users.get("frank")
    assert user is not None and not user.locked
    assert not await users.set_locked("nobody", True)


async def test_rotation_publishes_old_keys_until_their_tokens_expire_then_deletes_them(
    database_url: str,
) -> None:
    store = PsycopgKeyStore(database_url)
    first = await store.signer(rotation=3600, publish_for=3600)
    assert (await store.signer(rotation=3600, publish_for=3600)).kid == first.kid
    # Rotation due: a new key signs; the old one stays published while its tokens may live.
    second = await store.signer(rotation=0.0, publish_for=3600)
    assert second.kid != first.kid
    kids = [k["kid"] for k in (await store.jwks(3600))["keys"]]
    assert kids == [second.kid, first.kid]
    assert all("d" not in k for k in (await store.jwks(3600))["keys"])
    # Past the window the retired key leaves the JWKS, and the next rotation deletes it.
    assert [k["kid"] for k in (await store.jwks(0.0))["keys"]] == [second.kid]
    third = await store.signer(rotation=0.0, publish_for=0.0)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT kid FROM auth_signing_key ORDER BY created_at")
        remaining = [row[0] for row in await cur.fetchall()]
    assert first.kid not in remaining and third.kid in remaining


async def test_replicas_rotating_at_once_make_one_key(database_url: str) -> None:
    stores = [PsycopgKeyStore(database_url) for _ in range(4)]
    old = await stores[0].signer(rotation=3600, publish_for=3600)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("UPDATE auth_signing_key SET created_at = now() - interval '2 hours'")
    keys = await asyncio.gather(*(s.signer(rotation=3600, publish_for=3600) for s in stores))
    assert len({k.kid for k in keys}) == 1 and keys[0].kid != old.kid


async def test_a_token_signed_by_the_ring_verifies_against_its_jwks(database_url: str) -> None:
    ring = KeyRing(PsycopgKeyStore(database_url), rotation=3600, token_lifetime=600)
    config = TokenConfig("dicom-edge", "dicom-edge", 600, LockoutPolicy())
    issued = issue_token(await ring.signer(), subject="g", role="admin", config=config)
    verifier = TokenVerifier(ring.jwks, issuer="dicom-edge", audience="dicom-edge")
    principal = await verifier.verify(issued.access_token)
    assert principal.role == "admin"
    assert jwt.decode(issued.access_token, options={"verify_signature": False})["exp"] > time.time()
