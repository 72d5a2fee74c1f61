"""Composition root of ingestion: builds the adapters inside the function, never at import."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute

from edge.common.bus import INGESTION_INSTANCE_RECEIVED, AioPikaBus, Consumer
from edge.common.catalog import Catalog, EventLog, PsycopgCatalog
from edge.common.runtime import Check, broker_check, store_check
from edge.common.store import MinioObjectStore, ObjectStore
from edge.ingestion.consumers import dispatcher
from edge.ingestion.handlers import IngestionDeps
from edge.ingestion.http import change_feed_routes
from edge.ingestion.relay import Announcer, Relay
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
        self.relay: Relay | None = None
        self.announcer: Announcer | None = None
        self._events: EventLog | None = None

    async def start(self) -> None:
        s = self.settings
        if self.store is None:
            self.store = MinioObjectStore.from_settings(s)
        if self.catalog is None:
            self.catalog = await PsycopgCatalog.open(s.database_url, max_size=s.db_pool_size)
        if self.bus is None:
            self.bus = await AioPikaBus.connect(s.amqp_url, "/edge/ingestion")
        if isinstance(self.catalog, PsycopgCatalog):
            # The outbox, the study timer and the change feed live in Postgres.
            self._events = self.catalog
            self.relay = Relay(
                self._events,
                self.bus,
                poll_interval=s.relay_interval,
                retention=s.changes_retention,
            )
            # A replica that starts after an outage first works through the backlog on its
            # queue: until then a study whose instances wait there looks quiet in the catalog.
            # So it consumes first and holds announcements for one quiet period.
            self.announcer = Announcer(
                self._events,
                stable_after=s.stable_after,
                poll_interval=s.announce_interval,
                announced=self.relay.wake,
                start_after=s.stable_after,
            )
        deps = IngestionDeps(
            store=self.store,
            catalog=self.catalog,
            committed=self.relay.wake if self.relay else lambda: None,
        )
        self._consumer = await self.bus.consume(
            INGESTION_INSTANCE_RECEIVED, dispatcher(deps), prefetch=s.prefetch
        )
        for loop in (self.relay, self.announcer):
            if loop is not None:
                loop.start()

    async def stop(self) -> None:
        """Stop taking messages, finish those in flight (their acks need the channel), close."""
        if self._consumer is not None:
            await self._consumer.stop()
        for loop in (self.announcer, self.relay):
            if loop is not None:
                await loop.stop()
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
        if self._events is None:
            return []
        return change_feed_routes(self._events, max_limit=self.settings.changes_max_limit)


def bootstrap(settings: IngestionSettings, **adapters: Any) -> IngestionService:
    return IngestionService(settings, **adapters)
