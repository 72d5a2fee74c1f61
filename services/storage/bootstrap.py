"""Composition root of the storage service: owns the bucket and, later, scrub and retention."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.routing import BaseRoute

from edge.common.runtime import Check, store_check
from edge.common.store import MinioObjectStore, ObjectStore
from edge.storage.settings import StorageSettings


class StorageService:
    name = "storage"

    def __init__(self, settings: StorageSettings, *, store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.store = store

    async def start(self) -> None:
        if self.store is None:
            self.store = MinioObjectStore.from_settings(self.settings)
        # The bucket is created here (and by `edge up --dev`), so no other service needs rights
        # to create buckets in a deployment.
        await asyncio.to_thread(self.store.ensure_bucket)

    async def stop(self) -> None:
        return None

    def readiness_checks(self) -> dict[str, Check]:
        return {"s3": store_check(lambda: self.store)}

    def routes(self) -> list[BaseRoute]:
        return []


def bootstrap(settings: StorageSettings, **adapters: Any) -> StorageService:
    return StorageService(settings, **adapters)
