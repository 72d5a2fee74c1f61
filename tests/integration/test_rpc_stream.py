"""Streamed RPC against the real RabbitMQ: numbered replies and a final marker, errors mid-stream,
cancel from the caller reaching the handler, a per-reply timeout, and call() beside it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest

from edge.common.rpc import RpcClient, RpcError, RpcServer, RpcTimeout


async def count(payload: dict, cancelled: asyncio.Event) -> AsyncIterator[dict]:
    for n in range(payload["n"]):
        if cancelled.is_set():
            yield {"cancelled_at": n}
            return
        if payload.get("fail_at") == n:
            raise ValueError("destination refused")
        yield {"n": n}
        await asyncio.sleep(payload.get("pause", 0))


async def echo(payload: dict) -> dict:
    return {"echo": payload["value"]}


@pytest.fixture
async def client(amqp_url: str) -> AsyncIterator[RpcClient]:
    connection = await aio_pika.connect_robust(amqp_url)
    server = RpcServer(connection, {"test.echo": echo}, streams={"test.count": count})
    await server.start()
    rpc = await RpcClient(connection, timeout=2.0).start()
    try:
        yield rpc
    finally:
        await rpc.stop()
        await server.stop()
        await connection.close()


async def test_stream_replies_arrive_in_order_and_end_at_the_final_marker(
    client: RpcClient,
) -> None:
    async def run(n: int) -> list[int]:
        async with client.stream("test.count", {"n": n}) as replies:
            return [reply["n"] async for reply in replies]

    results = await asyncio.gather(*(run(n) for n in (0, 1, 50, 200)))
    assert results == [[], [0], list(range(50)), list(range(200))]
    assert (await client.call("test.echo", {"value": 7})) == {"echo": 7}


async def test_error_mid_stream_is_raised_after_the_replies_before_it(client: RpcClient) -> None:
    seen = []
    with pytest.raises(RpcError, match="destination refused"):
        async with client.stream("test.count", {"n": 10, "fail_at": 3}) as replies:
            async for reply in replies:
                seen.append(reply["n"])
    assert seen == [0, 1, 2]


async def test_cancel_reaches_the_handler_which_ends_the_stream(client: RpcClient) -> None:
    async with client.stream("test.count", {"n": 1000, "pause": 0.02}) as replies:
        seen = []
        async for reply in replies:
            seen.append(reply)
            if len(seen) == 3:
                await replies.cancel()
    assert "cancelled_at" in seen[-1]
    assert seen[-1]["cancelled_at"] < 100


async def test_leaving_the_stream_early_cancels_it_on_the_server(client: RpcClient) -> None:
    async with client.stream("test.count", {"n": 1000, "pause": 0.01}) as replies:
        async for _ in replies:
            break
    # The server stopped: a new stream is served at once (no busy slot, no stray replies).
    async with client.stream("test.count", {"n": 2}) as replies:
        assert [r["n"] async for r in replies] == [0, 1]


async def test_no_reply_within_the_timeout_is_rpc_timeout(client: RpcClient) -> None:
    with pytest.raises(RpcTimeout):
        async with client.stream("test.nobody", {}, timeout=0.3) as replies:
            async for _ in replies:
                pass
