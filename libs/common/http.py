"""What every service's HTTP API shares: the problem response for a request it will not serve."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse, Response

PROBLEM_JSON = "application/problem+json"


def problem(
    status: int, title: str, detail: str, *, headers: Mapping[str, str] | None = None
) -> Response:
    """An RFC 9457 problem response: ``title`` names the kind of problem, ``detail`` says what
    was wrong with this request."""
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )
