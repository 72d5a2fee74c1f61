"""Auth's side of the audit trail: the ``auth.audit`` consumer that appends every ``audit.*``
event to the chain, the recorder for auth's own events (logins, user changes), and
``GET /api/audit``.

The consumer takes one message at a time (prefetch 1): the chain is a sequence, and a message
held for a retry (database away) must not be overtaken by the next one. Events wait in the
durable quorum queue while auth is down; a redelivered event is recognised by its id and
acknowledged without a second row.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from starlette.routing import BaseRoute

from edge.auth.audit_http import audit_routes
from edge.auth.auditlog import PsycopgAuditLog
from edge.common.audit import Auditor
from edge.common.bus import AUTH_AUDIT, AioPikaBus, BadMessage, Consumer, TransientError
from edge.common.events import AuditEvent, Event

log = logging.getLogger(__name__)

WRITER_ROLE = "edge_audit_writer"  # created by migration 0009_audit.sql


def writer_url(database_url: str, audit_database_url: str | None = None) -> str:
    """Where the trail is written: ``EDGE_AUDIT_DATABASE_URL``, else the catalog's URL with the
    append-only role as its user (trust authentication on a developer machine)."""
    return audit_database_url or make_conninfo(database_url, user=WRITER_ROLE)


async def record(trail: PsycopgAuditLog, event: Event) -> None:
    """The handler of ``auth.audit``: append an audit event (idempotent on its id)."""
    if not isinstance(event, AuditEvent):
        raise BadMessage(f"{event.name} is not an audit event")
    try:
        seq = await trail.append(event)
    except psycopg.OperationalError as exc:  # the database is away: hold the message, retry
        raise TransientError(f"audit trail unavailable: {type(exc).__name__}") from exc
    if seq is None:
        log.info("audit event %s already recorded", event.id)


class AuditTrail:
    """Started and stopped by the auth service; ``auditor`` records auth's own events."""

    def __init__(
        self,
        *,
        amqp_url: str,
        hash_key: Any,
        trail: PsycopgAuditLog,
        bus: AioPikaBus | None = None,
    ) -> None:
        self.amqp_url = amqp_url
        self.trail = trail
        self.bus = bus
        self.auditor = Auditor(bus, source="edge-auth", hash_key=hash_key)
        self._consumer: Consumer | None = None

    async def start(self) -> None:
        if self.bus is None:
            self.bus = await AioPikaBus.connect(self.amqp_url, "/edge/auth")
        self.auditor.bus = self.bus
        await self.auditor.start()

        async def handle(event: Event) -> None:
            await record(self.trail, event)

        self._consumer = await self.bus.consume(AUTH_AUDIT, handle, prefetch=1)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        await self.auditor.stop()
        await self.trail.close()
        if self.bus is not None:
            await self.bus.close()

    def routes(self) -> list[BaseRoute]:
        return audit_routes(self.trail)
