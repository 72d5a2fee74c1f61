"""``GET /api/audit`` on auth's HTTP port: the audit trail, filtered and paged, as JSON or as DICOM
audit message XML (``?format=xml`` or ``Accept: application/xml``).

Who may read it (admin and him) is decided by the HTTP policy every service runs
(``edge.common.authn``: the ``audit`` permission for ``GET /api/audit``), not here.

Parameters: ``since`` / ``until`` (ISO 8601 date-times, ``until`` exclusive), ``type`` (routing
key ``audit.query`` or EventID code ``110112``), ``user`` (an active participant's UserID: AE
title or login), ``study`` (Study Instance UID), ``outcome`` (0, 4, 8, 12), ``after`` (the
``seq`` to continue from: the previous page's ``next``), ``limit`` (1-1000, default 100).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.auth import auditxml
from edge.auth.auditlog import AuditQuery
from edge.common.http import problem

MAX_LIMIT = 1000
XML = "application/xml"


class AuditReader(Protocol):
    async def search(self, query: AuditQuery) -> list[dict[str, Any]]: ...


class BadParameter(ValueError):
    pass


def _time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadParameter(f"{name} must be an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise BadParameter(f"{name} needs a UTC offset (…Z or +hh:mm)")
    return parsed


def _int(name: str, value: str | None, low: int, high: int) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise BadParameter(f"{name} must be an integer from {low} to {high}")
    return int(value)


def parse_query(params: dict[str, str]) -> AuditQuery:
    """An :class:`AuditQuery` from the query parameters; raises :class:`BadParameter`."""
    outcome = _int("outcome", params.get("outcome"), 0, 12)
    if outcome is not None and outcome not in (0, 4, 8, 12):
        raise BadParameter("outcome must be 0, 4, 8 or 12")
    return AuditQuery(
        since=_time("since", params.get("since")),
        until=_time("until", params.get("until")),
        event_type=params.get("type") or None,
        participant=params.get("user") or None,
        study=params.get("study") or None,
        outcome=outcome,
        after=_int("after", params.get("after"), 0, 2**62) or 0,
        limit=_int("limit", params.get("limit"), 1, MAX_LIMIT) or 100,
    )


def wants_xml(request: Request) -> bool:
    requested = request.query_params.get("format")
    if requested is not None:
        return requested.lower() == "xml"
    accept = request.headers.get("accept", "")
    return XML in accept or "text/xml" in accept


def audit_routes(reader: AuditReader) -> list[BaseRoute]:
    async def endpoint(request: Request) -> Response:
        try:
            query = parse_query(dict(request.query_params))
        except BadParameter as exc:
            return problem(400, "Bad audit query", str(exc))
        try:
            rows = await reader.search(query)
        except Exception as exc:  # the database does not answer: say so, never an empty page
            return problem(503, "Audit trail unavailable", type(exc).__name__)
        following = rows[-1]["seq"] if len(rows) == query.limit else None
        if wants_xml(request):
            return Response(
                auditxml.render(row["event"] for row in rows),
                media_type=XML,
                headers={"X-Next": str(following)} if following is not None else None,
            )
        return JSONResponse({"events": rows, "next": following})

    return [Route("/api/audit", endpoint, methods=["GET"])]
