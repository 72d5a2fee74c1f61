"""Ingestion decisions: from an ``instance.received`` to a catalog row. No transport here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry import trace
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from edge.common.bus import BadMessage, TransientError
from edge.common.catalog import (
    Catalog,
    CatalogUnavailable,
    InstanceRecord,
    UnusableInstance,
    Upserted,
    UpsertOutcome,
    record_from_dataset,
)
from edge.common.events import InstanceFacts, InstanceReceived, InstanceReplaced, InstanceStored
from edge.common.headers import FIRST_READ, read_header
from edge.common.store import ObjectNotFound, ObjectStore, ObjectStoreError
from edge.common.tracing import inject, record_failure, safe_attributes

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


@dataclass
class IngestionDeps:
    store: ObjectStore
    catalog: Catalog
    # Called after a transaction that queued an event commits (wakes the outbox relay).
    committed: Callable[[], None] = lambda: None


def load_header(store: ObjectStore, key: str, sha256: str) -> Dataset | None:
    """The header of the object at ``key``, or None when the object no longer holds the bytes
    whose SHA-256 the event announced (newer bytes replaced them; their own event follows).

    The first ranged GET also gives the object's size and checksum, so no HEAD is needed.
    """
    first, stored = store.read_head(key, FIRST_READ)
    if stored.sha256 and stored.sha256 != sha256:
        return None
    return read_header(store, key, first, stored.size)


async def on_instance_received(
    event: InstanceReceived, deps: IngestionDeps
) -> UpsertOutcome | None:
    """Index one received instance: idempotent by SOP Instance UID and SHA-256.

    Returns what the catalog did, or None when the object was since replaced by newer bytes
    (their own ``instance.received`` will index them).
    """
    try:
        # One hop off the event loop for all the S3 reads and the parse.
        header = await asyncio.to_thread(load_header, deps.store, event.object_key, event.sha256)
    except ObjectStoreError as exc:
        raise TransientError(f"object store: {exc}") from exc
    except ObjectNotFound as exc:
        raise BadMessage(f"object {event.object_key} does not exist") from exc
    except (ValueError, EOFError, InvalidDicomError) as exc:
        raise BadMessage(f"header of {event.object_key} cannot be parsed: {exc}") from exc
    if header is None:
        log.info("instance %s superseded by newer bytes; skipped", event.sop_instance_uid)
        return None
    try:
        record = record_from_dataset(
            header,
            sha256=event.sha256,
            size=event.size,
            object_key=event.object_key,
            transfer_syntax_uid=event.transfer_syntax_uid,
            calling_ae=event.calling_ae,
            received_at=event.time,
        )
    except UnusableInstance as exc:
        raise BadMessage(str(exc)) from exc
    if record.sop_instance_uid != event.sop_instance_uid:
        raise BadMessage("object's SOP Instance UID differs from the event's")
    with tracer.start_as_current_span(
        "catalog upsert",
        kind=trace.SpanKind.CLIENT,
        attributes=safe_attributes(
            {
                "db.system.name": "postgresql",
                "db.operation.name": "upsert",
                "db.collection.name": "instance",
                "dicom.sop_instance_uid": event.sop_instance_uid,
                "dicom.study_uid": event.study_uid,
            }
        ),
    ) as span:
        trace_context: dict[str, str] = {}
        inject(trace_context)  # the study's announcement continues this trace
        try:
            async with deps.catalog.transaction() as tx:
                upserted = await tx.upsert(record, trace_context)
                if upserted.outcome is not UpsertOutcome.UNCHANGED:
                    # Same transaction as the row: the event exists iff the change does.
                    await tx.add_outbox(catalog_event(event, record, upserted), trace_context)
        except CatalogUnavailable as exc:
            record_failure(span, exc)
            raise TransientError(f"catalog: {exc}") from exc
        span.set_attributes(safe_attributes({"edge.outcome": upserted.outcome.value}))
    if upserted.outcome is UpsertOutcome.UNCHANGED:
        return upserted.outcome
    deps.committed()
    if upserted.outcome is UpsertOutcome.REPLACED:
        log.info(
            "instance %s replaced by new bytes (sha256 %s)",
            event.sop_instance_uid,
            event.sha256[:12],
        )
    return upserted.outcome


def catalog_event(
    received: InstanceReceived, record: InstanceRecord, upserted: Upserted
) -> InstanceStored:
    """``instance.stored`` for a new instance, ``instance.replaced`` for new bytes."""
    fields = {
        **received.model_dump(include=set(InstanceFacts.model_fields)),
        "modality": record.series.modality,
        "calling_ae": received.calling_ae,
    }
    if upserted.outcome is UpsertOutcome.REPLACED and upserted.previous_sha256:
        return InstanceReplaced(**fields, previous_sha256=upserted.previous_sha256)
    return InstanceStored(**fields)
