"""The catalog port: what ingestion (and later query, retrieval) may ask of the catalog.

Two adapters implement it: :class:`~edge.common.catalog.psycopg.PsycopgCatalog` (Postgres) and
:class:`~edge.common.catalog.memory.InMemoryCatalog` (a fake for unit tests).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from edge.common.catalog.records import InstanceRecord
from edge.common.events import CatalogEvent


class CatalogUnavailable(Exception):
    """The catalog could not be reached or the work must be retried (connection refused, pool
    exhausted, server shutting down, deadlock, statement timeout). Retry with backoff; this is
    never a verdict on the content."""


class UpsertOutcome(StrEnum):
    """What :meth:`CatalogTransaction.upsert_instance` did with an instance."""

    INSERTED = "inserted"
    # Same SOP Instance UID and same SHA-256: a redelivery or a re-send; nothing was written.
    UNCHANGED = "unchanged"
    # Same SOP Instance UID, different bytes: the row now describes the new object.
    REPLACED = "replaced"


class Upserted(NamedTuple):
    """What an upsert did, and the SHA-256 the instance had before (None if it was new)."""

    outcome: UpsertOutcome
    previous_sha256: str | None


@dataclass(frozen=True)
class PreviousAnnouncement:
    """What a study's last ``study.arrived``/``study.updated`` said (``summary``), its change-feed
    sequence (None while the relay has not numbered it yet) and how many instances were replaced
    since."""

    summary: Mapping[str, Any]
    sequence: int | None
    replaced_since: int


@dataclass(frozen=True)
class DueStudy:
    """A study whose announcement is due, locked by the claiming transaction."""

    pk: int
    study_uid: str
    previous: PreviousAnnouncement | None  # None: never announced (study.arrived)
    trace_context: Mapping[str, str]  # W3C headers of the instance that last moved the timer


@dataclass(frozen=True)
class SeriesState:
    """One series as the catalog holds it now, aggregated over its instances."""

    series_uid: str
    modality: str | None
    sop_class_uids: list[str]
    instances: int
    bytes: int
    digest: str  # changes when an instance is added or replaced
    first_received_at: datetime
    last_received_at: datetime
    calling_aes: list[str]


@dataclass(frozen=True)
class OutboxEntry:
    """An outbox row: the event (with its sequence once numbered) and the headers it carries."""

    pk: int
    event: CatalogEvent
    headers: dict[str, str]


# Publish a batch of outbox entries, in order; return only once the broker confirmed them all.
PublishBatch = Callable[[list[OutboxEntry]], Awaitable[None]]


class CatalogTransaction(Protocol):
    """Work done in one database transaction: it commits together or not at all.

    Ingestion uses it to write the catalog row and the outbox event that announces it atomically
    (the transactional outbox of ARCHITECTURE.md, "Events").
    """

    async def upsert(
        self, rec: InstanceRecord, trace_context: Mapping[str, str] | None = None
    ) -> Upserted: ...

    async def upsert_instance(self, rec: InstanceRecord) -> UpsertOutcome: ...

    async def add_outbox(
        self, event: CatalogEvent, headers: Mapping[str, str] | None = None
    ) -> int: ...


class Catalog(Protocol):
    """The catalog of received instances: patient → study → series → instance."""

    def transaction(self) -> AbstractAsyncContextManager[CatalogTransaction]: ...

    async def upsert_instance(self, rec: InstanceRecord) -> UpsertOutcome: ...

    async def get_instance(self, sop_instance_uid: str) -> dict[str, Any] | None: ...

    async def count_instances(self, study_instance_uid: str | None = None) -> int: ...

    async def count_studies(self) -> int: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...

    async def catalogued_objects(self, keys: Sequence[str]) -> dict[str, str]:
        """Which of ``keys`` (S3 object keys) an instance row points at: key → its SHA-256.

        Keys without a row are absent from the answer. The storage scrub asks this for each
        page of a bucket listing, so it must stay one indexed lookup per call.
        """
        ...


class StudyTimerTransaction(Protocol):
    """The study-stability timer's side of a transaction (Postgres only)."""

    async def claim_due_studies(self, stable_after: float, limit: int) -> list[DueStudy]: ...

    async def study_series(self, study_pk: int) -> list[SeriesState]: ...

    async def add_outbox(
        self, event: CatalogEvent, headers: Mapping[str, str] | None = None
    ) -> int: ...

    async def mark_announced(
        self, study_pk: int, summary: Mapping[str, Any], outbox_pk: int | None
    ) -> None: ...


class EventLog(Protocol):
    """The outbox seen from the relay, the announcer and the change feed (Postgres only: these
    are about concurrency between replicas, which a fake would not tell us anything about)."""

    def transaction(self) -> AbstractAsyncContextManager[StudyTimerTransaction]: ...

    async def number_outbox(self, limit: int = 500) -> int: ...

    async def publish_outbox(self, publish: PublishBatch, limit: int = 500) -> int: ...

    async def changes(self, after: int, limit: int) -> list[OutboxEntry]: ...

    async def oldest_change(self) -> int | None: ...

    async def prune_changes(self, retention: float, limit: int = 10_000) -> int: ...

    async def outbox_backlog(self) -> tuple[int, int]: ...
