"""Composition root of the storage service: owns the bucket and scrubs it for objects that were
stored but never announced (later also retention and deletes)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.routing import BaseRoute

from edge.common.bus import AioPikaBus
from edge.common.catalog import Catalog, PsycopgCatalog
from edge.common.runtime import Check, broker_check, store_check
from edge.common.store import MinioObjectStore, ObjectStore
from edge.storage import api
from edge.storage.scrub import Pacer, Scrubber, scrub_periodically
from edge.storage.settings import StorageSettings


class StorageService:
    name = "storage"

    def __init__(
        self,
        settings: StorageSettings,
        *,
        store: ObjectStore | None = None,
        catalog: Catalog | None = None,
        bus: AioPikaBus | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.bus = bus
        self.scrubber: Scrubber | None = None
        self._stopping = asyncio.Event()
        self._scrub_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        if self.store is None:
            self.store = MinioObjectStore.from_settings(s)
        # The bucket is created here (and by `edge up --dev`), so no other service needs rights
        # to create buckets in a deployment.
        await asyncio.to_thread(self.store.ensure_bucket)
        if self.catalog is None:
            # One pass at a time asks the catalog, one query per page: two connections suffice.
            self.catalog = await PsycopgCatalog.open(s.database_url, max_size=2)
        if self.bus is None:
            self.bus = await AioPikaBus.connect(s.amqp_url, "/edge/storage")
        self.scrubber = Scrubber(
            self.store,
            self.catalog,
            self.bus,
            grace=s.scrub_grace,
            batch=s.scrub_batch,
            pacer=Pacer(s.scrub_rate),
        )
        if s.scrub_interval > 0:
            self._scrub_task = asyncio.create_task(
                scrub_periodically(self.scrubber, s.scrub_interval, self._stopping),
                name="storage-scrub",
            )

    async def stop(self) -> None:
        """End the scrub loop (a pass in progress is abandoned: the next one redoes its work,
        and every announcement it made was confirmed or will be made again), then close."""
        self._stopping.set()
        if self._scrub_task is not None:
            self._scrub_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scrub_task
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
        return api.routes(lambda: self.scrubber)


def bootstrap(settings: StorageSettings, **adapters: Any) -> StorageService:
    return StorageService(settings, **adapters)
