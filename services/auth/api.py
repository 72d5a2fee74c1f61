"""Auth's HTTP routes: the OAuth2 token endpoint (RFC 6749) and the JWKS (RFC 7517)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.auth.tokens import Issued, TokenError

log = logging.getLogger(__name__)

# A form with a user name and a password needs far less; bigger bodies are refused unread.
MAX_FORM_BYTES = 16 * 1024
# RFC 6749 5.1: token responses must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

Grant = Callable[[dict[str, list[str]], str | None, str | None], Awaitable[Issued]]
Jwks = Callable[[], Awaitable[dict[str, Any]]]


def _error(exc: TokenError) -> Response:
    headers = dict(NO_STORE)
    if exc.status == 401:
        # RFC 6749 5.2: invalid_client may answer 401, then with a challenge for the scheme.
        headers["WWW-Authenticate"] = 'Basic realm="dicom-edge"'
    return JSONResponse(
        {"error": exc.error, "error_description": exc.description},
        status_code=exc.status,
        headers=headers,
    )


async def _form(request: Request) -> dict[str, list[str]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise TokenError("invalid_request", "the body must be application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise TokenError("invalid_request", "request body too large")
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TokenError("invalid_request", "the body is not a UTF-8 form") from exc


def routes(grant: Grant, jwks: Jwks) -> list[BaseRoute]:
    async def token(request: Request) -> Response:
        try:
            form = await _form(request)
            address = request.client.host if request.client else None
            issued = await grant(form, request.headers.get("authorization"), address)
        except TokenError as exc:
            return _error(exc)
        return JSONResponse(issued.to_json(), headers=NO_STORE)

    async def keys(_: Request) -> Response:
        return JSONResponse(
            await jwks(),
            media_type="application/jwk-set+json",
            headers={"Cache-Control": "no-cache"},
        )

    return [
        Route("/api/auth/token", token, methods=["POST"]),
        Route("/api/auth/jwks", keys, methods=["GET"]),
    ]
