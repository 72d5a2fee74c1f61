"""Ingestion as it runs: the real broker, S3 and Postgres, with the service's own consumer."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import aio_pika
import pytest

from bench.generate import generate_ct_study
from edge.common.bus import REASON_HEADER, AioPikaBus
from edge.common.catalog import PsycopgCatalog
from edge.common.dicom import instance_key
from edge.common.events import InstanceReceived
from edge.common.store import MinioObjectStore, sha256_file
from edge.ingestion.bootstrap import IngestionService
from edge.ingestion.settings import IngestionSettings

CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def announce(store: MinioObjectStore, path: Path) -> InstanceReceived:
    """Put ``path`` as the listener would and return the event it would publish."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    sha256 = sha256_file(path)
    store.put_file(key, path, sha256=sha256)
    return InstanceReceived(
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=CT_SOP_CLASS,
        transfer_syntax_uid=EXPLICIT_LE,
        object_key=key,
        size=path.stat().st_size,
        sha256=sha256,
        calling_ae="MODALITY",
        called_ae="EDGE",
    )


async def wait_until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def running(amqp_url: str, database_url: str, object_store: MinioObjectStore):  # type: ignore[no-untyped-def]
    settings = IngestionSettings(amqp_url=amqp_url, database_url=database_url)
    catalog = await PsycopgCatalog.open(database_url)
    service = IngestionService(settings, store=object_store, catalog=catalog)
    await service.start()
    bus = await AioPikaBus.connect(amqp_url, "/edge/test")
    try:
        yield service, bus, catalog
    finally:
        await bus.close()
        await service.stop()


async def test_unusable_object_is_dead_lettered_with_reason_and_the_queue_keeps_flowing(
    running,
    object_store: MinioObjectStore,
    tmp_path: Path,
    amqp_url: str,  # type: ignore[no-untyped-def]
) -> None:
    service, bus, catalog = running
    good_before, bad, good_after = generate_ct_study(
        tmp_path, series=1, per_series=3, rows=16, cols=16
    )
    events = [announce(object_store, p) for p in (good_before, bad, good_after)]
    junk = b"this is not DICOM at all" * 100
    object_store.put_bytes(events[1].object_key, junk)
    events[1] = events[1].model_copy(
        update={"sha256": hashlib.sha256(junk).hexdigest(), "size": len(junk)}
    )
    for event in events:
        await bus.publish(event)

    async def indexed() -> bool:
        return await catalog.count_instances() == 2

    await wait_until(indexed)
    assert await catalog.get_instance(events[0].sop_instance_uid) is not None
    assert await catalog.get_instance(events[2].sop_instance_uid) is not None
    assert await catalog.get_instance(events[1].sop_instance_uid) is None

    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        dlq = await channel.get_queue("ingestion.instance-received.dlq", ensure=True)
        dead = None
        for _ in range(100):
            dead = await dlq.get(fail=False, no_ack=True)
            if dead:
                break
            await asyncio.sleep(0.05)
        assert dead is not None
        assert json.loads(dead.body)["sop_instance_uid"] == events[1].sop_instance_uid
        assert "cannot be parsed" in str(dead.headers[REASON_HEADER])
    finally:
        await connection.close()


async def test_redelivered_event_is_acked_without_a_second_row(
    running,
    object_store: MinioObjectStore,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    service, bus, catalog = running
    [path] = generate_ct_study(tmp_path, series=1, per_series=1, rows=16, cols=16, seed=3)
    event = announce(object_store, path)
    before = await catalog.count_instances()
    await bus.publish(event)
    await bus.publish(event)  # a redelivery, as after a crash between commit and ack

    async def indexed() -> bool:
        return await catalog.count_instances() == before + 1

    await wait_until(indexed)
    await asyncio.sleep(0.5)
    assert await catalog.count_instances() == before + 1


async def set_connections_allowed(database_url: str, allowed: bool) -> None:
    """Take the catalog database away from every client, or give it back (a Postgres outage
    for this database only: the shared server keeps running for everyone else)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = str(conninfo_to_dict(database_url)["dbname"])
    maintenance = make_conninfo(database_url, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(maintenance, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("true" if allowed else "false")
            )
        )
        if not allowed:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


async def test_database_outage_holds_messages_without_spending_their_delivery_limit(
    running,
    object_store: MinioObjectStore,
    tmp_path: Path,
    amqp_url: str,
    database_url: str,  # type: ignore[no-untyped-def]
) -> None:
    service, bus, catalog = running
    paths = generate_ct_study(tmp_path, series=1, per_series=4, rows=16, cols=16, seed=21)
    events = [announce(object_store, p) for p in paths]
    before = await catalog.count_instances()
    await set_connections_allowed(database_url, False)
    try:
        for event in events:
            await bus.publish(event)
        # Well past the five deliveries a failing message would be allowed.
        await asyncio.sleep(4)
        assert await queue_depth(amqp_url, "ingestion.instance-received.dlq") == 0
    finally:
        await set_connections_allowed(database_url, True)

    async def indexed() -> bool:
        return await catalog.count_instances() == before + len(events)

    await wait_until(indexed, timeout=60)
    assert await queue_depth(amqp_url, "ingestion.instance-received.dlq") == 0
    assert await queue_depth(amqp_url, "ingestion.instance-received") == 0


async def queue_depth(amqp_url: str, name: str) -> int:
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await connection.close()
