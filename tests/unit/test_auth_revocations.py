"""Auth's side of revocation with fakes: the announcer retries until the bus takes the event,
the admin route revokes and audits, and the map auth serves."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette

from edge.auth.revocations import Announcer, map_window, revocations_reply, revoke_routes
from edge.common.events import Event, TokensRevoked

EVENT = TokensRevoked(login="alice", not_before=1000, reason="lockout")


class FlakyBus:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[tuple[Event, bool]] = []

    async def publish(self, event: Event, *, mandatory: bool = True, **_: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        self.published.append((event, mandatory))


async def test_the_announcer_retries_and_publishes_non_mandatory() -> None:
    bus = FlakyBus(failures=2)
    announcer = Announcer(bus, delays=(0.01, 0.01, 0.01))  # type: ignore[arg-type]
    announcer(EVENT)
    await announcer.drain()
    assert bus.published == [(EVENT, False)]


async def test_the_announcer_gives_up_after_its_retries() -> None:
    bus = FlakyBus(failures=10)
    announcer = Announcer(bus, delays=(0.01,))  # type: ignore[arg-type]
    announcer(EVENT)
    await announcer.drain()
    assert bus.published == [] and bus.failures == 8


class Users:
    def __init__(self) -> None:
        self.revoked: list[str] = []

    async def revoke(self, username: str) -> bool:
        if username != "alice":
            return False
        self.revoked.append(username)
        return True

    async def revocations(self, window: float) -> dict[str, int]:
        return {"alice": 1000} if window > 0 else {}


class Audit:
    def __init__(self) -> None:
        self.changes: list[tuple[Any, ...]] = []

    def login(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover
        raise AssertionError("no login here")

    def user_changed(self, actor: str, login: str, change: str, **kwargs: Any) -> None:
        self.changes.append((actor, login, change))


async def test_the_revoke_route_revokes_audits_and_answers_404_for_nobody() -> None:
    users, audit = Users(), Audit()
    app = Starlette(routes=revoke_routes(users, audit))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://auth") as http:
        ok = await http.post("/api/auth/users/alice/revoke")
        missing = await http.post("/api/auth/users/bob/revoke")
        wrong_method = await http.get("/api/auth/users/alice/revoke")
    assert (ok.status_code, ok.json()) == (200, {"username": "alice", "revoked": True})
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert wrong_method.status_code == 405
    assert users.revoked == ["alice"]
    assert audit.changes == [("anonymous", "alice", "revoked")]


async def test_the_map_reaches_back_a_token_lifetime_and_a_margin() -> None:
    assert map_window(600) > 600
    assert await revocations_reply(Users(), map_window(600)) == {"revocations": {"alice": 1000}}
