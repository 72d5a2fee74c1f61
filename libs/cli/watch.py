"""``edge watch``: print the events on ``edge.events`` as they arrive.

By default the events come through a private queue (exclusive, auto-delete, named by the broker)
that lives as long as the command. ``--queue NAME`` declares a durable quorum queue instead, so an
operator can stop and resume without losing events; it stays until deleted by hand.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from rich.console import Console
from rich.filesize import decimal
from rich.text import Text

from edge.common.bus import EXCHANGE, close_bounded, declare_topology
from edge.common.events import (
    CONTENT_TYPE,
    EVENTS_BY_NAME,
    AeChanged,
    CatalogEvent,
    Event,
    InstanceReceived,
    InstanceReplaced,
    InstanceStored,
    StudyArrived,
    StudyUpdated,
    from_parts,
    to_structured,
)

ALL = "#"
PREFETCH = 64
TRACE_CONTEXT = ("traceparent", "tracestate")  # W3C headers, not ce-*: the tracing SDK sets them


@dataclass(frozen=True)
class WatchOptions:
    routing_keys: tuple[str, ...] = (ALL,)
    queue: str | None = None
    as_json: bool = False
    count: int | None = None
    timeout: float | None = None

    def exit_code(self, seen: int) -> int:
        """0, unless ``--count`` asked for more events than came."""
        return 0 if self.count is None or seen >= self.count else 1


def unknown_routing_keys(keys: tuple[str, ...]) -> list[str]:
    """Keys that are neither an event name nor a pattern (``*``, ``#``): most likely typos."""
    return [key for key in keys if key not in EVENTS_BY_NAME and not {"*", "#"} & set(key)]


def run(url: str, options: WatchOptions, console: Console) -> int:
    """Watch until ``--count`` events, ``--timeout`` or Ctrl-C; return the exit code."""
    status = Console(stderr=True, soft_wrap=True)
    if unknown := unknown_routing_keys(options.routing_keys):
        status.print(f"unknown event type {', '.join(unknown)}; known: {', '.join(EVENTS_BY_NAME)}")
        return 2
    printer = Printer(console, status, options.as_json)
    try:
        return asyncio.run(watch(url, options, printer))
    except KeyboardInterrupt:  # before the signal handlers were in place
        return options.exit_code(printer.events)
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        status.print(f"[red]queue {options.queue!r} exists with other settings: {exc}[/]")
        return 1
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        status.print(f"[red]broker unreachable: {exc!r}[/]")
        return 1


async def watch(url: str, options: WatchOptions, printer: Printer) -> int:
    connection = await aio_pika.connect(url, timeout=10)
    stop = asyncio.Event()
    lost: list[BaseException | None] = []

    def on_close(_: Any, exc: BaseException | None = None) -> None:
        if not stop.is_set():
            lost.append(exc)
            stop.set()

    connection.close_callbacks.add(on_close)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        channel = await connection.channel()
        prefetch = min(options.count or PREFETCH, PREFETCH)
        await channel.set_qos(prefetch_count=prefetch)
        queue = await _bound_queue(channel, options)
        printer.ready(queue.name, options)
        acked, held = 0, list[AbstractIncomingMessage]()

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal acked
            if stop.is_set():
                return  # left unacked: the broker keeps it for the next reader of the queue
            if not printer.show(message):
                await message.ack()  # undecodable: shown, and no use to anyone redelivered
            elif options.count is None or acked < options.count - prefetch:
                acked += 1
                await message.ack()
            else:
                # Acking now would free a prefetch slot for an event past --count, taken from a
                # resumable queue and returned out of order: ack once the consumer is cancelled.
                held.append(message)
            if options.count is not None and printer.events >= options.count:
                stop.set()

        tag = await queue.consume(on_message)
        try:
            await asyncio.wait_for(stop.wait(), options.timeout)
        except TimeoutError:
            pass
        stop.set()
        if lost:
            printer.status.print(f"[red]connection to the broker lost: {lost[0]!r}[/]")
            return 1
        await close_bounded(queue.cancel(tag), 5.0)
        for message in held:
            await message.ack()
        return options.exit_code(printer.events)
    finally:
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await close_bounded(connection.close(), 5.0)


async def _bound_queue(channel: AbstractChannel, options: WatchOptions) -> AbstractQueue:
    # The exchange exactly as the services declare it, so watching may start before they do.
    exchange = await declare_topology(channel, queues=())
    if options.queue:
        # Quorum queues are durable and replicated; the type is explicit, never a broker default.
        queue = await channel.declare_queue(
            options.queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
    else:
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    for key in options.routing_keys:
        await queue.bind(exchange, routing_key=key)
    return queue


class Printer:
    """One line per message: a rich summary for people, or a structured CloudEvent for scripts."""

    def __init__(self, console: Console, status: Console, as_json: bool):
        self.console = console
        self.status = status
        self.as_json = as_json
        self.events = 0

    def ready(self, queue: str, options: WatchOptions) -> None:
        keys = ", ".join(options.routing_keys)
        self.status.print(f"watching {EXCHANGE} ({keys}) through queue {queue}", highlight=False)

    def show(self, message: AbstractIncomingMessage) -> bool:
        """Print ``message``; False if it is not one of our events."""
        headers = dict(message.headers or {})
        try:
            event = from_parts(headers, message.body)
        except ValueError as exc:  # UndecodableMessage, or header bytes that are not UTF-8
            line = Text.assemble(("undecodable", "bold red"), f" {message.routing_key}: {exc}")
            (self.status if self.as_json else self.console).print(line, soft_wrap=True)
            return False
        self.events += 1
        if self.as_json:
            print(json.dumps(structured(headers, message.content_type, event)), flush=True)
        else:
            self.console.print(summary_line(event), soft_wrap=True)
        return True


def structured(headers: dict[str, Any], content_type: str | None, event: Event) -> dict[str, Any]:
    """The event as a structured-mode CloudEvent (the change feed's form, with the source it was
    published by) plus the W3C trace context (distributed-tracing extension) if present."""
    document = to_structured(event, _text(headers.get("ce-source")))
    data = document.pop("data")
    document["datacontenttype"] = content_type or CONTENT_TYPE
    for key in TRACE_CONTEXT:
        if key in headers:
            document[key] = _text(headers[key])
    return {**document, "data": data}


def summary_line(event: Event) -> Text:
    sequence = f"#{event.sequence}" if isinstance(event, CatalogEvent) else ""
    return Text.assemble(
        (event.time.astimezone().strftime("%H:%M:%S.%f")[:-3], "dim"),
        " ",
        (f"{event.name:<17}", "bold cyan"),
        " ",
        event.subject() or "-",
        " ",
        (sequence, "magenta"),
        " ",
        summarize(event),
    )


def summarize(event: Event) -> str:
    """A compact account of the data; the nearest summarizer up the class hierarchy decides."""
    for cls in type(event).__mro__:
        if cls in SUMMARIES:
            return SUMMARIES[cls](event)
    return json.dumps(event.data(), separators=(",", ":"))[:160]


def _instance(e: InstanceReceived | InstanceStored) -> str:
    return f"{e.sop_instance_uid} {decimal(e.size)} from {e.calling_ae}"


def _study(e: StudyArrived) -> str:
    modalities = "/".join(e.modalities) or "no modality"
    return (
        f"{e.instance_count} instances, {e.series_count} series, {modalities}, {decimal(e.bytes)}"
    )


def _updated(e: StudyUpdated) -> str:
    c = e.changes
    return f"{_study(e)} (+{c.instances_added} new, {c.instances_replaced} replaced)"


SUMMARIES: dict[type[Event], Callable[[Any], str]] = {
    InstanceReceived: _instance,
    InstanceStored: lambda e: f"{e.modality or '-'} {_instance(e)}",
    InstanceReplaced: lambda e: f"{e.modality or '-'} {_instance(e)} (replaced)",
    StudyArrived: _study,
    StudyUpdated: _updated,
    AeChanged: lambda e: f"{e.ae_title} {e.change}",
}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
