"""The ``retrieval.move`` stream: a C-MOVE (PS3.4 C.4.2) performed for the listener.

Request: ``{"model", "level", "identifier"}`` as for ``retrieval.locate``, plus ``destination``
(the Move Destination AE title), ``originator`` (the requester's AE title) and ``message_id``
(its C-MOVE Message ID, for the sub-operations' Move Originator fields). Replies: progress
``{"status": 0xFF00, "remaining", "completed", "failed", "warning"}`` after each sub-operation,
then one final reply with the final status, the counts and ``failed_uids``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from prometheus_client import Counter, Histogram
from psycopg_pool import AsyncConnectionPool

from edge.auth.registry import RemoteAE
from edge.common.outbound import Instance, Outcome, SubResult
from edge.common.store import ObjectStore
from edge.common.suboperations import (
    DESTINATION_UNKNOWN,
    MAX_SUBOPERATIONS,
    PENDING,
    UNABLE_TO_CALCULATE,
    UNABLE_TO_PERFORM,
    UNABLE_TO_PROCESS,
    Pacer,
    Progress,
    refusal,
)
from edge.common.tls import client_context
from edge.query.matching import QueryError
from edge.retrieval.locate import LocateRequest, locate, retrieve_conditions
from edge.retrieval.settings import RetrievalSettings
from edge.retrieval.transfer import Destination, Timeouts, Transfer

log = logging.getLogger(__name__)

PAGE = 5000

SUBOPERATIONS = Counter(
    "edge_move_suboperations_total", "C-MOVE C-STORE sub-operations, by outcome", ["outcome"]
)
MOVE_BYTES = Counter("edge_move_bytes_total", "Bytes of instances C-MOVE delivered")
MOVE_SECONDS = Histogram(
    "edge_move_seconds",
    "C-MOVE duration, from the request to the final reply, by final status",
    ["status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)

GetAE = Callable[[str], Awaitable[RemoteAE | None]]


def move_host(hosts: tuple[str, ...]) -> str | None:
    """Where to reach a destination: its first registered entry that names one host (an
    address, a single-address network, or a host name), never a range."""
    for entry in hosts:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if entry and "/" not in entry:
                return entry  # a host name
            continue
        if network.num_addresses == 1:
            return str(network.network_address)
    return None


def destination_of(ae: RemoteAE | None) -> Destination | None:
    """The registered destination, or None (0xA801): unknown, not a move destination, or no
    single host to reach it at. The address always comes from the registry."""
    if ae is None or not ae.move_destination:
        return None
    host = move_host(ae.hosts)
    if host is None:
        return None
    return Destination(ae.ae_title, host, ae.port, tls=ae.tls_required or ae.tls_client_cert)


class MoveHandler:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        get_ae: GetAE,
        store: ObjectStore,
        settings: RetrievalSettings,
    ) -> None:
        self.pool = pool
        self.get_ae = get_ae
        self.store = store
        self.settings = settings
        # DICOM TLS towards destinations that require it (PS3.15 B.1); None: not configured.
        self.tls_context = (
            client_context(
                settings.tls_ca_file,
                settings.tls_cert_file,
                settings.tls_key_file,
                settings.tls_crl_file,
            )
            if settings.tls_ca_file is not None or settings.tls_cert_file is not None
            else None
        )

    async def __call__(
        self, payload: dict[str, Any], cancelled: asyncio.Event
    ) -> AsyncIterator[dict[str, Any]]:
        started = time.monotonic()
        final = refusal(UNABLE_TO_PROCESS, "internal error")
        try:
            async for reply in self._move(payload, cancelled):
                if reply["status"] != PENDING:
                    final = reply
                yield reply
        finally:
            MOVE_SECONDS.labels(f"0x{final['status']:04X}").observe(time.monotonic() - started)

    async def _instances(self, payload: dict[str, Any]) -> list[Instance] | dict[str, Any]:
        """Every instance the identifier names, or the refusal to send."""
        try:
            where = retrieve_conditions(
                payload.get("model"), payload.get("level"), payload.get("identifier")
            )
            found: list[Instance] = []
            after = None
            async with self.pool.connection() as conn:
                while True:
                    page, after = await locate(conn, LocateRequest(where, after=after, limit=PAGE))
                    found += [Instance.from_json(item) for item in page]
                    if len(found) > MAX_SUBOPERATIONS:
                        return refusal(UNABLE_TO_CALCULATE, "more than 65535 instances")
                    if after is None:
                        return found
        except QueryError as exc:
            return refusal(exc.status, exc.comment)
        except psycopg.Error as exc:
            log.warning("retrieval.move: catalog unavailable: %s", type(exc).__name__)
            return refusal(UNABLE_TO_CALCULATE, "catalog unavailable")

    async def _move(
        self, payload: dict[str, Any], cancelled: asyncio.Event
    ) -> AsyncIterator[dict[str, Any]]:
        title = str(payload.get("destination") or "").strip()
        try:
            ae = await self.get_ae(title) if title else None
        except psycopg.Error as exc:
            log.warning("retrieval.move: registry unavailable: %s", type(exc).__name__)
            yield refusal(UNABLE_TO_PERFORM, "registry unavailable")
            return
        destination = destination_of(ae)
        if destination is None:
            log.warning("C-MOVE to unknown or unusable destination %r", title[:16])
            yield refusal(DESTINATION_UNKNOWN, "move destination unknown")
            return
        instances = await self._instances(payload)
        if isinstance(instances, dict):
            yield instances
            return
        progress = Progress(total=len(instances))
        if not instances:
            yield progress.final(cancelled=False, reached=True)
            return
        loop = asyncio.get_running_loop()
        results: asyncio.Queue[SubResult] = asyncio.Queue()
        stop = threading.Event()
        transfer = self._transfer(payload, instances, destination, stop, loop, results)
        running = loop.run_in_executor(None, transfer.run)
        watch = asyncio.create_task(cancelled.wait())
        getter: asyncio.Task[SubResult] | None = None
        pacer = Pacer()
        try:
            while True:
                if getter is None:
                    getter = asyncio.create_task(results.get())
                waits: set[asyncio.Future[Any]] = {getter, running}
                if not watch.done():
                    waits.add(watch)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if watch.done():
                    stop.set()  # C-CANCEL: workers stop after their current sub-operation
                if getter.done():
                    result, getter = getter.result(), None
                    progress.add(result)
                    SUBOPERATIONS.labels(result.outcome.value).inc()
                    if result.outcome is not Outcome.FAILED:
                        MOVE_BYTES.inc(result.size)
                    if progress.remaining and pacer.due():
                        yield progress.pending()
                elif running.done() and results.empty():
                    break
            await running
        finally:
            stop.set()
            watch.cancel()
            if getter is not None:
                getter.cancel()
        yield progress.final(cancelled=cancelled.is_set(), reached=transfer.ever_associated)

    def _transfer(
        self,
        payload: dict[str, Any],
        instances: list[Instance],
        destination: Destination,
        stop: threading.Event,
        loop: asyncio.AbstractEventLoop,
        results: asyncio.Queue[SubResult],
    ) -> Transfer:
        s = self.settings
        originator = None
        if payload.get("originator") and payload.get("message_id") is not None:
            originator = (str(payload["originator"])[:16], int(payload["message_id"]))
        return Transfer(
            instances,
            destination,
            calling_ae=s.ae_title,
            store=self.store,
            timeouts=Timeouts(
                s.move_connect_timeout,
                s.move_acse_timeout,
                s.move_dimse_timeout,
                s.move_network_timeout,
            ),
            associations=s.move_associations,
            max_pdu_size=s.move_max_pdu_size,
            spool_dir=s.spool_dir,
            originator=originator,
            report=lambda result: loop.call_soon_threadsafe(results.put_nowait, result),
            cancelled=stop,
            tls_context=self.tls_context,
            read_ahead=s.move_read_ahead,
        )
