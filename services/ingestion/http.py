"""Ingestion's HTTP API: the change feed, ``GET /api/changes?after=N&limit=M``.

Every catalog event in sequence order, as structured-mode CloudEvents JSON, so a subscriber that
was away replays what it missed and then continues from the bus. Bad parameters get a problem
response (RFC 9457) saying which and why.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.common.catalog import CatalogUnavailable, EventLog
from edge.common.events import to_structured
from edge.common.http import problem

SOURCE = "/edge/ingestion"
DEFAULT_LIMIT = 100


def _non_negative_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ValueError(f"{name} must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


def change_feed_routes(events: EventLog, *, max_limit: int) -> list[BaseRoute]:
    async def changes(request: Request) -> Response:
        try:
            after = _non_negative_int(request, "after", 0)
            limit = _non_negative_int(request, "limit", DEFAULT_LIMIT)
        except ValueError as exc:
            return problem(400, "Bad change-feed query", str(exc))
        if not 1 <= limit <= max_limit:
            return problem(400, "Bad change-feed query", f"limit must be 1..{max_limit}")
        try:
            entries = await events.changes(after, limit)
            oldest = await events.oldest_change() if after else None
        except CatalogUnavailable:
            return problem(503, "Catalog unavailable", "the catalog database does not answer")
        if oldest is not None and after < oldest - 1:
            # Events after `after` were pruned (EDGE_CHANGES_RETENTION): resuming would skip
            # them silently. The subscriber must resynchronise (e.g. by a query) first.
            return problem(
                410,
                "Changes no longer available",
                f"events after {after} were pruned; the feed starts at {oldest}",
            )
        return JSONResponse(
            {
                "events": [to_structured(e.event, SOURCE) for e in entries],
                "next": entries[-1].event.sequence if entries else after,
            }
        )

    return [Route("/api/changes", changes, methods=["GET"])]
