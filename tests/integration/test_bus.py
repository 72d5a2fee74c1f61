"""The aio-pika bus and RPC against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import json

import aio_pika
import pytest

from edge.common.bus import (
    REASON_HEADER,
    AioPikaBus,
    BadMessage,
    BusError,
    ConsumerQueue,
    TransientError,
    declare_topology,
)
from edge.common.events import Event, InstanceReceived
from edge.common.rpc import RpcClient, RpcError, RpcServer, RpcTimeout

UID = "1.2.826.0.1.3680043.8.498.1"


def received(n: int = 1) -> InstanceReceived:
    return InstanceReceived(
        study_uid=UID,
        series_uid=f"{UID}.1",
        sop_instance_uid=f"{UID}.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=f"studies/{UID}/series/{UID}.1/instances/{UID}.1.{n}.dcm",
        size=10,
        sha256="0" * 64,
        calling_ae="MODALITY",
        called_ae="EDGE",
    )


async def _get_all(channel: aio_pika.abc.AbstractChannel, queue_name: str) -> list:
    queue = await channel.get_queue(queue_name, ensure=True)
    messages = []
    for _ in range(50):
        message = await queue.get(fail=False, no_ack=True)
        if message is None:
            if messages:
                break
            await asyncio.sleep(0.1)
            continue
        messages.append(message)
    return messages


async def test_published_event_is_persistent_with_cloudevents_headers(amqp_url: str) -> None:
    bus = await AioPikaBus.connect(amqp_url, "/edge/test")
    try:
        event = received()
        await bus.publish(event)
        channel = await bus.connection.channel()
        [message] = await _get_all(channel, "ingestion.instance-received")
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.headers["ce-type"] == "org.dicom-edge.instance.received.v1"
        assert message.headers["ce-id"] == str(event.id)
        assert message.headers["ce-subject"] == UID
        assert message.headers["ce-source"] == "/edge/test"
        assert json.loads(message.body)["sop_instance_uid"] == event.sop_instance_uid
    finally:
        await bus.close()


async def test_consumer_queue_is_quorum_with_explicit_delivery_limit(amqp_url: str) -> None:
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        spec = ConsumerQueue("probe.args", ("probe.args",), delivery_limit=7)
        await declare_topology(channel, [spec])
        # Redeclaring with different arguments fails with PRECONDITION_FAILED: proves what is set.
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(
                spec.name, durable=True, arguments={**spec.arguments(), "x-delivery-limit": 3}
            )
    finally:
        await connection.close()


class Unroutable(Event):
    name = "nobody.listens"


async def test_unroutable_publish_is_an_error(amqp_url: str) -> None:
    bus = await AioPikaBus.connect(amqp_url, "/edge/test")
    try:
        with pytest.raises(BusError):
            await bus.publish(Unroutable())
    finally:
        await bus.close()


async def test_bad_message_is_dead_lettered_with_reason_and_others_flow(amqp_url: str) -> None:
    bus = await AioPikaBus.connect(amqp_url, "/edge/test")
    spec = ConsumerQueue("ingestion.instance-received", ("instance.received",))
    handled: list[str] = []

    async def handler(event: Event) -> None:
        assert isinstance(event, InstanceReceived)
        if event.sop_instance_uid.endswith(".2"):
            raise BadMessage("header has no SOP Class UID")
        handled.append(event.sop_instance_uid)

    try:
        for n in (1, 2, 3):
            await bus.publish(received(n))
        consumer = await bus.consume(spec, handler)
        for _ in range(100):
            if len(handled) == 2:
                break
            await asyncio.sleep(0.05)
        await consumer.stop()
        assert handled == [f"{UID}.1.1", f"{UID}.1.3"]
        channel = await bus.connection.channel()
        [dead] = await _get_all(channel, spec.dead_letter_queue)
        assert dead.headers[REASON_HEADER] == "header has no SOP Class UID"
        assert json.loads(dead.body)["sop_instance_uid"] == f"{UID}.1.2"
    finally:
        await bus.close()


async def test_message_failing_every_time_is_dead_lettered_after_the_limit_and_others_flow(
    amqp_url: str,
) -> None:
    bus = await AioPikaBus.connect(amqp_url, "/edge/test")
    spec = ConsumerQueue("ingestion.instance-received", ("instance.received",))
    poison = f"{UID}.1.5"
    attempts: list[str] = []
    handled: list[str] = []

    async def handler(event: Event) -> None:
        assert isinstance(event, InstanceReceived)
        attempts.append(event.sop_instance_uid)
        if event.sop_instance_uid == poison:
            raise RuntimeError("a bug that this message always triggers")
        handled.append(event.sop_instance_uid)

    try:
        for n in (4, 5, 6):
            await bus.publish(received(n))
        consumer = await bus.consume(spec, handler)
        for _ in range(200):
            if len(handled) == 2 and attempts.count(poison) == spec.delivery_limit:
                break
            await asyncio.sleep(0.05)
        await consumer.stop()
        channel = await bus.connection.channel()
        dead = await _get_all(channel, spec.dead_letter_queue)
        assert sorted(handled) == [f"{UID}.1.4", f"{UID}.1.6"]
        assert attempts.count(poison) == spec.delivery_limit  # requeued, then dead-lettered
        [message] = dead
        assert json.loads(message.body)["sop_instance_uid"] == poison
        reason = str(message.headers[REASON_HEADER])
        assert f"failed {spec.delivery_limit} times" in reason and "RuntimeError" in reason
    finally:
        await bus.close()


async def test_transient_error_is_retried_without_using_the_delivery_limit(amqp_url: str) -> None:
    bus = await AioPikaBus.connect(amqp_url, "/edge/test")
    spec = ConsumerQueue("ingestion.instance-received", ("instance.received",))
    attempts: list[int] = []

    async def handler(event: Event) -> None:
        attempts.append(1)
        if len(attempts) < spec.delivery_limit + 3:  # more failures than the limit allows
            raise TransientError("database down")

    try:
        await bus.publish(received(9))
        from edge.common.bus import RetryPolicy

        consumer = await bus.consume(
            spec, handler, retry=RetryPolicy(first_delay=0.01, max_delay=0.02)
        )
        for _ in range(200):
            if len(attempts) >= spec.delivery_limit + 3:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        await consumer.stop()
        assert len(attempts) == spec.delivery_limit + 3
        channel = await bus.connection.channel()
        assert await _get_all(channel, spec.dead_letter_queue) == []
    finally:
        await bus.close()


async def test_rpc_round_trip_error_and_timeout(amqp_url: str) -> None:
    connection = await aio_pika.connect_robust(amqp_url)

    async def echo(payload: dict) -> dict:
        if payload.get("fail"):
            raise ValueError("no such AE")
        return {"echo": payload["value"]}

    server = RpcServer(connection, {"test.echo": echo})
    await server.start()
    client = await RpcClient(connection, timeout=2.0).start()
    try:
        replies = await asyncio.gather(*(client.call("test.echo", {"value": i}) for i in range(20)))
        assert [r["echo"] for r in replies] == list(range(20))
        with pytest.raises(RpcError, match="no such AE"):
            await client.call("test.echo", {"fail": True})
        with pytest.raises(RpcTimeout):
            await client.call("test.nobody", {}, timeout=0.3)
    finally:
        await client.stop()
        await server.stop()
        await connection.close()
