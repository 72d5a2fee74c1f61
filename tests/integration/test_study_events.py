"""Ingestion's catalog events on the real broker: instance.stored, study.arrived once per study,
study.updated after more instances, and the change feed over HTTP replaying them in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from starlette.applications import Starlette

from bench.generate import generate_ct_study
from edge.common.bus import EXCHANGE, AioPikaBus
from edge.common.catalog import PsycopgCatalog
from edge.common.events import (
    CatalogEvent,
    Event,
    InstanceStored,
    StudyArrived,
    StudyUpdated,
    from_parts,
)
from edge.common.store import MinioObjectStore
from edge.ingestion.bootstrap import IngestionService
from edge.ingestion.settings import IngestionSettings
from tests.integration.test_ingestion_service import announce

STABLE_AFTER = 1.0


class Subscriber:
    """A downstream system: its own exclusive queue bound to the catalog events."""

    def __init__(self) -> None:
        self.events: list[tuple[Event, dict[str, Any]]] = []

    async def bind(self, url: str) -> aio_pika.abc.AbstractRobustConnection:
        connection = await aio_pika.connect_robust(url)
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE)
        queue = await channel.declare_queue(exclusive=True)
        for key in ("instance.*", "study.*"):
            await queue.bind(exchange, routing_key=key)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                headers = dict(message.headers or {})
                self.events.append((from_parts(headers, message.body), headers))

        await queue.consume(on_message)
        return connection

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e, _ in self.events if type(e) is kind]

    async def wait_for(self, kind: type[Event], n: int, timeout: float = 20.0) -> list[Any]:
        for _ in range(int(timeout / 0.05)):
            if len(self.of(kind)) >= n:
                return self.of(kind)
            await asyncio.sleep(0.05)
        raise AssertionError(f"{n} {kind.name} not received in {timeout}s: {self.of(kind)}")


@pytest.fixture
async def service(
    amqp_url: str, database_url: str, object_store: MinioObjectStore
) -> AsyncIterator[tuple[IngestionService, AioPikaBus, Subscriber]]:
    settings = IngestionSettings(
        amqp_url=amqp_url,
        database_url=database_url,
        stable_after=STABLE_AFTER,
        announce_interval=0.1,
        relay_interval=0.1,
    )
    svc = IngestionService(
        settings, store=object_store, catalog=await PsycopgCatalog.open(database_url)
    )
    await svc.start()
    bus = await AioPikaBus.connect(amqp_url, "/edge/test")
    subscriber = Subscriber()
    connection = await subscriber.bind(amqp_url)
    try:
        yield svc, bus, subscriber
    finally:
        await connection.close()
        await bus.close()
        await svc.stop()


async def test_study_arrives_once_after_its_instances_and_updates_after_more(
    service: tuple[IngestionService, AioPikaBus, Subscriber],
    object_store: MinioObjectStore,
    tmp_path: Path,
) -> None:
    svc, bus, subscriber = service
    paths = generate_ct_study(tmp_path, series=2, per_series=3, rows=16, cols=16, seed=11)
    received = [announce(object_store, p) for p in paths]
    for event in received[:5]:
        await bus.publish(event)

    stored = await subscriber.wait_for(InstanceStored, 5)
    [arrived] = await subscriber.wait_for(StudyArrived, 1)
    assert arrived.study_uid == received[0].study_uid
    assert (arrived.instance_count, arrived.series_count) == (5, 2)
    assert arrived.bytes == sum(e.size for e in received[:5])
    assert arrived.calling_aes == ["MODALITY"]
    assert arrived.sequence > max(e.sequence for e in stored)
    await asyncio.sleep(STABLE_AFTER * 2)
    assert len(subscriber.of(StudyArrived)) == 1, "announced twice"

    await bus.publish(received[5])
    [updated] = await subscriber.wait_for(StudyUpdated, 1)
    assert updated.instance_count == 6
    assert updated.changes.instances_added == 1
    assert updated.changes.previous_sequence == arrived.sequence

    sequences = [e.sequence for e, _ in subscriber.events if isinstance(e, CatalogEvent)]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    headers = dict(subscriber.events[-1][1])
    assert headers["ce-sequence"] == f"{updated.sequence:020d}"
    assert headers["ce-subject"] == updated.study_uid


async def test_change_feed_replays_what_a_subscriber_missed_in_order(
    service: tuple[IngestionService, AioPikaBus, Subscriber],
    object_store: MinioObjectStore,
    tmp_path: Path,
) -> None:
    svc, bus, subscriber = service
    paths = generate_ct_study(tmp_path, series=1, per_series=4, rows=16, cols=16, seed=12)
    for path in paths:
        await bus.publish(announce(object_store, path))
    await subscriber.wait_for(StudyArrived, 1)
    live = [e for e, _ in subscriber.events if isinstance(e, CatalogEvent)]

    app = Starlette(routes=svc.routes())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingestion") as client:
        replayed: list[dict[str, Any]] = []
        after = live[0].sequence - 1
        while True:  # pages of two, as a subscriber catching up would read them
            page = (await client.get("/api/changes", params={"after": after, "limit": 2})).json()
            replayed += page["events"]
            if not page["events"]:
                break
            after = page["next"]
        bad = await client.get("/api/changes", params={"after": "-1"})
        too_many = await client.get("/api/changes", params={"limit": "100000"})

    assert [(r["id"], r["sequence"], r["type"]) for r in replayed] == [
        (str(e.id), e.sequence, e.ce_type()) for e in live
    ]
    assert replayed[-1]["data"]["instance_count"] == 4
    assert replayed[0]["specversion"] == "1.0" and replayed[0]["subject"] == live[0].study_uid
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"
    assert "after" in bad.json()["detail"]
    assert too_many.status_code == 400
