"""Composition root of the query service: the catalog behind the ``query.find`` RPC."""

from __future__ import annotations

import gc
from typing import Any

import aio_pika
from psycopg_pool import AsyncConnectionPool
from starlette.routing import BaseRoute

from edge.common.bus import RECONNECT_INTERVAL
from edge.common.catalog.pool import open_read_pool
from edge.common.rpc import RpcServer
from edge.common.runtime import Check, broker_check, pool_check
from edge.query.service import QueryHandler
from edge.query.settings import QuerySettings


class QueryService:
    name = "query"

    def __init__(self, settings: QuerySettings) -> None:
        self.settings = settings
        self.pool: AsyncConnectionPool[Any] | None = None
        self._connection: Any = None
        self._rpc: RpcServer | None = None

    async def start(self) -> None:
        s = self.settings
        self.pool = await open_read_pool(
            s.database_url,
            size=s.db_pool_size,
            statement_timeout_ms=s.find_statement_timeout_ms,
            name="edge-query",
        )
        self._connection = await aio_pika.connect_robust(
            s.amqp_url, timeout=10, reconnect_interval=RECONNECT_INTERVAL
        )
        handler = QueryHandler(
            self.pool,
            max_results=s.find_max_results,
            case_sensitive_names=s.find_case_sensitive_names,
        )
        self._rpc = RpcServer(self._connection, {"query.find": handler})
        await self._rpc.start()
        # What start-up allocated stays: keep it out of every later collection. Full
        # collections over it cost ~60 ms every ~10 pages (docs/benchmarks.md, query p95s).
        gc.freeze()

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
        }

    def routes(self) -> list[BaseRoute]:
        return []


def bootstrap(settings: QuerySettings, **adapters: Any) -> QueryService:
    return QueryService(settings, **adapters)
