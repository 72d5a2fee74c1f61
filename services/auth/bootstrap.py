"""Composition root of the auth service: the AE registry behind the ``auth.admit`` RPC; users,
signing keys and the OAuth2 token endpoint behind ``/api/auth``."""

from __future__ import annotations

from typing import Any

import aio_pika
import psycopg
from starlette.routing import BaseRoute

from edge.auth import api, handlers, revocations, tokens
from edge.auth.audit_trail import AuditTrail, writer_url
from edge.auth.auditlog import PsycopgAuditLog
from edge.auth.keys import KeyRing, PsycopgKeyStore
from edge.auth.passwords import Hashing
from edge.auth.registry import PsycopgAERegistry
from edge.auth.settings import AuthSettings
from edge.auth.users import LockoutPolicy, PsycopgUserStore
from edge.common.admission import Identified
from edge.common.authn import KeySource
from edge.common.bus import RECONNECT_INTERVAL
from edge.common.revocation import Loader
from edge.common.rpc import RpcServer
from edge.common.runtime import Check, broker_check


class AuthService:
    name = "auth"

    def __init__(
        self,
        settings: AuthSettings,
        *,
        registry: Any = None,
        audit_log: Any = None,
        users: Any = None,
        keys: Any = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or PsycopgAERegistry(settings.database_url)
        # Revocations the user store commits (a lockout, here) are announced on the bus.
        self.announcer = revocations.Announcer()
        self.users = users or PsycopgUserStore(settings.database_url, on_revoked=self.announcer)
        self.revocation_window = revocations.map_window(settings.token_lifetime)
        self.keys = KeyRing(
            keys or PsycopgKeyStore(settings.database_url),
            rotation=settings.key_rotation,
            token_lifetime=settings.token_lifetime,
        )
        self.hashing = Hashing(settings.password_hash_concurrency)
        self.token_config = tokens.TokenConfig(
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            lifetime=settings.token_lifetime,
            lockout=LockoutPolicy(
                settings.lockout_threshold, settings.lockout_base, settings.lockout_max
            ),
        )
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

    async def _identify(self, request: dict[str, Any]) -> dict[str, Any]:
        """``auth.identify {"username", "passcode", "address"}`` -> :class:`Identified`."""
        try:
            answer = await handlers.identify(
                self.users,
                self.hashing,
                self.token_config.lockout,
                str(request.get("username") or ""),
                str(request.get("passcode") or ""),
                address=str(request["address"]) if request.get("address") else None,
                audit=self.auditor,
            )
        except psycopg.OperationalError:
            answer = Identified(False, reason="user database unavailable", unavailable=True)
        return answer.to_json()

    async def _revocations(self, _: dict[str, Any]) -> dict[str, Any]:
        return await revocations.revocations_reply(self.users, self.revocation_window)

    async def _grant(
        self, form: dict[str, list[str]], authorization: str | None, address: str | None
    ) -> tokens.Issued:
        try:
            return await tokens.grant(
                form,
                authorization,
                users=self.users,
                hashing=self.hashing,
                keys=self.keys,
                config=self.token_config,
                address=address,
                audit=self.auditor,
            )
        except psycopg.OperationalError as exc:
            raise tokens.TokenError(
                "temporarily_unavailable", "the user database does not answer", 503
            ) from exc

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self.settings.amqp_url, timeout=10, reconnect_interval=RECONNECT_INTERVAL
        )
        # One table: which operation goes to which handler.
        self._rpc = RpcServer(
            self._connection,
            {
                "auth.admit": self._admit,
                "auth.identify": self._identify,
                "auth.revocations": self._revocations,
            },
        )
        await self._rpc.start()
        await self.audit.start()
        self.announcer.bus = self.audit.bus

    async def stop(self) -> None:
        await self.announcer.drain()
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
        return [
            *api.routes(self._grant, self.keys.jwks),
            *revocations.revoke_routes(self.users, self.auditor),
            *self.audit.routes(),
        ]

    def jwks_source(self) -> KeySource:
        """Auth verifies tokens on its own routes from its own keys, not over HTTP."""
        return self.keys.jwks

    def revocation_source(self) -> Loader:
        """Auth's verifier loads the map of revoked tokens from its own table, not by RPC."""

        async def load() -> dict[str, int]:
            return await self.users.revocations(self.revocation_window)

        return load


def bootstrap(settings: AuthSettings, **adapters: Any) -> AuthService:
    return AuthService(settings, **adapters)
