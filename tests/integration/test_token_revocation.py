"""Token revocation against the real Postgres and RabbitMQ: every user change that must end a
user's sessions records its "not before" time (migration 0011) and tells ``on_revoked``; the
feed hears ``auth.tokens_revoked`` on an exclusive, auto-delete, server-named queue, loads the
map from auth (RPC ``auth.revocations``) at start and again after the broker drops it."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from edge.auth.revocations import revocations_reply
from edge.auth.users import LockoutPolicy, PsycopgUserStore
from edge.common.bus import AioPikaBus
from edge.common.events import TokensRevoked
from edge.common.revocation import RevocationFeed, Revocations
from edge.common.rpc import RpcServer

HASH = "$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ"


async def test_each_session_ending_change_revokes_in_its_transaction(database_url: str) -> None:
    heard: list[TokensRevoked] = []
    users = PsycopgUserStore(database_url, on_revoked=heard.append)
    for name in ("r-pass", "r-role", "r-lock", "r-out", "r-gone", "r-rev"):
        assert await users.add(name, "radiologist", HASH)
    before = int(time.time())
    assert await users.set_password("r-pass", HASH)
    assert await users.set_role("r-role", "him")
    assert await users.set_locked("r-lock", True)
    assert await users.set_locked("r-lock", False)  # unlocking revokes nothing
    for _ in range(2):
        await users.record_failure("r-out", LockoutPolicy(threshold=2))
    assert await users.remove("r-gone")
    assert await users.revoke("r-rev")
    assert not await users.revoke("nobody") and not await users.set_password("nobody", HASH)
    reasons = {(e.login, e.reason) for e in heard}
    assert reasons == {
        ("r-pass", "password"),
        ("r-role", "role"),
        ("r-lock", "locked"),
        ("r-out", "lockout"),
        ("r-gone", "removed"),
        ("r-rev", "revoked"),
    }
    assert all(before <= e.not_before <= int(time.time()) + 1 for e in heard)
    current = await users.revocations(600)
    assert current == {e.login: e.not_before for e in heard}
    # A removed name stays revoked; the user made again under it gets tokens from then on.
    assert await users.add("r-gone", "admin", HASH)
    again = await users.get("r-gone")
    assert again is not None and again.tokens_not_before == current["r-gone"]
    untouched = PsycopgUserStore(database_url)
    assert await untouched.add("r-new", "admin", HASH)
    fresh = await untouched.get("r-new")
    assert fresh is not None and fresh.tokens_not_before == 0
    # Older than the window: about expired tokens only, not in the map.
    assert await users.revocations(-1) == {}


@pytest.fixture
async def auth_rpc(amqp_url: str, database_url: str) -> AsyncIterator[PsycopgUserStore]:
    """``auth.revocations`` answered from the real user store, as the auth service does."""
    users = PsycopgUserStore(database_url)
    connection = await aio_pika.connect_robust(amqp_url)

    async def revocations(_: dict[str, Any]) -> dict[str, Any]:
        return await revocations_reply(users, 600)

    server = RpcServer(connection, {"auth.revocations": revocations})
    await server.start()
    try:
        yield users
    finally:
        await server.stop()
        await connection.close()


def feed_queues(amqp_url: str) -> list[list[str]]:
    vhost = amqp_url.rsplit("/", 1)[1]
    out = subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "list_queues",
            "-p",
            vhost,
            "name",
            "exclusive",
            "auto_delete",
            "durable",
            "arguments",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line.startswith("amq.gen-")]


async def wait_for(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_feed_hears_events_and_reloads_the_map_after_the_broker_drops_it(
    amqp_url: str, auth_rpc: PsycopgUserStore
) -> None:
    users = auth_rpc
    await users.add("f-early", "radiologist", HASH)
    await users.revoke("f-early")  # before the feed starts: only the load can tell it
    revocations = Revocations()
    feed = RevocationFeed(amqp_url, revocations, rpc_timeout=2, retry=0.2)
    bus = await AioPikaBus.connect(amqp_url, "/edge/test")
    try:
        with pytest.raises(ConnectionError):
            await feed.check()  # /readyz: not ready before the first load
        await feed.start()
        await asyncio.wait_for(feed.loaded.wait(), 15)
        await feed.check()
        early = (await users.get("f-early")).tokens_not_before  # type: ignore[union-attr]
        assert revocations.revoked("f-early", early - 1)
        queues = await asyncio.to_thread(feed_queues, amqp_url)
        assert len(queues) == 1
        assert queues[0][1:4] == ["true", "true", "false"]
        assert "x-queue-type" in queues[0][4]

        await bus.publish(TokensRevoked(login="f-event", not_before=5000, reason="password"))
        await wait_for(lambda: revocations.revoked("f-event", 4999))

        # The broker drops every connection of the vhost; what is revoked meanwhile reaches
        # the feed by the load that follows its reconnection.
        loads = feed.loads
        await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "close_all_connections", "-p", amqp_url.rsplit("/", 1)[1], "test"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        await wait_for(lambda: not revocations.ready, 10)
        await feed.check()  # still ready for /readyz: loaded once
        await users.add("f-missed", "radiologist", HASH)
        await users.revoke("f-missed")  # no event: this store announces nothing
        await wait_for(lambda: feed.loads > loads and revocations.ready, 30)
        missed = (await users.get("f-missed")).tokens_not_before  # type: ignore[union-attr]
        assert revocations.revoked("f-missed", missed - 1)
        assert revocations.revoked("f-event", 4999)  # what it knew stays known
        # A new server-named queue; the old one went with its connection.
        assert len(await asyncio.to_thread(feed_queues, amqp_url)) == 1
    finally:
        await feed.stop()
        await bus.close()
    assert not revocations.ready


async def test_a_token_issued_between_two_revocations_in_one_second_is_void(
    database_url: str,
) -> None:
    users = PsycopgUserStore(database_url)
    assert await users.add("r-twice", "radiologist", HASH)
    assert await users.revoke("r-twice")
    first = await users.get("r-twice")
    assert first is not None
    # A token issued now carries iat = the first revocation's second (tokens.issue_token).
    between = max(int(time.time()), first.tokens_not_before)
    assert await users.revoke("r-twice")  # well within the same second, in this test
    second = await users.get("r-twice")
    assert second is not None
    decision = Revocations()
    decision.note("r-twice", second.tokens_not_before)
    assert decision.revoked("r-twice", between)
    # One issued after the second revocation is not.
    after = max(int(time.time()), second.tokens_not_before)
    assert not decision.revoked("r-twice", after)
    assert after - time.time() < 3  # ahead of the clock by at most ~2 s: within the leeway
