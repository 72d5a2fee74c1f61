"""Composition root of the listener: builds the adapters inside the function, never at import."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from starlette.routing import BaseRoute

from edge.common.admission import Admission, Identified
from edge.common.audit import Auditor
from edge.common.authn import InvalidToken, TokenVerifier, http_jwks
from edge.common.bus import EXCHANGE, AioPikaBus
from edge.common.dicom import Status
from edge.common.events import AeChanged, InstanceReceived, UndecodableMessage, from_parts
from edge.common.revocation import RevocationFeed, Revocations
from edge.common.rpc import RpcClient, RpcTimeout
from edge.common.runtime import Check, broker_check, store_check
from edge.common.store import MinioObjectStore, ObjectStore
from edge.common.tls import server_context
from edge.common.tracing import in_context
from edge.listener.admission import AdmissionCache
from edge.listener.dimse import StoreDeps, build_ae, event_handlers
from edge.listener.find_scp import FindDeps
from edge.listener.get_scp import GetDeps
from edge.listener.handshakes import HandshakeRefusals
from edge.listener.move_scp import MoveDeps, MoveStream, ThreadedStream
from edge.listener.qido import qido_routes
from edge.listener.settings import ListenerSettings
from edge.listener.storage_scp import StoreRequest, StoreResult, store_instance
from edge.listener.stow import stow_routes
from edge.listener.tls_server import start_tls_server
from edge.listener.viewer import Viewer, viewer_routes
from edge.listener.wado import WadoDeps, wado_routes

log = logging.getLogger(__name__)
T = TypeVar("T")


class ListenerService:
    name = "listener"

    def __init__(
        self,
        settings: ListenerSettings,
        *,
        store: ObjectStore | None = None,
        bus: AioPikaBus | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rpc: RpcClient | None = None
        self._cache: AdmissionCache | None = None
        self._server: Any = None
        self._tls_server: Any = None
        # One verifier for the JWTs of DICOM User Identity and (lent to serve()) the HTTP APIs;
        # its map of revoked tokens is kept by the feed started with the listener.
        self._revocations = Revocations()
        self.token_verifier = TokenVerifier(
            http_jwks(settings.auth_url.rstrip("/") + "/api/auth/jwks"),
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            cache_ttl=settings.jwks_cache_ttl,
            revocations=self._revocations,
        )
        self.revocation_feed = RevocationFeed(
            settings.amqp_url, self._revocations, rpc_timeout=settings.rpc_timeout
        )
        self._uploads: ThreadPoolExecutor | None = None
        # Audit events (edge.common.audit): buffered from the start, published once the bus is up.
        self.auditor = Auditor(None, source="edge-listener", hash_key=settings.audit_hash_key)
        # Refused TLS handshakes: audited with repeats from one address coalesced per window.
        self.handshakes = HandshakeRefusals(self.auditor)
        self._handshake_flusher: asyncio.Task[None] | None = None
        # WADO's S3 reads: enough threads for the objects one retrieval fetches ahead, and some
        # for a second retrieval at the same time.
        self._readers = ThreadPoolExecutor(
            max(2, 2 * settings.wado_prefetch), thread_name_prefix="s3-get"
        )

    # -- blocking bridges, called from pynetdicom's association threads -------------------------

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``coro`` on the service's loop under the calling thread's trace context."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(
            in_context(coro, otel_context.get_current()), self._loop
        )

    def _admit(self, calling_ae: str, address: str) -> Admission:
        assert self._cache is not None
        future = self._on_loop(self._cache.admit(calling_ae, address))
        return future.result(self.settings.rpc_timeout + 1)

    def _identify(
        self, kind: str, primary: bytes, secondary: bytes | None, address: str
    ) -> Identified:
        """A DICOM User Identity: username and passcode checked by auth (``auth.identify``), a
        JWT verified here against auth's JWKS."""
        if kind == "password":
            payload = {
                "username": primary.decode("utf-8", "replace"),
                "passcode": (secondary or b"").decode("utf-8", "replace"),
                "address": address,
            }
            future = self._on_loop(self._ask_identify(payload))
        else:
            future = self._on_loop(self._verify_jwt(primary.decode("ascii", "replace")))
        try:
            return future.result(self.settings.rpc_timeout + 1)
        except TimeoutError:
            future.cancel()
            raise

    async def _ask_identify(self, payload: dict[str, Any]) -> Identified:
        assert self._rpc is not None
        return Identified.from_json(await self._rpc.call("auth.identify", payload))

    async def _verify_jwt(self, token: str) -> Identified:
        try:
            principal = await self.token_verifier.verify(token.strip())
        except InvalidToken as exc:
            return Identified(False, reason=str(exc))
        return Identified(True, principal.subject, principal.role)

    def _publish(self, event: InstanceReceived, timeout: float) -> None:
        assert self.bus is not None
        future = self._on_loop(self.bus.publish(event))
        try:
            future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def _locate(self, payload: dict[str, Any]) -> dict[str, Any]:
        assert self._rpc is not None
        timeout = self.settings.locate_timeout
        future = self._on_loop(self._rpc.call("retrieval.locate", payload, timeout=timeout))
        return future.result(timeout + 1)

    def _move(self, payload: dict[str, Any]) -> MoveStream:
        assert self._rpc is not None and self._loop is not None
        timeout = self.settings.move_reply_timeout
        return ThreadedStream(self._loop, self._rpc, "retrieval.move", payload, timeout)

    def _find(self, payload: dict[str, Any]) -> Future[dict[str, Any]]:
        assert self._rpc is not None
        timeout = self.settings.find_timeout
        return self._on_loop(self._rpc.call("query.find", payload, timeout=timeout))

    # -- lifecycle ------------------------------------------------------------------------------

    async def _ask_auth(self, calling_ae: str, address: str) -> Admission:
        assert self._rpc is not None
        reply = await self._rpc.call("auth.admit", {"calling_ae": calling_ae, "address": address})
        return Admission.from_json(reply)

    async def _on_ae_changed(self, message: Any) -> None:
        try:
            event = from_parts(dict(message.headers or {}), message.body)
        except UndecodableMessage:
            return
        if isinstance(event, AeChanged) and self._cache is not None:
            self._cache.forget(event.ae_title)

    async def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        if s.spool_dir is not None:
            s.spool_dir.mkdir(parents=True, exist_ok=True)
            tempfile.tempdir = str(s.spool_dir)
        if self.store is None:
            # The storage service (or `edge up --dev`) creates the bucket; the listener only
            # needs to write objects, and /readyz says when the bucket is not there.
            self.store = MinioObjectStore.from_settings(s)
        if self.bus is None:
            self.bus = await AioPikaBus.connect(
                s.amqp_url, "/edge/listener", timeout=s.store_deadline
            )
        self._rpc = await RpcClient(self.bus.connection, timeout=s.rpc_timeout).start()
        self.auditor.bus = self.bus
        await self.auditor.start()
        self._cache = AdmissionCache(self._ask_auth, s.admission_cache_ttl)
        await self.revocation_feed.start()
        channel = await self.bus.connection.channel()
        # A cache-invalidation feed: per replica, gone with it; the TTL covers any gap.
        queue = await channel.declare_queue(
            exclusive=True, auto_delete=True, arguments={"x-queue-type": "classic"}
        )
        await queue.bind(await channel.get_exchange(EXCHANGE), routing_key=AeChanged.name)
        await queue.consume(self._on_ae_changed, no_ack=True)

        # One upload thread per association we may hold, so a hung object store costs the
        # peers their deadline, never a thread pool that has run dry.
        self._uploads = ThreadPoolExecutor(s.max_associations, thread_name_prefix="s3-put")
        deps = StoreDeps(
            store=self.store,
            publish=self._publish,
            max_size=s.max_instance_size,
            deadline=s.store_deadline,
            uploads=self._uploads,
            audit=self.auditor,
        )
        ae = build_ae(
            ae_title=s.ae_title,
            max_associations=s.max_associations,
            max_pdu_size=s.max_pdu_size,
            acse_timeout=s.acse_timeout,
            dimse_timeout=s.dimse_timeout,
            network_timeout=s.network_timeout,
        )
        handlers = event_handlers(
            self._admit,
            s.ae_title,
            deps,
            FindDeps(
                find=self._find,
                ae_title=s.ae_title,
                timeout=s.find_timeout + 1,
                audit=self.auditor,
            ),
            move=MoveDeps(move=self._move, timeout=s.move_reply_timeout + 1, audit=self.auditor),
            get=GetDeps(
                locate=self._locate,
                store=self.store,
                spool_dir=s.spool_dir,
                audit=self.auditor,
            ),
            audit=self.auditor,
            identify=self._identify,
        )
        self._server = ae.start_server(
            (s.dicom_host, s.dicom_port), block=False, evt_handlers=handlers
        )
        log.info("listener %s on %s:%d", s.ae_title, s.dicom_host, s.dicom_port)
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            # A second server on the same AE: the same handlers, over TLS (PS3.15 B.1).
            context = server_context(s.tls_cert_file, s.tls_key_file, s.tls_ca_file, s.tls_crl_file)
            self._tls_server = start_tls_server(
                ae, (s.dicom_host, s.tls_port), context, handlers, on_refused=self.handshakes
            )
            self._handshake_flusher = asyncio.create_task(
                self._flush_handshake_refusals(), name="TLS handshake refusals"
            )
            log.info(
                "listener %s (DICOM TLS%s) on %s:%d",
                s.ae_title,
                ", CRL checked" if s.tls_crl_file is not None else "",
                s.dicom_host,
                s.tls_port,
            )
        else:
            log.info("DICOM TLS off: EDGE_TLS_CERT_FILE and EDGE_TLS_KEY_FILE not set")

    async def _flush_handshake_refusals(self) -> None:
        """Close ended coalescing windows even when no new refusal comes to close them."""
        while True:
            await asyncio.sleep(min(5.0, self.handshakes.window))
            self.handshakes.flush()

    async def stop(self, grace: float = 25.0) -> None:
        """Stop accepting associations, let the running ones finish, then close connections."""
        servers = [server for server in (self._server, self._tls_server) if server is not None]
        for server in servers:
            await asyncio.to_thread(server.shutdown)
        deadline = time.monotonic() + grace
        # Associations are threads, not tasks: there is no event to await, so poll.
        while (  # noqa: ASYNC110
            any(server.active_associations for server in servers) and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.1)
        for server in servers:
            for assoc in server.active_associations:
                assoc.abort()
        if self._uploads is not None:
            self._uploads.shutdown(wait=False, cancel_futures=True)
        self._readers.shutdown(wait=False, cancel_futures=True)
        await self.revocation_feed.stop()
        if self._rpc is not None:
            await self._rpc.stop()
        if self._handshake_flusher is not None:
            self._handshake_flusher.cancel()
        self.handshakes.flush(everything=True)
        await self.auditor.stop()  # what the last associations recorded, before the bus goes
        if self.bus is not None:
            await self.bus.close()

    def readiness_checks(self) -> dict[str, Check]:
        return {
            "broker": broker_check(lambda: self.bus.connection if self.bus else None),
            "s3": store_check(lambda: self.store),
            "token revocations": self.revocation_feed.check,
        }

    def routes(self) -> list[BaseRoute]:
        s = self.settings

        async def find(payload: dict[str, Any]) -> dict[str, Any]:
            if self._rpc is None:
                raise RpcTimeout("listener not started")
            return await self._rpc.call("query.find", payload, timeout=s.find_timeout)

        def store(request: StoreRequest) -> StoreResult:  # blocking, on a worker thread
            if self.store is None:
                return StoreResult(Status.OUT_OF_RESOURCES, "listener not started")
            return store_instance(
                request,
                store=self.store,
                publish=self._publish,
                max_size=s.max_instance_size,
                deadline=s.store_deadline,
                uploads=self._uploads,
            )

        async def locate(payload: dict[str, Any]) -> dict[str, Any]:
            if self._rpc is None:
                raise RpcTimeout("listener not started")
            return await self._rpc.call("retrieval.locate", payload, timeout=s.locate_timeout)

        wado = WadoDeps(
            locate=locate,
            store=lambda: self.store,
            prefetch=s.wado_prefetch,
            prefetch_bytes=s.wado_prefetch_bytes,
            readers=self._readers,
        )
        return [
            *qido_routes(find, ae_title=s.ae_title, max_limit=s.qido_max_limit, audit=self.auditor),
            *wado_routes(wado, self.auditor),
            *stow_routes(
                store,
                called_ae=s.ae_title,
                max_size=s.max_instance_size,
                spool_dir=s.spool_dir,
                audit=self.auditor,
            ),
            *viewer_routes(Viewer(s.viewer_dir)),
        ]


def bootstrap(settings: ListenerSettings, **adapters: Any) -> ListenerService:
    return ListenerService(settings, **adapters)
