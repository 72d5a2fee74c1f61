"""HTTP routes of the storage service beside health and metrics: the operator's scrub trigger."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.storage.scrub import Scrubber


def routes(scrubber: Callable[[], Scrubber | None]) -> list[BaseRoute]:
    """``POST /api/scrub``: one scrub pass now (after any pass in progress); its counts as JSON,
    503 when the pass ended early on an infrastructure failure."""

    async def scrub(_: Request) -> Response:
        current = scrubber()
        if current is None:
            return JSONResponse({"error": "storage service not started"}, status_code=503)
        report = await current.run_pass()
        return JSONResponse(report.as_dict(), status_code=200 if report.complete else 503)

    return [Route("/api/scrub", scrub, methods=["POST"])]
