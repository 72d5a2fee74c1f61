"""What every service shares at run time: health endpoints, metrics, signals, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar

import uvicorn
from aio_pika.abc import AbstractConnection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.common.authn import AuthMiddleware, KeySource, TokenVerifier, http_jwks
from edge.common.revocation import Loader, RevocationFeed, Revocations
from edge.common.store import ObjectStore
from edge.common.telemetry import configure_telemetry
from edge.common.tracing import shutdown_tracing

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]
S = TypeVar("S", bound="ServiceSettings")


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def readiness_checks(self) -> dict[str, Check]: ...

    def routes(self) -> list[BaseRoute]: ...


def health_routes(checks: Callable[[], dict[str, Check]]) -> list[BaseRoute]:
    """``/healthz`` (the process answers), ``/readyz`` (every dependency answers), ``/metrics``."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        results: dict[str, str] = {}
        for name, check in checks().items():
            try:
                await asyncio.wait_for(check(), 3.0)
                results[name] = "ok"
            except Exception as exc:  # any failure means "not ready"; say which and why
                results[name] = f"failed: {type(exc).__name__}"
        ready = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": results},
            status_code=200 if ready else 503,
        )

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service runner owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def broker_check(connection: Callable[[], AbstractConnection | None]) -> Check:
    """Readiness of the broker connection that ``connection()`` returns (None: not started)."""

    async def broker() -> None:
        current = connection()
        if current is None or current.is_closed:
            raise ConnectionError("broker connection closed")

    return broker


def pool_check(pool: Callable[[], Any]) -> Check:
    """Readiness of a psycopg connection pool (None: not started): a connection answers."""

    async def database() -> None:
        current = pool()
        if current is None:
            raise ConnectionError("no pool")
        async with current.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")

    return database


def store_check(store: Callable[[], ObjectStore | None]) -> Check:
    """Readiness of the object store (its bucket answers), off the event loop."""

    async def s3() -> None:
        current = store()
        if current is None:
            raise ConnectionError("object store not configured")
        await asyncio.to_thread(current.ping)

    return s3


class ServiceSettings(Protocol):
    http_host: str
    http_port: int
    log_level: str
    auth_enabled: bool
    auth_url: str
    token_issuer: str
    token_audience: str
    jwks_cache_ttl: float
    amqp_url: str
    rpc_timeout: float


def token_verifier(
    settings: ServiceSettings, service: Service
) -> tuple[TokenVerifier | None, RevocationFeed | None]:
    """How ``service`` checks bearer tokens: against auth's JWKS over HTTP, or (auth itself)
    its own keys, refusing revoked ones (the feed keeps that map; ``serve`` runs it); None when
    authentication is off. A service with a verifier of its own (``token_verifier``: the
    listener's, which also checks JWTs of DICOM User Identity and runs its feed itself) lends
    it to its HTTP routes."""
    if not settings.auth_enabled:
        return None, None
    lent: TokenVerifier | None = getattr(service, "token_verifier", None)
    if lent is not None:
        return lent, None
    own: Callable[[], KeySource] | None = getattr(service, "jwks_source", None)
    source = own() if own else http_jwks(settings.auth_url.rstrip("/") + "/api/auth/jwks")
    revocations = Revocations()
    own_revocations: Callable[[], Loader] | None = getattr(service, "revocation_source", None)
    feed = RevocationFeed(
        settings.amqp_url,
        revocations,
        load=own_revocations() if own_revocations else None,
        rpc_timeout=settings.rpc_timeout,
    )
    verifier = TokenVerifier(
        source,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        cache_ttl=settings.jwks_cache_ttl,
        revocations=revocations,
    )
    return verifier, feed


def run_service(name: str, settings: S, bootstrap: Callable[[S], Service]) -> None:
    """``python -m edge.<name>``: logging and tracing, then the service and its HTTP server until
    SIGTERM; spans still batched are exported before the process ends."""
    configure_telemetry(name, settings.log_level)
    service = bootstrap(settings)
    verifier, feed = token_verifier(settings, service)
    if verifier is None:
        log.warning("%s: HTTP APIs without authentication (EDGE_AUTH_ENABLED=false)", name)
    try:
        asyncio.run(
            serve(service, settings.http_host, settings.http_port, verifier=verifier, feed=feed)
        )
    finally:
        shutdown_tracing()


async def serve(
    service: Service,
    http_host: str,
    http_port: int,
    *,
    verifier: TokenVerifier | None = None,
    feed: RevocationFeed | None = None,
) -> None:
    """Start ``service`` and its HTTP server; on SIGTERM/SIGINT stop both gracefully. With a
    ``verifier`` every route but health, metrics and auth's open ones needs a bearer token
    (edge.common.authn); ``feed`` keeps its map of revoked tokens current."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    if feed is not None:
        await feed.start()
    middleware = [Middleware(AuthMiddleware, verifier=verifier)] if verifier else []

    def checks() -> dict[str, Check]:
        own = service.readiness_checks()
        return {**own, "token revocations": feed.check} if feed is not None else own

    app = Starlette(
        routes=[*health_routes(checks), *service.routes()],
        middleware=middleware,
    )
    server = _QuietServer(
        uvicorn.Config(app, host=http_host, port=http_port, log_level="warning", lifespan="off")
    )
    http = asyncio.create_task(server.serve())
    log.info("%s started; HTTP on %s:%d", service.name, http_host, http_port)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({http, stopped}, return_when=asyncio.FIRST_COMPLETED)
    log.info("%s stopping", service.name)
    server.should_exit = True
    if feed is not None:
        await feed.stop()
    await service.stop()
    await asyncio.wait({http}, timeout=5)
    if http.done() and http.exception() is not None:
        raise RuntimeError(f"{service.name}: HTTP server failed") from http.exception()
    log.info("%s stopped", service.name)
