"""Composition root of the auth service: the AE registry behind the ``auth.admit`` RPC."""

from __future__ import annotations

from typing import Any

import aio_pika
from starlette.routing import BaseRoute

from edge.auth import handlers
from edge.auth.registry import PsycopgAERegistry
from edge.auth.settings import AuthSettings
from edge.common.bus import RECONNECT_INTERVAL
from edge.common.rpc import RpcServer
from edge.common.runtime import Check, broker_check


class AuthService:
    name = "auth"

    def __init__(self, settings: AuthSettings, *, registry: Any = None) -> None:
        self.settings = settings
        self.registry = registry or PsycopgAERegistry(settings.database_url)
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

    async def stop(self) -> None:
        if self._rpc is not None:
            await self._rpc.stop()
        if self._connection is not None:
            await self._connection.close()

    def readiness_checks(self) -> dict[str, Check]:
        return {"database": self.registry.ping, "broker": broker_check(lambda: self._connection)}

    def routes(self) -> list[BaseRoute]:
        return []


def bootstrap(settings: AuthSettings, **adapters: Any) -> AuthService:
    return AuthService(settings, **adapters)
