"""The ``retrieval.locate`` RPC: one page of instances per call. Bad requests are answered, not
raised, as ``query.find`` does: the reply carries a DIMSE status and a comment, which the caller
maps to its protocol (C-MOVE/C-GET failure status, HTTP 400/503)."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from prometheus_client import Histogram
from psycopg_pool import AsyncConnectionPool

from edge.query.matching import UNABLE_TO_PROCESS, QueryError
from edge.retrieval.locate import locate, parse

log = logging.getLogger(__name__)

OUT_OF_RESOURCES = 0xA700

LOCATE_SECONDS = Histogram(
    "edge_retrieval_locate_seconds",
    "Server time of one retrieval.locate page, by outcome",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)


def error(status: int, comment: str) -> dict[str, Any]:
    return {"error": {"status": status, "comment": comment[:64]}}


class LocateHandler:
    def __init__(
        self, pool: AsyncConnectionPool[Any], *, default_limit: int, max_limit: int
    ) -> None:
        self.pool = pool
        self.default_limit = default_limit
        self.max_limit = max_limit

    async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        reply = await self._locate(payload)
        LOCATE_SECONDS.labels("error" if "error" in reply else "ok").observe(
            time.monotonic() - started
        )
        return reply

    async def _locate(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            request = parse(payload, default_limit=self.default_limit, max_limit=self.max_limit)
            async with self.pool.connection() as conn:
                instances, after = await locate(conn, request)
        except QueryError as exc:
            return error(exc.status, exc.comment)
        except psycopg.errors.QueryCanceled:
            return error(OUT_OF_RESOURCES, "locate took too long")
        except psycopg.OperationalError as exc:
            log.warning("retrieval.locate: catalog unavailable: %s", type(exc).__name__)
            return error(OUT_OF_RESOURCES, "catalog unavailable")
        except psycopg.Error as exc:
            log.error("retrieval.locate failed: %s", type(exc).__name__)
            return error(UNABLE_TO_PROCESS, "locate failed")
        return {"instances": instances, "next": after}
