"""The ``query.find`` RPC: one page of matches per call (C-FIND streams them page by page,
QIDO-RS asks for its limit and offset). Bad requests are answered, not raised: the reply carries
the C-FIND status and the error comment, which the caller maps to DICOM or HTTP."""

from __future__ import annotations

import logging
import time
from base64 import b64encode
from typing import Any

import psycopg
from prometheus_client import Histogram
from psycopg_pool import AsyncConnectionPool

from edge.common.qidojson import render
from edge.query.engine import FindRequest, Wire, find
from edge.query.matching import UNABLE_TO_PROCESS, QueryError

log = logging.getLogger(__name__)


def _wire(asked: Any) -> Wire | None:
    """``render.cfind``: the presentation context's transfer syntax and the requester's
    character sets; the identifiers then come back encoded (base64 strings), each match the
    encoder does not cover as DICOM JSON."""
    if not isinstance(asked, dict):
        return None
    syntax = asked.get("transfer_syntax")
    charsets = asked.get("charsets") or []
    if not isinstance(syntax, str) or not isinstance(charsets, list):
        raise QueryError(UNABLE_TO_PROCESS, "bad render.cfind")
    return Wire(syntax, tuple(str(c) for c in charsets))


OUT_OF_RESOURCES = 0xA700

FIND_SECONDS = Histogram(
    "edge_query_find_seconds",
    "Server time of one query.find page (plan, SQL, results), by level and outcome",
    ["level", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)


class QueryHandler:
    def __init__(
        self, pool: AsyncConnectionPool[Any], *, max_results: int, case_sensitive_names: bool
    ) -> None:
        self.pool = pool
        self.max_results = max_results
        self.case_sensitive_names = case_sensitive_names

    async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        reply = await self._find(payload)
        outcome = "error" if "error" in reply else "ok"
        level = str(payload.get("level") or "")
        if level not in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
            level = "other"  # a label never carries what a peer typed
        FIND_SECONDS.labels(level, outcome).observe(time.monotonic() - started)
        return reply

    async def _find(self, payload: dict[str, Any]) -> dict[str, Any]:
        rendering = payload.get("render")
        if not isinstance(rendering, dict):
            rendering = {}
        try:
            request = FindRequest.from_payload(payload)
            if request.limit < 1:
                raise QueryError(0xC000, "limit must be at least 1")
            # The cap bounds one response: a C-FIND's pages together ("returned" so far); a
            # QIDO request's own limit (PS3.18 maxResults is per response, offset pages on).
            budget = self.max_results - int(payload.get("returned") or 0)
            if budget <= 0:
                return {"matches": [], "next": None, "capped": True}
            limited = FindRequest(**{**request.__dict__, "limit": min(request.limit, budget)})
            wire = _wire(rendering.get("cfind"))
            async with self.pool.connection() as conn:
                page = await find(
                    conn, limited, case_sensitive_names=self.case_sensitive_names, wire=wire
                )
        except QueryError as exc:
            return {"error": {"status": exc.status, "comment": exc.comment}}
        except psycopg.errors.QueryCanceled:
            return {"error": {"status": OUT_OF_RESOURCES, "comment": "query took too long"}}
        except psycopg.OperationalError as exc:
            log.warning("query.find: catalog unavailable: %s", type(exc).__name__)
            return {"error": {"status": OUT_OF_RESOURCES, "comment": "catalog unavailable"}}
        except psycopg.Error as exc:  # e.g. stored data a cast cannot take: answer, never hang
            log.error("query.find failed: %s", type(exc).__name__)
            return {"error": {"status": UNABLE_TO_PROCESS, "comment": "query failed"}}
        capped = page.next_after is not None and len(page.matches) >= budget
        reply: dict[str, Any] = {"next": None if capped else page.next_after, "capped": capped}
        service = rendering.get("qido")
        if wire is not None:  # C-FIND: each identifier encoded, base64 in the JSON reply
            reply["identifiers"] = [
                b64encode(m).decode("ascii") if isinstance(m, bytes) else m for m in page.matches
            ]
        elif isinstance(service, str):  # QIDO-RS: the answer's body, rendered here
            reply["body"] = render(page.matches, request.level.name, service).decode()
            reply["count"] = len(page.matches)
        else:
            reply["matches"] = page.matches
        return reply
