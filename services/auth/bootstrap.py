"""Composition root of the auth service: the AE registry behind the ``auth.admit`` RPC."""

from __future__ import annotations

from typing import Any

import aio_pika
from starlette.routing import BaseRoute

from edge.auth import handlers
from edge.auth.audit_trail import AuditTrail, writer_url
from edge.auth.auditlog import PsycopgAuditLog
from edge.auth.registry import PsycopgAERegistry
from edge.auth.settings import AuthSettings
from edge.common.bus import RECONNECT_INTERVAL
from edge.common.rpc import RpcServer
from edge.common.runtime import Check, broker_check


class AuthService:
    name = "auth"

    def __init__(
        self, settings: AuthSettings, *, registry: Any = None, audit_log: Any = None
    ) -> None:
        self.settings = settings
        self.registry = registry or PsycopgAERegistry(settings.database_url)
        # The audit trail: auth.audit consumed into the hash chain as the append-only role, and
        # the recorder of auth's own events (self.audit.auditor).
        self.audit = AuditTrail(
            amqp_url=settings.amqp_url,
            hash_key=settings.audit_hash_key,
            trail=audit_log
            or PsycopgAuditLog(writer_url(settings.database_url, settings.audit_database_url)),
        )
        self.auditor = self.audit.auditor
        self._connection: Any = None
        self._rpc: RpcServer | None = None

    async def _admit(self, request: dict[str, Any]) -> dict[str, Any]:
        decision = await handlers.admit(
            self.registry, str(request["calling_ae"]), str(request["address"])
        )
        return decision.to_json()

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self.settings.amqp_url, timeout=10, reconnect_interval=RECONNECT_INTERVAL
        )
        # One table: which operation goes to which handler.
        self._rpc = RpcServer(self._connection, {"auth.admit": self._admit})
        await self._rpc.start()
        await self.audit.start()

    async def stop(self) -> None:
        await self.audit.stop()
        if self._rpc is not None:
            await self._rpc.stop()
        if self._connection is not None:
            await self._connection.close()

    def readiness_checks(self) -> dict[str, Check]:
        return {
            "database": self.registry.ping,
            "broker": broker_check(lambda: self._connection),
            "audit trail": self.audit.trail.ping,
        }

    def routes(self) -> list[BaseRoute]:
        return self.audit.routes()


def bootstrap(settings: AuthSettings, **adapters: Any) -> AuthService:
    return AuthService(settings, **adapters)
