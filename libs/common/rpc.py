"""Request/reply over RabbitMQ: one request queue per operation, direct reply-to, deadlines.

A request carries its deadline (``x-deadline``, epoch milliseconds as an integer: an AMQP float
header may travel as a 32-bit float, which cannot hold an epoch time to the second) and a
matching per-message TTL, so a server never works on a request whose caller has given up. The
caller maps a timeout to the failure a peer expects, never to an empty success.

Requests carry the caller's trace context (W3C ``traceparent`` header): a call is a CLIENT span
``rpc <operation>`` and the server's handling a SERVER span of the same name under it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind

from edge.common.bus import close_bounded
from edge.common.tracing import extract, inject, record_failure, safe_attributes

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

REPLY_TO = "amq.rabbitmq.reply-to"
DEADLINE_HEADER = "x-deadline"
ERROR_HEADER = "x-rpc-error"

Payload = dict[str, Any]
RpcHandler = Callable[[Payload], Awaitable[Payload]]


class RpcError(Exception):
    """The server answered with an error."""


class RpcTimeout(RpcError):
    """No answer before the deadline (server down, busy, or the broker unreachable)."""


def request_queue(operation: str) -> str:
    return f"rpc.{operation}"


async def declare_request_queue(channel: AbstractChannel, operation: str) -> Any:
    # Requests are worthless after their deadline, so a classic queue (no replication cost) is
    # right; it is durable so that declaring it from either side never conflicts.
    return await channel.declare_queue(
        request_queue(operation), durable=True, arguments={"x-queue-type": "classic"}
    )


async def _close(channel: AbstractChannel | None, timeout: float) -> None:
    if channel is not None and not channel.is_closed:
        await close_bounded(channel.close(), timeout)


def _rpc_span(
    operation: str, kind: SpanKind, context: Context | None = None
) -> AbstractContextManager[Span]:
    """The span of one call (CLIENT) or of serving it (SERVER); failures are recorded by the
    caller with :func:`record_failure`, by type only."""
    return tracer.start_as_current_span(
        f"rpc {operation}",
        context=context,
        kind=kind,
        attributes=safe_attributes(
            {
                "rpc.system": "rabbitmq",
                "rpc.method": operation,
                "messaging.system": "rabbitmq",
                "messaging.destination.name": request_queue(operation),
            }
        ),
        record_exception=False,
        set_status_on_exception=False,
    )


def _int_header(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


class RpcServer:
    """Serves operations: each handler takes a JSON object and returns one."""

    def __init__(self, connection: AbstractRobustConnection, handlers: dict[str, RpcHandler]):
        self._connection = connection
        self._handlers = handlers
        self._channel: AbstractChannel | None = None

    async def start(self, prefetch: int = 32) -> None:
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=prefetch)
        for operation, handler in self._handlers.items():
            queue = await declare_request_queue(self._channel, operation)
            await queue.consume(self._make_callback(operation, handler))

    def _make_callback(
        self, operation: str, handler: RpcHandler
    ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def on_request(message: AbstractIncomingMessage) -> None:
            async with message.process(requeue=False, ignore_processed=True):
                deadline_ms = _int_header((message.headers or {}).get(DEADLINE_HEADER))
                if deadline_ms and time.time() * 1000 > deadline_ms:
                    return  # the caller has given up; answering would only be noise
                headers: dict[str, Any] = {}
                with _rpc_span(operation, SpanKind.SERVER, extract(message.headers)) as span:
                    try:
                        reply = await handler(json.loads(message.body))
                    except Exception as exc:
                        record_failure(span, exc)
                        log.exception("rpc %s failed", operation)
                        headers[ERROR_HEADER] = type(exc).__name__
                        reply = {"error": str(exc)}
                if message.reply_to and self._channel is not None:
                    await self._channel.default_exchange.publish(
                        aio_pika.Message(
                            body=json.dumps(reply).encode(),
                            correlation_id=message.correlation_id,
                            content_type="application/json",
                            headers=headers,
                        ),
                        routing_key=message.reply_to,
                    )

        return on_request

    async def stop(self, timeout: float = 5.0) -> None:
        await _close(self._channel, timeout)


class RpcClient:
    """Calls operations; replies arrive on the direct reply-to pseudo-queue of one channel."""

    def __init__(self, connection: AbstractRobustConnection, *, timeout: float = 5.0):
        self._connection = connection
        self._timeout = timeout
        self._channel: AbstractChannel | None = None
        self._pending: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}
        # Set when the robust connection came back: the reply consumer did not (aio-pika
        # restores the channel, but the broker answers every request on it with
        # PRECONDITION_FAILED "fast reply consumer does not exist"), so the next call reopens.
        self._stale = False
        self._reopen = asyncio.Lock()

    async def start(self) -> RpcClient:
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        await self._open()
        return self

    async def _open(self) -> None:
        old, self._channel = self._channel, await self._connection.channel()
        self._stale = False
        if old is not None:
            await _close(old, 1.0)
        # PS: direct reply-to requires consuming the pseudo-queue in no-ack mode on the same
        # channel that publishes the requests.
        reply_queue = await self._channel.get_queue(REPLY_TO, ensure=False)
        await reply_queue.consume(self._on_reply, no_ack=True)

    def _on_reconnect(self, *_: object) -> None:
        self._stale = True

    async def _ready_channel(self, operation: str) -> AbstractChannel:
        if self._stale or self._channel is None or self._channel.is_closed:
            async with self._reopen:
                if self._stale or self._channel is None or self._channel.is_closed:
                    try:
                        await self._open()
                    except (aio_pika.exceptions.AMQPError, ConnectionError) as exc:
                        raise RpcTimeout(f"rpc {operation}: no channel to the broker") from exc
        assert self._channel is not None
        return self._channel

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message)

    async def call(
        self, operation: str, payload: Payload, *, timeout: float | None = None
    ) -> Payload:
        """Call ``operation`` and return its reply; raise RpcTimeout or RpcError."""
        with _rpc_span(operation, SpanKind.CLIENT) as span:
            try:
                return await self._call(operation, payload, timeout)
            except RpcError as exc:
                record_failure(span, exc)
                raise

    async def _call(self, operation: str, payload: Payload, timeout: float | None) -> Payload:
        channel = await self._ready_channel(operation)
        timeout = self._timeout if timeout is None else timeout
        headers: dict[str, Any] = {DEADLINE_HEADER: int((time.time() + timeout) * 1000)}
        inject(headers)
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            await asyncio.wait_for(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        body=json.dumps(payload).encode(),
                        correlation_id=correlation_id,
                        reply_to=REPLY_TO,
                        content_type="application/json",
                        expiration=timeout,
                        headers=headers,
                    ),
                    routing_key=request_queue(operation),
                ),
                timeout,
            )
            message = await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise RpcTimeout(f"rpc {operation}: no reply within {timeout:.1f}s") from exc
        except aio_pika.exceptions.AMQPError as exc:
            self._stale = True  # e.g. the channel was closed under us: reopen on the next call
            raise RpcTimeout(f"rpc {operation}: broker unavailable: {exc!r}") from exc
        finally:
            self._pending.pop(correlation_id, None)
        reply = json.loads(message.body)
        if (message.headers or {}).get(ERROR_HEADER):
            raise RpcError(f"rpc {operation}: {reply.get('error')}")
        return reply  # type: ignore[no-any-return]

    async def stop(self, timeout: float = 5.0) -> None:
        self._connection.reconnect_callbacks.discard(self._on_reconnect)
        await _close(self._channel, timeout)
