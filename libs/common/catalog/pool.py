"""Connection pools for services that only read the catalog (query, retrieval)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool


async def open_read_pool(
    database_url: str, *, size: int, statement_timeout_ms: int, name: str
) -> AsyncConnectionPool[Any]:
    """An open pool of autocommit connections: catalog reads only, each its own statement,
    and a runaway one cut off by the server after ``statement_timeout_ms``."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "options": f"-c statement_timeout={statement_timeout_ms}"},
        name=name,
        open=False,
    )
    await pool.open(wait=True, timeout=10)
    return pool
