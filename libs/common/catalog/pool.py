"""Connection pools for services that only read the catalog (query, retrieval)."""

from __future__ import annotations

from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool


async def _json_by_orjson(conn: AsyncConnection[Any]) -> None:
    # Headers are read as jsonb: thousands of them in a large answer, decoded ~2x faster.
    set_json_loads(orjson.loads, conn)


async def open_read_pool(
    database_url: str, *, size: int, statement_timeout_ms: int, name: str
) -> AsyncConnectionPool[Any]:
    """An open pool of autocommit connections: catalog reads only, each its own statement,
    and a runaway one cut off by the server after ``statement_timeout_ms``; json and jsonb
    values decoded by orjson."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=size,
        kwargs={
            "autocommit": True,
            "options": f"-c statement_timeout={statement_timeout_ms} -c jit=off",
        },
        name=name,
        configure=_json_by_orjson,
        open=False,
    )
    await pool.open(wait=True, timeout=10)
    return pool
