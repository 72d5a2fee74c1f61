"""Request/reply over RabbitMQ: one request queue per operation, direct reply-to, deadlines.

A request carries its deadline (``x-deadline``, epoch milliseconds as an integer: an AMQP float
header may travel as a 32-bit float, which cannot hold an epoch time to the second) and a
matching per-message TTL, so a server never works on a request whose caller has given up. The
caller maps a timeout to the failure a peer expects, never to an empty success.

Requests carry the caller's trace context (W3C ``traceparent`` header): a call is a CLIENT span
``rpc <operation>`` and the server's handling a SERVER span of the same name under it.

Streamed operations (``RpcServer(..., streams=...)``, ``RpcClient.stream``) answer with several
replies, each numbered (``x-seq``), and end with a reply marked final (``x-final``) whose body is
empty, or with an error reply (also final). The caller's ``timeout`` then bounds the wait for each
reply, not the whole stream. A caller that stops listening early cancels: it publishes the
request's correlation id on the fanout exchange ``edge.rpc.cancel``, every server replica hears
it, and the one running that stream sets the handler's cancel event; the handler finishes its
current step and ends the stream with what it has (C-CANCEL of a C-MOVE, PS3.4 C.4.2.3.2).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
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
SEQUENCE_HEADER = "x-seq"
FINAL_HEADER = "x-final"
CANCEL_EXCHANGE = "edge.rpc.cancel"

Payload = dict[str, Any]
RpcHandler = Callable[[Payload], Awaitable[Payload]]
# A streamed operation: the request and an event set when the caller cancels; yields replies.
StreamHandler = Callable[[Payload, asyncio.Event], AsyncIterator[Payload]]


def encode(payload: Any) -> bytes:
    """A request or reply body as JSON, by orjson: a large query answer is megabytes of JSON,
    and the standard library's decoding of it was half of the listener's CPU on a QIDO-RS search
    of ~1,500 matches. What orjson refuses (keys that are not strings) is encoded as the
    standard library would."""
    try:
        return orjson.dumps(payload)
    except TypeError:
        return json.dumps(payload).encode()


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


async def declare_cancel_exchange(channel: AbstractChannel) -> Any:
    # Cancels concern whichever replica runs the stream, and are worthless later: a fanout to
    # one exclusive queue per server replica, nothing kept.
    return await channel.declare_exchange(
        CANCEL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
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
    """Serves operations: each handler takes a JSON object and returns one; each stream handler
    yields any number of them (see the module's docstring)."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        handlers: dict[str, RpcHandler],
        *,
        streams: dict[str, StreamHandler] | None = None,
        max_streams: int = 8,
    ):
        self._connection = connection
        self._handlers = handlers
        self._streams = streams or {}
        self._stream_slots = asyncio.Semaphore(max_streams)
        self._cancels: dict[str, asyncio.Event] = {}
        self._channel: AbstractChannel | None = None

    async def start(self, prefetch: int = 32) -> None:
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=prefetch)
        for operation, handler in self._handlers.items():
            queue = await declare_request_queue(self._channel, operation)
            await queue.consume(self._make_callback(operation, handler))
        if self._streams:
            exchange = await declare_cancel_exchange(self._channel)
            cancels = await self._channel.declare_queue(
                exclusive=True, auto_delete=True, arguments={"x-queue-type": "classic"}
            )
            await cancels.bind(exchange)
            await cancels.consume(self._on_cancel, no_ack=True)
        for operation, stream in self._streams.items():
            queue = await declare_request_queue(self._channel, operation)
            await queue.consume(self._make_stream_callback(operation, stream))

    async def _on_cancel(self, message: AbstractIncomingMessage) -> None:
        event = self._cancels.get(message.body.decode(errors="replace"))
        if event is not None:
            event.set()

    async def _reply(
        self, request: AbstractIncomingMessage, body: Payload, headers: dict[str, Any]
    ) -> None:
        if request.reply_to and self._channel is not None:
            await self._channel.default_exchange.publish(
                aio_pika.Message(
                    body=encode(body),
                    correlation_id=request.correlation_id,
                    content_type="application/json",
                    headers=headers,
                ),
                routing_key=request.reply_to,
            )

    def _make_stream_callback(
        self, operation: str, handler: StreamHandler
    ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def on_request(message: AbstractIncomingMessage) -> None:
            async with self._stream_slots:
                # Acknowledged as it starts: a stream may outlive the broker's consumer
                # timeout, and a redelivered request would repeat work the caller saw begin.
                await message.ack()
                deadline_ms = _int_header((message.headers or {}).get(DEADLINE_HEADER))
                if deadline_ms and time.time() * 1000 > deadline_ms:
                    return
                cancelled = asyncio.Event()
                key = message.correlation_id or ""
                self._cancels[key] = cancelled
                sequence = 0
                with _rpc_span(operation, SpanKind.SERVER, extract(message.headers)) as span:
                    try:
                        async for reply in handler(orjson.loads(message.body), cancelled):
                            await self._reply(message, reply, {SEQUENCE_HEADER: sequence})
                            sequence += 1
                        await self._reply(message, {}, {SEQUENCE_HEADER: sequence, FINAL_HEADER: 1})
                    except Exception as exc:
                        record_failure(span, exc)
                        log.exception("rpc %s failed", operation)
                        headers = {
                            SEQUENCE_HEADER: sequence,
                            FINAL_HEADER: 1,
                            ERROR_HEADER: type(exc).__name__,
                        }
                        await self._reply(message, {"error": str(exc)}, headers)
                    finally:
                        self._cancels.pop(key, None)

        return on_request

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
                        reply = await handler(orjson.loads(message.body))
                    except Exception as exc:
                        record_failure(span, exc)
                        log.exception("rpc %s failed", operation)
                        headers[ERROR_HEADER] = type(exc).__name__
                        reply = {"error": str(exc)}
                if message.reply_to and self._channel is not None:
                    await self._channel.default_exchange.publish(
                        aio_pika.Message(
                            body=encode(reply),
                            correlation_id=message.correlation_id,
                            content_type="application/json",
                            headers=headers,
                        ),
                        routing_key=message.reply_to,
                    )

        return on_request

    async def stop(self, timeout: float = 5.0) -> None:
        await _close(self._channel, timeout)


async def _publish_request(
    channel: AbstractChannel,
    operation: str,
    payload: Payload,
    correlation_id: str,
    timeout: float,
) -> None:
    """Publish one request (plain or streamed) with its deadline and trace context; the reply or
    replies come to the direct reply-to queue under ``correlation_id``."""
    headers: dict[str, Any] = {DEADLINE_HEADER: int((time.time() + timeout) * 1000)}
    inject(headers)
    await asyncio.wait_for(
        channel.default_exchange.publish(
            aio_pika.Message(
                body=encode(payload),
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


class RpcClient:
    """Calls operations; replies arrive on the direct reply-to pseudo-queue of one channel."""

    def __init__(self, connection: AbstractConnection, *, timeout: float = 5.0):
        self._connection = connection
        self._timeout = timeout
        self._channel: AbstractChannel | None = None
        self._pending: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}
        self._streams: dict[str, asyncio.Queue[AbstractIncomingMessage]] = {}
        # Set when the robust connection came back: the reply consumer did not (aio-pika
        # restores the channel, but the broker answers every request on it with
        # PRECONDITION_FAILED "fast reply consumer does not exist"), so the next call reopens.
        self._stale = False
        self._reopen = asyncio.Lock()

    async def start(self) -> RpcClient:
        # A plain connection (the revocation feed's, which reconnects itself) has no callbacks.
        if isinstance(self._connection, AbstractRobustConnection):
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
        self._cancel_exchange = await declare_cancel_exchange(self._channel)

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
        key = message.correlation_id or ""
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(message)
            return
        stream = self._streams.get(key)
        if stream is not None:
            stream.put_nowait(message)

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
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            await _publish_request(channel, operation, payload, correlation_id, timeout)
            message = await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise RpcTimeout(f"rpc {operation}: no reply within {timeout:.1f}s") from exc
        except aio_pika.exceptions.AMQPError as exc:
            self._stale = True  # e.g. the channel was closed under us: reopen on the next call
            raise RpcTimeout(f"rpc {operation}: broker unavailable: {exc!r}") from exc
        finally:
            self._pending.pop(correlation_id, None)
        reply = orjson.loads(message.body)
        if (message.headers or {}).get(ERROR_HEADER):
            raise RpcError(f"rpc {operation}: {reply.get('error')}")
        return reply  # type: ignore[no-any-return]

    @asynccontextmanager
    async def stream(
        self, operation: str, payload: Payload, *, timeout: float | None = None
    ) -> AsyncIterator[RpcStream]:
        """Call a streamed ``operation``: iterate the context's value for its replies. ``timeout``
        bounds the wait for each reply. Leaving the context before the final reply cancels the
        stream on the server."""
        with _rpc_span(operation, SpanKind.CLIENT) as span:
            channel = await self._ready_channel(operation)
            timeout = self._timeout if timeout is None else timeout
            correlation_id = uuid.uuid4().hex
            replies: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            self._streams[correlation_id] = replies
            result = RpcStream(self, operation, correlation_id, replies, timeout)
            try:
                try:
                    await _publish_request(channel, operation, payload, correlation_id, timeout)
                except TimeoutError as exc:
                    raise RpcTimeout(f"rpc {operation}: no broker within {timeout:.1f}s") from exc
                except aio_pika.exceptions.AMQPError as exc:
                    self._stale = True
                    raise RpcTimeout(f"rpc {operation}: broker unavailable: {exc!r}") from exc
                yield result
            except RpcError as exc:
                record_failure(span, exc)
                raise
            finally:
                self._streams.pop(correlation_id, None)
                if not result.finished:
                    await result.cancel()

    async def _cancel(self, correlation_id: str) -> None:
        exchange = getattr(self, "_cancel_exchange", None)
        if exchange is None or self._channel is None or self._channel.is_closed:
            return
        try:
            await asyncio.wait_for(
                exchange.publish(aio_pika.Message(body=correlation_id.encode()), routing_key=""),
                self._timeout,
            )
        except (TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            log.warning("rpc cancel not sent: %s", type(exc).__name__)

    async def stop(self, timeout: float = 5.0) -> None:
        if isinstance(self._connection, AbstractRobustConnection):
            self._connection.reconnect_callbacks.discard(self._on_reconnect)
        await _close(self._channel, timeout)


class RpcStream:
    """The replies of one streamed call, in order; ends after the final marker."""

    def __init__(
        self,
        client: RpcClient,
        operation: str,
        correlation_id: str,
        replies: asyncio.Queue[AbstractIncomingMessage],
        timeout: float,
    ) -> None:
        self._client = client
        self._operation = operation
        self._correlation_id = correlation_id
        self._replies = replies
        self._timeout = timeout
        self._expected = 0
        self.finished = False
        self.cancelled = False

    def __aiter__(self) -> RpcStream:
        return self

    async def __anext__(self) -> Payload:
        if self.finished:
            raise StopAsyncIteration
        op = self._operation
        try:
            message = await asyncio.wait_for(self._replies.get(), self._timeout)
        except TimeoutError as exc:
            raise RpcTimeout(f"rpc {op}: no reply within {self._timeout:.1f}s") from exc
        headers = message.headers or {}
        sequence = _int_header(headers.get(SEQUENCE_HEADER))
        if sequence != self._expected:  # direct reply-to keeps order; a gap means a lost reply
            self.finished = True
            raise RpcError(f"rpc {op}: reply {sequence} where {self._expected} was due")
        self._expected += 1
        body = orjson.loads(message.body)
        if headers.get(ERROR_HEADER):
            self.finished = True
            raise RpcError(f"rpc {op}: {body.get('error')}")
        if headers.get(FINAL_HEADER):
            self.finished = True
            raise StopAsyncIteration
        return body  # type: ignore[no-any-return]

    async def cancel(self) -> None:
        """Ask the server to stop; keep iterating for the replies it still sends."""
        if not self.cancelled:
            self.cancelled = True
            await self._client._cancel(self._correlation_id)
