"""Token revocation as every service's token verifier sees it: per user, the time before which
its access tokens are void, kept current from auth's ``auth.tokens_revoked`` events.

Auth records a user's "tokens not before" time when the user is locked, removed, given a new
password or role, or revoked outright (``edge user revoke``, ``POST /api/auth/users/NAME/revoke``)
and announces it on ``edge.events``. :class:`Revocations` is the decision: a token whose ``iat``
is earlier than its subject's time is revoked. :class:`RevocationFeed` keeps the map: it binds an
exclusive, auto-delete, server-named queue to ``auth.tokens_revoked`` and, once the queue is
there, loads the current map from auth (RPC ``auth.revocations``), on every (re)connection; an
event that went by while the feed was away is in the map it loads. Times only move forward, so
an event and a load can arrive in either order.

Fail closed: until the map is loaded on the current connection (a service starting before auth,
the broker gone), :meth:`Revocations.ready` is False and the verifier answers "authentication
unavailable" (HTTP 503, a DICOM association rejected transiently) rather than accept a token
that may have been revoked in the meantime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from edge.common.bus import EXCHANGE
from edge.common.events import TokensRevoked, UndecodableMessage, from_parts
from edge.common.rpc import RpcClient

log = logging.getLogger(__name__)

REVOCATIONS_RPC = "auth.revocations"

# The current map: user -> epoch seconds before which that user's tokens are void.
Loader = Callable[[], Awaitable[Mapping[str, int]]]


class Revocations:
    """The map from user to "tokens not before" (epoch seconds), and the decision."""

    def __init__(self) -> None:
        self._not_before: dict[str, int] = {}
        self._ready = False

    @property
    def ready(self) -> bool:
        """True while the map is known to be complete (loaded on the live connection)."""
        return self._ready

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def revoked(self, subject: str, issued_at: int) -> bool:
        """True when a token of ``subject`` issued at ``issued_at`` (its ``iat``) is void."""
        not_before = self._not_before.get(subject)
        return not_before is not None and issued_at < not_before

    def note(self, username: str, not_before: int) -> None:
        """One revocation; an older time than the one known changes nothing."""
        if not_before > self._not_before.get(username, -1):
            self._not_before[username] = not_before

    def merge(self, entries: Mapping[str, int]) -> None:
        for username, not_before in entries.items():
            self.note(str(username), int(not_before))

    def __len__(self) -> int:
        return len(self._not_before)


def revocations_from_json(reply: Mapping[str, Any]) -> dict[str, int]:
    """The map of an ``auth.revocations`` reply: ``{"revocations": {"alice": 1764370000}}``."""
    entries = reply.get("revocations")
    if not isinstance(entries, dict):
        raise ValueError("auth.revocations reply holds no map")
    return {str(user): int(not_before) for user, not_before in entries.items()}


class RevocationFeed:
    """Keeps ``revocations`` current while started: see the module docstring.

    ``load`` None asks auth over the feed's own connection (RPC ``auth.revocations``); auth
    itself passes a reader of its own table. The feed owns its connection: aio-pika's robust
    connection restores a queue under a name it made up itself (``amq_<uuid>``), while this
    queue is named by the broker, lives only as long as the connection, and after any
    reconnection must be followed by a fresh load: so the reconnecting is done here.
    """

    def __init__(
        self,
        amqp_url: str,
        revocations: Revocations,
        *,
        load: Loader | None = None,
        rpc_timeout: float = 5.0,
        retry: float = 1.0,
        max_retry: float = 10.0,
    ) -> None:
        self.amqp_url = amqp_url
        self.revocations = revocations
        self._load = load
        self._rpc_timeout = rpc_timeout
        self._retry = retry
        self._max_retry = max_retry
        self._task: asyncio.Task[None] | None = None
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self.loads = 0  # completed loads, for tests and logs
        self.loaded = asyncio.Event()  # set while the map is loaded on the live connection

    async def start(self) -> None:
        """Start keeping the map; returns at once (the first load may wait for auth)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="revocation-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()
        self.revocations.set_ready(False)
        self.loaded.clear()

    async def check(self) -> None:
        """Readiness (``/readyz``): the map has been loaded once. Not again after a lost
        connection: meanwhile tokens are refused (503), but the service's other work (DICOM
        over a cached admission) goes on, so it stays in its load balancer."""
        if self.loads == 0:
            raise ConnectionError("token revocations not loaded yet")

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 2.0)

    async def _run(self) -> None:
        delay = self._retry
        while True:
            lost = asyncio.Event()
            try:
                await self._connect(lost)
                await self._load_until_done(lost)
                delay = self._retry
                await lost.wait()
                log.warning("token revocation feed: connection lost; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker unreachable or refusing: try again
                log.warning("token revocation feed: %s; retry in %.0f s", type(exc).__name__, delay)
            self.revocations.set_ready(False)
            self.loaded.clear()
            await self._close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry)

    async def _connect(self, lost: asyncio.Event) -> None:
        connection = self._connection = await aio_pika.connect(self.amqp_url, timeout=10)
        connection.close_callbacks.add(lambda *_: lost.set())
        channel = await connection.channel()
        channel.close_callbacks.add(lambda *_: lost.set())
        # Per process and per connection: named by the broker, gone with the connection, and
        # nothing in it worth keeping (the load that follows covers whatever it missed).
        queue = await channel.declare_queue(
            "",
            durable=False,
            exclusive=True,
            auto_delete=True,
            arguments={"x-queue-type": "classic"},
        )
        await queue.bind(EXCHANGE, routing_key=TokensRevoked.name)
        await queue.consume(self._on_message, no_ack=True)

    async def _load_until_done(self, lost: asyncio.Event) -> None:
        """Load the map (the queue already collects what happens meanwhile); retry until auth
        answers or the connection goes."""
        load = self._load or await self._rpc_loader()
        delay = self._retry
        while not lost.is_set():
            try:
                self.revocations.merge(await load())
            except Exception as exc:  # auth not up yet, or busy: keep refusing, try again
                # A fixed short interval: auth starting at the same time is the usual cause.
                log.warning(
                    "token revocations not loaded (%s); retry in %.0f s", type(exc).__name__, delay
                )
                await asyncio.sleep(delay)
                continue
            self.loads += 1
            self.revocations.set_ready(True)
            self.loaded.set()
            log.info("token revocations loaded: %d user(s)", len(self.revocations))
            return

    async def _rpc_loader(self) -> Loader:
        assert self._connection is not None
        rpc = await RpcClient(self._connection, timeout=self._rpc_timeout).start()

        async def load() -> Mapping[str, int]:
            return revocations_from_json(await rpc.call(REVOCATIONS_RPC, {}))

        return load

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = from_parts(dict(message.headers or {}), message.body)
        except UndecodableMessage as exc:
            log.warning("ignoring a message on the revocation feed: %s", exc)
            return
        if isinstance(event, TokensRevoked):
            self.revocations.note(event.login, event.not_before)
            log.info("tokens of %s revoked (%s)", event.login, event.reason)
