"""Composition root of the retrieval service: the catalog and S3 behind ``retrieval.locate``
and ``retrieval.move``."""

from __future__ import annotations

from typing import Any

import aio_pika
from psycopg_pool import AsyncConnectionPool
from starlette.routing import BaseRoute

from edge.auth.registry import PsycopgAERegistry
from edge.common.bus import RECONNECT_INTERVAL
from edge.common.catalog.pool import open_read_pool
from edge.common.rpc import RpcServer
from edge.common.runtime import Check, broker_check, pool_check, store_check
from edge.common.store import MinioObjectStore, ObjectStore
from edge.retrieval.move import MoveHandler
from edge.retrieval.service import LocateHandler
from edge.retrieval.settings import RetrievalSettings


class RetrievalService:
    name = "retrieval"

    def __init__(self, settings: RetrievalSettings, *, store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self.pool: AsyncConnectionPool[Any] | None = None
        self._connection: Any = None
        self._rpc: RpcServer | None = None

    async def start(self) -> None:
        s = self.settings
        if self.store is None:
            self.store = MinioObjectStore.from_settings(s)
        self.pool = await open_read_pool(
            s.database_url,
            size=s.db_pool_size,
            statement_timeout_ms=s.locate_statement_timeout_ms,
            name="edge-retrieval",
        )
        self._connection = await aio_pika.connect_robust(
            s.amqp_url, timeout=10, reconnect_interval=RECONNECT_INTERVAL
        )
        locate = LocateHandler(
            self.pool, default_limit=s.locate_limit, max_limit=s.locate_max_limit
        )
        if s.spool_dir is not None:
            s.spool_dir.mkdir(parents=True, exist_ok=True)
        # The AE registry is auth's table; retrieval only reads a destination from it.
        registry = PsycopgAERegistry(s.database_url)
        move = MoveHandler(self.pool, registry.get, self.store, s)
        self._rpc = RpcServer(
            self._connection,
            {"retrieval.locate": locate},
            streams={"retrieval.move": move},
            max_streams=s.max_moves,
        )
        await self._rpc.start()

    async def stop(self) -> None:
        if self._rpc is not None:
            await self._rpc.stop()
        if self._connection is not None:
            await self._connection.close()
        if self.pool is not None:
            await self.pool.close()

    def readiness_checks(self) -> dict[str, Check]:
        return {
            "database": pool_check(lambda: self.pool),
            "broker": broker_check(lambda: self._connection),
            "s3": store_check(lambda: self.store),
        }

    def routes(self) -> list[BaseRoute]:
        return []


def bootstrap(settings: RetrievalSettings, **adapters: Any) -> RetrievalService:
    return RetrievalService(settings, **adapters)
