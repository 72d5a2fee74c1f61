"""C-MOVE (PS3.4 C.4.2): forwarded to the retrieval service (``retrieval.move`` stream), whose
progress replies become pending responses and whose final reply the final response; C-CANCEL is
forwarded and the retrieval service ends with 0xFE00 and the counts so far.

The listener checks the permission and decodes the identifier; the destination, the matching
and the sub-operations are the retrieval service's.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

from prometheus_client import Histogram
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_MOVE

from edge.common.audit import DESTINATION, Auditor, ae
from edge.common.rpc import RpcClient, RpcStream
from edge.common.suboperations import PENDING, UNABLE_TO_PERFORM
from edge.listener.auditing import peer, retrieved
from edge.listener.retrieve_service import (
    MOVE_MODELS,
    RetrieveResponse,
    retrieve_request,
    traced,
)

log = logging.getLogger(__name__)

POLL = 0.1  # seconds between looks for a C-CANCEL while waiting for the next reply

C_MOVE_SECONDS = Histogram(
    "edge_cmove_seconds",
    "C-MOVE handling time, from the request to the final response, by final status",
    ["status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)


class MoveStream(Protocol):
    """The replies of one ``retrieval.move`` call, read from a pynetdicom thread."""

    def get(self, timeout: float) -> tuple[str, Any] | None:
        """("reply", payload), ("end", None) or ("error", exception); None if none came."""

    def cancel(self) -> None: ...

    def close(self) -> None: ...


class ThreadedStream:
    """An RPC stream run on the service's event loop and read from another thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: RpcClient,
        operation: str,
        payload: dict[str, Any],
        timeout: float,
    ) -> None:
        self._loop = loop
        self._items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._stream: RpcStream | None = None
        self._cancel_wanted = False
        self._future = asyncio.run_coroutine_threadsafe(
            self._pump(client, operation, payload, timeout), loop
        )

    async def _pump(
        self, client: RpcClient, operation: str, payload: dict[str, Any], timeout: float
    ) -> None:
        try:
            async with client.stream(operation, payload, timeout=timeout) as stream:
                self._stream = stream
                if self._cancel_wanted:
                    await stream.cancel()
                async for reply in stream:
                    self._items.put(("reply", reply))
            self._items.put(("end", None))
        except Exception as exc:
            self._items.put(("error", exc))

    async def _cancel(self) -> None:
        self._cancel_wanted = True
        if self._stream is not None:
            await self._stream.cancel()

    def get(self, timeout: float) -> tuple[str, Any] | None:
        try:
            return self._items.get(timeout=timeout)
        except queue.Empty:
            return None

    def cancel(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cancel(), self._loop)

    def close(self) -> None:
        # Leaving the stream early cancels it on the server (RpcClient.stream).
        self._future.cancel()


@dataclass
class MoveDeps:
    move: Callable[[dict[str, Any]], MoveStream]
    timeout: float  # longest wait for one reply of the retrieval service
    audit: Auditor | None = None


def _unavailable(last: dict[str, Any] | None, comment: str) -> RetrieveResponse:
    """The retrieval service stopped answering: what was not done is failed (0xA702)."""
    counts = last or {}
    failed = int(counts.get("failed") or 0) + int(counts.get("remaining") or 0)
    return RetrieveResponse(
        UNABLE_TO_PERFORM,
        completed=counts.get("completed"),
        failed=failed if last else None,
        warning=counts.get("warning"),
        comment=comment,
    )


def move_responses(event: evt.Event, deps: MoveDeps) -> Iterator[RetrieveResponse]:
    """The responses to one C-MOVE: pendings, then one final response."""
    request = retrieve_request(event, "move", MOVE_MODELS)
    if isinstance(request, RetrieveResponse):
        yield request
        return
    command = cast(C_MOVE, event.request)
    calling = str(event.assoc.requestor.ae_title).strip()
    payload: dict[str, Any] = {
        **request,
        "destination": event.move_destination or "",
        "originator": calling,
        "message_id": int(command.MessageID or 0),
    }
    stream = deps.move(payload)
    last: dict[str, Any] | None = None
    cancelled = False
    deadline = time.monotonic() + deps.timeout
    try:
        while True:
            # event.is_cancelled is true once per C-CANCEL: remember it.
            if not cancelled and event.is_cancelled:
                cancelled = True
                stream.cancel()
            item = stream.get(POLL)
            if item is None:
                if time.monotonic() > deadline:
                    log.error("C-MOVE from %s: retrieval service did not answer in time", calling)
                    yield _unavailable(last, "retrieval service unavailable")
                    return
                continue
            kind, value = item
            if kind != "reply":
                log.error("C-MOVE from %s: retrieval service failed: %s", calling, value)
                yield _unavailable(last, "retrieval service unavailable")
                return
            deadline = time.monotonic() + deps.timeout
            response = RetrieveResponse.from_reply(value)
            yield response
            if response.status != PENDING:
                return
            last = value
    finally:
        stream.close()


def on_c_move(event: evt.Event, deps: MoveDeps) -> Iterator[RetrieveResponse]:
    """EVT_C_MOVE: :func:`move_responses` under a span, timed; the span carries AE titles and
    counts, never the identifier's values."""
    responses = move_responses(event, deps)
    yield from traced(
        "C-MOVE", event, responses, C_MOVE_SECONDS, lambda last: audit_move(event, deps.audit, last)
    )


def audit_move(event: evt.Event, audit: Auditor | None, last: RetrieveResponse | None) -> None:
    """The C-MOVE in the audit trail: instances of each study named sent to the destination
    AE, at the requester's request (PS3.15 A.5.3.5, action R)."""
    if audit is None:
        return
    try:
        identifier = event.identifier.to_json_dict()
    except Exception:
        identifier = {}
    status = last.status if last is not None else 0xA702
    counts = f"completed {last.completed or 0}, failed {last.failed or 0}" if last else ""
    retrieved(
        audit,
        requester=peer(event.assoc),
        destination=ae(
            str(event.move_destination or "").strip(), requestor=False, role=DESTINATION
        ),
        identifier=identifier,
        status=status,
        reason=(last.comment if last is not None and last.comment else counts),
    )
