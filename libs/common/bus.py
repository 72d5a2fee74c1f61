"""The event bus: topology, confirmed publishing and a consumer that acks only after the work.

Reliability choices are spelled out here rather than left to a broker version's defaults:
durable quorum queues with an explicit ``x-delivery-limit`` and a dead-letter queue per consumer,
persistent messages, publisher confirms and ``mandatory`` publishing (an unroutable event is an
error, not a silent drop).

Every publish is a PRODUCER span whose context travels in the message's headers (W3C
``traceparent``); every delivery runs its handler inside a CONSUMER span that continues that
trace. Metrics: events confirmed per event name, publish-to-confirm time, queue lag (now minus
``ce-time``) per queue, and handling time per queue and outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from prometheus_client import Counter, Histogram

from edge.common.events import (
    CONTENT_TYPE,
    Event,
    UndecodableMessage,
    from_parts,
    to_body,
    to_headers,
)
from edge.common.tracing import extract, inject, record_failure, safe_attributes

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

EVENTS_PUBLISHED = Counter(
    "edge_events_published_total", "Events the broker confirmed, by event name", ["event"]
)
PUBLISH_SECONDS = Histogram(
    "edge_event_publish_seconds",
    "Publish to broker confirm (or failure), by event name and outcome",
    ["event", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_LAG_SECONDS = Histogram(
    "edge_queue_lag_seconds",
    "Event time (ce-time) to the consumer taking the delivery, by queue",
    ["queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
HANDLE_SECONDS = Histogram(
    "edge_event_handle_seconds",
    "Delivery to settlement (ack, dead-letter or requeue), by queue and outcome",
    ["queue", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

EXCHANGE = "edge.events"
DEAD_LETTER_EXCHANGE = "edge.dead-letter"
REASON_HEADER = "x-edge-reason"
RECONNECT_INTERVAL = 1.0  # seconds between attempts to reach a broker that went away


@dataclass(frozen=True)
class ConsumerQueue:
    """A durable queue a service owns, the events it takes, and how often a message may fail."""

    name: str
    routing_keys: tuple[str, ...]
    delivery_limit: int = 5

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dlq"

    def arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": self.name,
            # Quorum queues dead-letter at-most-once unless told otherwise; at-least-once needs
            # reject-publish overflow. Nothing that fails may vanish.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


# Which service consumes which event: one screen shows the flow.
INGESTION_INSTANCE_RECEIVED = ConsumerQueue("ingestion.instance-received", ("instance.received",))
# Declared by every service, so audit events published while auth is down wait here for it.
AUTH_AUDIT = ConsumerQueue("auth.audit", ("audit.#",))
CONSUMER_QUEUES: tuple[ConsumerQueue, ...] = (INGESTION_INSTANCE_RECEIVED, AUTH_AUDIT)


class BusError(Exception):
    """The broker refused, returned or did not confirm a publish in time."""


class BadMessage(Exception):
    """Content that can never be processed: the consumer dead-letters it with this reason."""


class TransientError(Exception):
    """Infrastructure that failed for now (database, S3): retry with backoff, keep the message."""


class EventBus(Protocol):
    async def publish(
        self, event: Event, *, headers: dict[str, str] | None = None, mandatory: bool = True
    ) -> None: ...


Handler = Callable[[Event], Awaitable[None]]


async def declare_topology(
    channel: AbstractChannel, queues: Iterable[ConsumerQueue] = CONSUMER_QUEUES
) -> AbstractExchange:
    """Declare the exchanges, every consumer queue and its dead-letter queue (idempotent)."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    dlx = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for spec in queues:
        dlq = await channel.declare_queue(
            spec.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dlq.bind(dlx, routing_key=spec.name)
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments())
        for key in spec.routing_keys:
            await queue.bind(exchange, routing_key=key)
    return exchange


class AioPikaBus:
    """Publishes events persistently with confirms and consumes them with manual acks."""

    def __init__(self, connection: AbstractRobustConnection, source: str, *, timeout: float = 5.0):
        self._connection = connection
        self._source = source
        self._timeout = timeout
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._dlx: AbstractExchange | None = None
        self._consumer_channels: list[AbstractChannel] = []

    @classmethod
    async def connect(cls, url: str, source: str, *, timeout: float = 5.0) -> AioPikaBus:
        # Reconnect every second (aio-pika's default is 5 s): while the broker is away the
        # listener answers 0xA700, so every second of delay is a second of refused C-STOREs.
        connection = await aio_pika.connect_robust(
            url, timeout=timeout, reconnect_interval=RECONNECT_INTERVAL
        )
        bus = cls(connection, source, timeout=timeout)
        await bus._open()
        return bus

    async def _open(self) -> None:
        # on_return_raises: a mandatory publish that no queue takes fails instead of vanishing.
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._exchange = await declare_topology(self._channel)
        self._dlx = await self._channel.get_exchange(DEAD_LETTER_EXCHANGE)

    @property
    def connection(self) -> AbstractRobustConnection:
        return self._connection

    async def publish(
        self, event: Event, *, headers: dict[str, str] | None = None, mandatory: bool = True
    ) -> None:
        """Publish ``event`` on ``edge.events``; return only once the broker confirmed it.

        ``mandatory`` (the default) makes an event that no queue takes an error: right for work
        the suite itself must do (``instance.received``). Catalog events for outside subscribers
        go out with ``mandatory=False``: having no subscriber yet is normal, and the change feed
        (``GET /api/changes``) keeps every one of them for whoever comes later.
        """
        assert self._exchange is not None
        body = to_body(event)
        attributes = safe_attributes(
            {
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.destination.name": EXCHANGE,
                "messaging.rabbitmq.destination.routing_key": event.name,
                "messaging.message.id": str(event.id),
                "messaging.message.body.size": len(body),
                "edge.event": event.name,
                "dicom.study_uid": event.subject(),
            }
        )
        with tracer.start_as_current_span(
            f"publish {event.name}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            message_headers: dict[str, Any] = {**to_headers(event, self._source), **(headers or {})}
            inject(message_headers)  # this span becomes the consumer's parent
            message = aio_pika.Message(
                body=body,
                headers=message_headers,
                content_type=CONTENT_TYPE,
                message_id=str(event.id),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            started = time.monotonic()
            try:
                await asyncio.wait_for(
                    self._exchange.publish(message, routing_key=event.name, mandatory=mandatory),
                    self._timeout,
                )
            except Exception as exc:  # broker down, nack, return, timeout: all mean "not durable"
                PUBLISH_SECONDS.labels(event.name, "failed").observe(time.monotonic() - started)
                record_failure(span, exc)
                raise BusError(f"publish of {event.name} not confirmed: {exc!r}") from exc
            PUBLISH_SECONDS.labels(event.name, "confirmed").observe(time.monotonic() - started)
            EVENTS_PUBLISHED.labels(event.name).inc()

    async def dead_letter(
        self, queue: ConsumerQueue, message: AbstractIncomingMessage, reason: str
    ) -> None:
        """Put ``message`` on the queue's dead-letter queue with a reason, confirmed."""
        assert self._dlx is not None
        headers = dict(message.headers or {})
        headers[REASON_HEADER] = reason[:1000]
        copy = aio_pika.Message(
            body=message.body,
            headers=headers,
            content_type=message.content_type,
            message_id=message.message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await asyncio.wait_for(
            self._dlx.publish(copy, routing_key=queue.name, mandatory=True), self._timeout
        )

    async def consume(
        self,
        queue: ConsumerQueue,
        handler: Handler,
        *,
        prefetch: int = 16,
        retry: RetryPolicy | None = None,
    ) -> Consumer:
        """Start consuming ``queue`` with ``handler``; see :class:`Consumer` for the outcomes."""
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        self._consumer_channels.append(channel)
        amqp_queue = await channel.get_queue(queue.name, ensure=True)
        consumer = Consumer(self, queue, handler, retry or RetryPolicy())
        consumer.tag = await amqp_queue.consume(consumer.on_message)
        consumer.amqp_queue = amqp_queue
        return consumer

    async def close(self, timeout: float = 5.0) -> None:
        """Close the consumer channels and the connection, each bounded by ``timeout``."""
        for channel in self._consumer_channels:
            if not channel.is_closed:
                await close_bounded(channel.close(), timeout)
        await close_bounded(self._connection.close(), timeout)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for infrastructure errors: the message is held, not requeued, so the broker's
    delivery limit is kept for messages that really cannot be processed."""

    first_delay: float = 0.2
    max_delay: float = 10.0

    def delays(self) -> Iterable[float]:
        delay = self.first_delay
        while True:
            yield delay
            delay = min(delay * 2, self.max_delay)


class Consumer:
    """Runs the handler for each message and settles it by the outcome.

    - success: ack (after the handler returned, i.e. after its work committed);
    - :class:`BadMessage` or an undecodable message: dead-letter with the reason, then ack;
    - :class:`TransientError`: retry in place with backoff until it works or we shut down;
    - anything else: requeue; on the last allowed delivery, dead-letter with the reason.
    """

    def __init__(self, bus: AioPikaBus, queue: ConsumerQueue, handler: Handler, retry: RetryPolicy):
        self.bus = bus
        self.queue = queue
        self.handler = handler
        self.retry = retry
        self.tag: str | None = None
        self.amqp_queue: Any = None
        self.stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._settle(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _settle(self, message: AbstractIncomingMessage) -> None:
        """Handle one delivery inside a CONSUMER span that continues the publisher's trace."""
        headers = dict(message.headers or {})
        started = time.monotonic()
        lag = _queue_lag(headers)
        if lag is not None:
            QUEUE_LAG_SECONDS.labels(self.queue.name).observe(lag)
        attributes = safe_attributes(
            {
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.destination.name": EXCHANGE,
                "messaging.rabbitmq.destination.routing_key": message.routing_key,
                "messaging.message.id": _text(headers.get("ce-id")) or None,
                "edge.queue": self.queue.name,
                "edge.event.type": _text(headers.get("ce-type")) or None,
                "edge.delivery_count": _delivery_count(message) + 1,
                "dicom.study_uid": _text(headers.get("ce-subject")) or None,
            }
        )
        with tracer.start_as_current_span(
            f"process {self.queue.name}",
            context=extract(headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            outcome = "failed"
            try:
                outcome = await self._handle(message, headers, span)
            finally:
                span.set_attribute("edge.outcome", outcome)
                HANDLE_SECONDS.labels(self.queue.name, outcome).observe(time.monotonic() - started)

    async def _handle(
        self, message: AbstractIncomingMessage, headers: dict[str, Any], span: Span
    ) -> str:
        """Run the handler and settle the message; return how it was settled."""
        try:
            event = from_parts(headers, message.body)
        except UndecodableMessage as exc:
            record_failure(span, exc)
            await self._dead_letter(message, f"undecodable: {exc}")
            return "dead-lettered"
        delays = iter(self.retry.delays())
        while True:
            try:
                await self.handler(event)
            except BadMessage as exc:
                record_failure(span, exc)
                await self._dead_letter(message, str(exc))
                return "dead-lettered"
            except TransientError as exc:
                if self.stopping.is_set():
                    await message.nack(requeue=True)
                    return "requeued"
                delay = next(delays)
                span.add_event("retry", safe_attributes({"error.type": type(exc).__name__}))
                log.warning(
                    "%s: transient failure, retry in %.1fs: %s", self.queue.name, delay, exc
                )
                try:
                    await asyncio.wait_for(self.stopping.wait(), delay)
                except TimeoutError:
                    pass
                continue
            except Exception as exc:
                record_failure(span, exc)
                log.exception("%s: handler failed on %s", self.queue.name, message.message_id)
                count = _delivery_count(message)
                if count + 1 >= self.queue.delivery_limit:
                    await self._dead_letter(message, f"failed {count + 1} times: {exc!r}")
                    return "dead-lettered"
                await message.nack(requeue=True)
                return "requeued"
            await message.ack()
            return "acked"

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        log.error("%s: dead-lettering %s: %s", self.queue.name, message.message_id, reason)
        await self.bus.dead_letter(self.queue, message, reason)
        await message.ack()

    async def stop(self, timeout: float = 20.0) -> None:
        """Stop taking messages and let the ones in flight finish (graceful shutdown)."""
        if self.amqp_queue is not None and self.tag is not None:
            await close_bounded(self.amqp_queue.cancel(self.tag), 5.0)
        self.stopping.set()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=timeout)


async def close_bounded(awaitable: Awaitable[Any], timeout: float) -> None:
    """Await a close/cancel for at most ``timeout`` s: a robust connection busy reconnecting to
    a vanished broker would otherwise hold a shutdown up indefinitely."""
    try:
        await asyncio.wait_for(awaitable, timeout)
    except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError) as exc:
        log.warning("close did not complete cleanly: %r", exc)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _queue_lag(headers: dict[str, Any]) -> float | None:
    """Seconds from the event's ``ce-time`` to now (None without a readable time)."""
    try:
        sent = datetime.fromisoformat(_text(headers.get("ce-time")))
    except ValueError:
        return None
    if sent.tzinfo is None:
        return None
    return max(0.0, (datetime.now(UTC) - sent).total_seconds())


def _delivery_count(message: AbstractIncomingMessage) -> int:
    # Quorum queues count earlier deliveries in x-delivery-count (absent on the first one).
    value = (message.headers or {}).get("x-delivery-count", 0)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
