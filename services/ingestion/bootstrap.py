"""Composition root of ingestion: builds the adapters inside the function, never at import."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute

from edge.common.bus import INGESTION_INSTANCE_RECEIVED, AioPikaBus, Consumer
from edge.common.catalog import Catalog, PsycopgCatalog
from edge.common.runtime import Check, broker_check, store_check
from edge.common.store import MinioObjectStore, ObjectStore
from edge.ingestion.consumers import dispatcher
from edge.ingestion.handlers import IngestionDeps
from edge.ingestion.settings import IngestionSettings


class IngestionService:
    name = "ingestion"

    def __init__(
        self,
        settings: IngestionSettings,
        *,
        store: ObjectStore | None = None,
        catalog: Catalog | None = None,
        bus: AioPikaBus | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.bus = bus
        self._consumer: Consumer | None = None

    async def start(self) -> None:
        s = self.settings
        if self.store is None:
            self.store = MinioObjectStore.from_settings(s)
        if self.catalog is None:
            self.catalog = await PsycopgCatalog.open(s.database_url, max_size=s.db_pool_size)
        if self.bus is None:
            self.bus = await AioPikaBus.connect(s.amqp_url, "/edge/ingestion")
        deps = IngestionDeps(store=self.store, catalog=self.catalog)
        self._consumer = await self.bus.consume(
            INGESTION_INSTANCE_RECEIVED, dispatcher(deps), prefetch=s.prefetch
        )

    async def stop(self) -> None:
        """Stop taking messages, finish those in flight (their acks need the channel), close."""
        if self._consumer is not None:
            await self._consumer.stop()
        if self.bus is not None:
            await self.bus.close()
        if self.catalog is not None:
            await self.catalog.close()

    def readiness_checks(self) -> dict[str, Check]:
        async def database() -> None:
            if self.catalog is None or not await self.catalog.ping():
                raise ConnectionError("catalog database unreachable")

        return {
            "broker": broker_check(lambda: self.bus.connection if self.bus else None),
            "database": database,
            "s3": store_check(lambda: self.store),
        }

    def routes(self) -> list[BaseRoute]:
        return []


def bootstrap(settings: IngestionSettings, **adapters: Any) -> IngestionService:
    return IngestionService(settings, **adapters)
