"""One trace across the broker: the real RabbitMQ, S3 and Postgres, spans in an in-memory exporter.

The listener, auth and ingestion run in this process, so one exporter sees every service's spans
and the test can check that the C-STORE, its S3 put and its publish, and ingestion's consumer
are one trace, each span the child of the one before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from bench.generate import generate_ct_study
from edge.auth.bootstrap import AuthService
from edge.auth.registry import PsycopgAERegistry, RemoteAE
from edge.auth.settings import AuthSettings
from edge.common.bus import AioPikaBus, ConsumerQueue, declare_topology
from edge.common.catalog import PsycopgCatalog
from edge.common.dicom import instance_key
from edge.common.events import AeChanged, Event
from edge.common.netutil import free_ports
from edge.common.rpc import RpcClient, RpcServer
from edge.common.store import MinioObjectStore
from edge.common.tracing import add_span_exporter
from edge.ingestion.bootstrap import IngestionService
from edge.ingestion.settings import IngestionSettings
from edge.listener.bootstrap import ListenerService
from edge.listener.settings import ListenerSettings

tracer = trace.get_tracer(__name__)
CALLING_AE = "TRACESCU"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    add_span_exporter(exporter)
    yield exporter
    exporter.shutdown()


async def finished(
    spans: InMemorySpanExporter,
    name: str,
    trace_id: int,
    kind: SpanKind | None = None,
    timeout: float = 10.0,
) -> ReadableSpan:
    """The finished span ``name`` (of ``kind``) in trace ``trace_id``, waiting for it to end."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for span in spans.get_finished_spans():
            if (
                span.name == name
                and span.context.trace_id == trace_id
                and (kind is None or span.kind == kind)
            ):
                return span
        assert asyncio.get_running_loop().time() < deadline, f"no finished span {name!r}"
        await asyncio.sleep(0.05)


def assert_child(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.context.trace_id == parent.context.trace_id, (child.name, parent.name)
    assert child.parent is not None, child.name
    assert child.parent.span_id == parent.context.span_id, (child.name, parent.name)


async def test_consumer_span_is_the_child_of_the_publish_span(
    amqp_url: str, spans: InMemorySpanExporter
) -> None:
    queue = ConsumerQueue("test.trace-propagation", (AeChanged.name,))
    bus = await AioPikaBus.connect(amqp_url, "/edge/test")
    seen: asyncio.Queue[tuple[Event, int]] = asyncio.Queue()

    async def handler(event: Event) -> None:
        await seen.put((event, trace.get_current_span().get_span_context().span_id))

    try:
        channel = await bus.connection.channel()
        await declare_topology(channel, [queue])
        consumer = await bus.consume(queue, handler)
        event = AeChanged(ae_title="TRACED", change="added")
        with tracer.start_as_current_span("caller") as caller:
            await bus.publish(event)
        received, handler_span_id = await asyncio.wait_for(seen.get(), 10)
        await consumer.stop()
    finally:
        await bus.close()
    trace_id = caller.get_span_context().trace_id
    publish = await finished(spans, "publish ae.changed", trace_id)
    process = await finished(spans, f"process {queue.name}", trace_id)
    assert received.id == event.id
    assert publish.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert_child(process, publish)
    assert process.context.span_id == handler_span_id  # the handler ran inside it
    assert process.attributes is not None
    assert process.attributes["messaging.message.id"] == str(event.id)
    assert process.attributes["edge.queue"] == queue.name
    assert process.attributes["edge.outcome"] == "acked"


async def test_rpc_server_span_is_the_child_of_the_call(
    amqp_url: str, spans: InMemorySpanExporter
) -> None:
    bus = await AioPikaBus.connect(amqp_url, "/edge/test")

    async def echo(payload: dict[str, object]) -> dict[str, object]:
        return payload

    server = RpcServer(bus.connection, {"test.echo": echo})
    await server.start()
    client = await RpcClient(bus.connection).start()
    try:
        with tracer.start_as_current_span("caller") as caller:
            assert await client.call("test.echo", {"n": 1}) == {"n": 1}
    finally:
        await client.stop()
        await server.stop()
        await bus.close()
    trace_id = caller.get_span_context().trace_id
    call = await finished(spans, "rpc test.echo", trace_id, SpanKind.CLIENT)
    served = await finished(spans, "rpc test.echo", trace_id, SpanKind.SERVER)
    assert_child(served, call)


# -- the real thing: listener, auth and ingestion in this process --------------------------------


@pytest.fixture
async def suite(
    amqp_url: str, database_url: str, object_store: MinioObjectStore
) -> AsyncIterator[ListenerSettings]:
    await PsycopgAERegistry(database_url).put(
        RemoteAE(CALLING_AE, ("127.0.0.1",), 11119, frozenset({"echo", "store"}))
    )
    auth = AuthService(AuthSettings(amqp_url=amqp_url, database_url=database_url))
    catalog = await PsycopgCatalog.open(database_url)
    ingestion = IngestionService(
        IngestionSettings(
            amqp_url=amqp_url,
            database_url=database_url,
            stable_after=0.5,
            announce_interval=0.1,
            relay_interval=0.1,
        ),
        store=object_store,
        catalog=catalog,
    )
    (dicom_port,) = free_ports(1)
    settings = ListenerSettings(
        amqp_url=amqp_url, dicom_host="127.0.0.1", dicom_port=dicom_port, ae_title="EDGE"
    )
    listener = ListenerService(settings, store=object_store)
    await auth.start()
    await ingestion.start()
    await listener.start()
    try:
        yield settings
    finally:
        await listener.stop(grace=5)
        await ingestion.stop()
        await auth.stop()


def c_store(path: Path, port: int) -> int:
    """Send ``path`` by C-STORE from CALLING_AE; return the response status."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE")
    assert assoc.is_established, "association not accepted"
    try:
        response = assoc.send_c_store(path)
        return int(response.Status)
    finally:
        assoc.release()


async def test_one_trace_runs_from_the_c_store_to_ingestion(
    suite: ListenerSettings,
    database_url: str,
    object_store: MinioObjectStore,
    spans: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    [path] = generate_ct_study(tmp_path, series=1, per_series=1, rows=16, cols=16)
    ds = dcmread(path, stop_before_pixels=True)
    sop_uid, study_uid = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
    key = instance_key(study_uid, str(ds.SeriesInstanceUID), sop_uid)

    assert await asyncio.to_thread(c_store, path, suite.dicom_port) == 0x0000
    deadline = asyncio.get_running_loop().time() + 30
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        while not await (
            await conn.execute("SELECT 1 FROM instance WHERE sop_instance_uid = %s", (sop_uid,))
        ).fetchone():
            assert asyncio.get_running_loop().time() < deadline, "instance never catalogued"
            await asyncio.sleep(0.05)

    c_store_span = next(
        s
        for s in spans.get_finished_spans()
        if s.name == "C-STORE" and (s.attributes or {}).get("dicom.sop_instance_uid") == sop_uid
    )
    trace_id = c_store_span.context.trace_id
    association = await finished(spans, "DICOM association", trace_id)
    put = await finished(spans, "S3.PutObject", trace_id)
    publish = await finished(spans, "publish instance.received", trace_id)
    process_queue = "ingestion.instance-received"
    process = await finished(spans, f"process {process_queue}", trace_id)

    assert_child(c_store_span, association)
    assert_child(put, c_store_span)  # across the upload thread
    assert_child(publish, c_store_span)  # across run_coroutine_threadsafe
    assert_child(process, publish)  # across the broker
    upsert = await finished(spans, "catalog upsert", trace_id)
    assert_child(upsert, process)
    # The study's announcement continues the trace of its last instance, through the outbox.
    announce = await finished(spans, "study announce", trace_id, timeout=20)
    assert_child(announce, upsert)
    relayed = await finished(spans, "study.arrived relay", trace_id)
    assert_child(relayed, announce)
    arrived = await finished(spans, "publish study.arrived", trace_id)
    assert_child(arrived, relayed)
    # Admission asked auth over RPC inside the association.
    admit_call = await finished(spans, "rpc auth.admit", trace_id, SpanKind.CLIENT)
    admit_served = await finished(spans, "rpc auth.admit", trace_id, SpanKind.SERVER)
    assert_child(admit_call, association)
    assert_child(admit_served, admit_call)

    assert association.attributes is not None and c_store_span.attributes is not None
    assert association.attributes["dicom.calling_ae"] == CALLING_AE
    assert association.attributes["dicom.association.outcome"] == "released"
    assert c_store_span.attributes["dicom.study_uid"] == study_uid
    assert c_store_span.attributes["dicom.status"] == "0x0000"
    assert put.attributes is not None and put.attributes["aws.s3.key"] == key
    # The spooled Part-10 file (its meta group as pynetdicom writes it), as it went to S3.
    assert c_store_span.attributes["dicom.size"] == put.attributes["edge.object.size"] > 0
    assert process.attributes is not None and process.attributes["dicom.study_uid"] == study_uid

    # The same path recorded its metrics (one registry: every service is in this process).
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    assert sample("edge_cstore_seconds_count", status="0x0000") >= 1
    assert sample("edge_cstore_bytes_count") >= 1
    assert sample("edge_events_published_total", event="instance.received") >= 1
    assert sample("edge_queue_lag_seconds_count", queue="ingestion.instance-received") >= 1
    assert sample("edge_event_handle_seconds_count", queue=process_queue, outcome="acked") >= 1

    # Nothing of the patient's in any span of the trace.
    demographics = [str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)]
    for span in spans.get_finished_spans():
        if span.context.trace_id == trace_id:
            text = span.to_json()
            assert not [value for value in demographics if value in text], span.name
