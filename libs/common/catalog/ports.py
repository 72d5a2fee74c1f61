"""The catalog port: what ingestion (and later query, retrieval) may ask of the catalog.

Two adapters implement it: :class:`~edge.common.catalog.psycopg.PsycopgCatalog` (Postgres) and
:class:`~edge.common.catalog.memory.InMemoryCatalog` (a fake for unit tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from enum import StrEnum
from typing import Any, Protocol

from edge.common.catalog.records import InstanceRecord


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


class CatalogTransaction(Protocol):
    """Work done in one database transaction: it commits together or not at all.

    Ingestion uses it to write the catalog row and the outbox event that announces it atomically
    (the transactional outbox of ARCHITECTURE.md, "Events").
    """

    async def upsert_instance(self, rec: InstanceRecord) -> UpsertOutcome: ...

    async def add_outbox(
        self,
        event_type: str,
        subject: str,
        payload: Mapping[str, Any],
        headers: Mapping[str, Any] | None = None,
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
