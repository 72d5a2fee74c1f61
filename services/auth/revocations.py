"""Auth's side of token revocation: announce each revocation the user store commits
(``auth.tokens_revoked``), serve the recent ones to verifiers (RPC ``auth.revocations``), and
the admin route that revokes a user's tokens outright.

Why verifiers load the map by RPC and not over HTTP like the JWKS: the map names accounts that
were locked or revoked lately, which is nothing to publish on an open path, while the broker
is reachable only with its credentials; and the load follows the feed's (re)connection on the
same connection, so a verifier that can hear events can always ask.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import psycopg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.auth.hooks import AuditSink, _audit_admin_change
from edge.common.bus import EventBus
from edge.common.events import TokensRevoked
from edge.common.http import problem

log = logging.getLogger(__name__)

# How far back the map a verifier loads reaches, beyond the tokens' lifetime: what verifiers
# allow for clock skew, and some margin.
MAP_MARGIN = 60.0


class RevocationReader(Protocol):
    async def revocations(self, window: float) -> dict[str, int]: ...


class Revoker(Protocol):
    async def revoke(self, username: str) -> bool: ...


def map_window(token_lifetime: float) -> float:
    """Revocations older than this concern expired tokens only."""
    return token_lifetime + MAP_MARGIN


async def revocations_reply(store: RevocationReader, window: float) -> dict[str, Any]:
    """``auth.revocations {}`` -> ``{"revocations": {user: tokens not before (epoch s)}}``."""
    return {"revocations": await store.revocations(window)}


class Announcer:
    """The user store's ``on_revoked``: publishes each revocation on ``edge.events`` in the
    background (the change is committed; the answer to the admin or the login does not wait),
    retrying for a while. Not ``mandatory``: no verifier running is no error, each loads the
    map when it starts. One that was running and missed the event loads it on its next
    reconnection; until then the token's own expiry bounds the harm."""

    def __init__(self, bus: EventBus | None = None, delays: tuple[float, ...] = (0.5, 1, 2, 4)):
        self.bus = bus
        self._delays = delays
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, event: TokensRevoked) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, event: TokensRevoked) -> None:
        for delay in (*self._delays, None):
            if self.bus is not None:
                try:
                    await self.bus.publish(event, mandatory=False)
                    return
                except Exception as exc:  # broker away: try again shortly
                    log.warning("auth.tokens_revoked not published: %s", type(exc).__name__)
            if delay is None:
                break
            await asyncio.sleep(delay)
        log.error(
            "tokens of %s revoked but not announced; verifiers learn it when they reconnect",
            event.login,
        )

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for announcements still in flight; called before the bus closes."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


def revoke_routes(users: Revoker, audit: AuditSink | None) -> list[BaseRoute]:
    """``POST /api/auth/users/{name}/revoke`` (admin: no policy rule names it): the user's
    tokens issued until now stop working in every service within seconds. Audited as a user
    change (Security Alert, User Security Attributes Changed)."""

    async def revoke(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            found = await users.revoke(name)
        except psycopg.OperationalError:
            return problem(503, "User database unavailable", "the revocation was not recorded")
        if not found:
            return problem(404, "No such user", f"no user {name!r}")
        principal = getattr(request.state, "principal", None)
        actor = principal.subject if principal is not None else "anonymous"
        address = request.client.host if request.client else None
        _audit_admin_change(audit, actor, name, "revoked", address=address)
        return JSONResponse({"username": name, "revoked": True})

    return [Route("/api/auth/users/{name}/revoke", revoke, methods=["POST"])]
