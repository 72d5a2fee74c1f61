"""The storage scrub against the real S3, Postgres and RabbitMQ: an object written without its
``instance.received`` (a crash between the S3 write and the publish) is announced and catalogued."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import psycopg
import pydicom
import pytest
from pydicom.data import get_testdata_file

from edge.common.bus import INGESTION_INSTANCE_RECEIVED, AioPikaBus
from edge.common.catalog import PsycopgCatalog
from edge.common.dicom import instance_key
from edge.common.events import InstanceReceived, from_parts
from edge.common.store import (
    OBJECT_META_CALLED_AE,
    OBJECT_META_CALLING_AE,
    OBJECT_META_TRANSFER_SYNTAX,
    MinioObjectStore,
)
from edge.ingestion.bootstrap import IngestionService
from edge.ingestion.settings import IngestionSettings
from edge.storage.bootstrap import StorageService
from edge.storage.scrub import Pacer, Scrubber
from edge.storage.settings import StorageSettings

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
HEADER = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
KEY = instance_key(HEADER.StudyInstanceUID, HEADER.SeriesInstanceUID, HEADER.SOPInstanceUID)
SHA256 = hashlib.sha256(CT_SMALL.read_bytes()).hexdigest()
SIZE = CT_SMALL.stat().st_size


def stored_without_announcement(store: MinioObjectStore) -> None:
    """What the listener leaves behind when it dies between the S3 write and the publish."""
    store.put_file(
        KEY,
        CT_SMALL,
        sha256=SHA256,
        metadata={
            OBJECT_META_CALLING_AE: "CT_SCANNER",
            OBJECT_META_CALLED_AE: "EDGE",
            OBJECT_META_TRANSFER_SYNTAX: str(HEADER.file_meta.TransferSyntaxUID),
        },
    )


async def wait_until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


@pytest.fixture
async def bus(amqp_url: str) -> AsyncIterator[AioPikaBus]:
    connected = await AioPikaBus.connect(amqp_url, "/edge/storage")
    try:
        yield connected
    finally:
        await connected.close()


async def test_pass_puts_the_lost_announcement_on_the_ingestion_queue(
    object_store: MinioObjectStore, catalog: PsycopgCatalog, bus: AioPikaBus, amqp_url: str
) -> None:
    stored_without_announcement(object_store)
    scrubber = Scrubber(object_store, catalog, bus, grace=0, batch=500, pacer=Pacer(50))
    report = await scrubber.run_pass()
    assert (report.scanned, report.announced, report.complete) == (1, 1, True)

    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(INGESTION_INSTANCE_RECEIVED.name, ensure=True)
        message = None
        for _ in range(100):
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                break
            await asyncio.sleep(0.05)
        assert message is not None, "no instance.received on the ingestion queue"
        headers = dict(message.headers or {})
        event = from_parts(headers, message.body)
        assert headers["ce-source"] == "/edge/storage"
    finally:
        await connection.close()
    assert isinstance(event, InstanceReceived)
    assert (event.study_uid, event.series_uid, event.sop_instance_uid) == (
        HEADER.StudyInstanceUID,
        HEADER.SeriesInstanceUID,
        HEADER.SOPInstanceUID,
    )
    assert (event.sop_class_uid, event.object_key) == (HEADER.SOPClassUID, KEY)
    assert (event.sha256, event.size) == (SHA256, SIZE)
    assert (event.calling_ae, event.called_ae) == ("CT_SCANNER", "EDGE")


async def test_storage_service_gets_the_lost_instance_catalogued(
    object_store: MinioObjectStore, database_url: str, amqp_url: str
) -> None:
    ingestion = IngestionService(
        IngestionSettings(amqp_url=amqp_url, database_url=database_url), store=object_store
    )
    storage = StorageService(
        StorageSettings(
            amqp_url=amqp_url, database_url=database_url, scrub_grace=0, scrub_interval=0.2
        ),
        store=object_store,
    )
    await ingestion.start()
    await storage.start()
    try:
        checks = storage.readiness_checks()
        assert sorted(checks) == ["broker", "database", "s3"]
        for check in checks.values():
            await check()  # raises unless it answers
        stored_without_announcement(object_store)
        catalog = ingestion.catalog
        assert catalog is not None

        async def catalogued() -> bool:
            return await catalog.get_instance(HEADER.SOPInstanceUID) is not None

        await wait_until(catalogued)
        row = await catalog.get_instance(HEADER.SOPInstanceUID)
        assert row is not None
        assert (row["object_key"], row["sha256"], row["calling_ae"]) == (KEY, SHA256, "CT_SCANNER")
        assert await catalog.catalogued_objects([KEY, "studies/1.2/series/3/instances/4.dcm"]) == {
            KEY: SHA256
        }
        # Once catalogued, later passes leave it be.
        assert storage.scrubber is not None
        again = await storage.scrubber.run_pass()
        assert (again.announced, again.current + again.remembered) == (0, 1)
    finally:
        await storage.stop()
        await ingestion.stop()


async def test_object_key_lookups_are_served_by_an_index(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'instance_object_key_idx'"
        )
        row = await cur.fetchone()
    assert row is not None and "(object_key)" in row[0]
