"""AMQP adapter of ingestion: which event goes to which handler, in one table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from edge.common.bus import BadMessage
from edge.common.events import Event, InstanceReceived
from edge.ingestion.handlers import IngestionDeps, on_instance_received

HANDLERS: dict[type[Event], Callable[[Any, IngestionDeps], Awaitable[object]]] = {
    InstanceReceived: on_instance_received,
}


def dispatcher(deps: IngestionDeps) -> Callable[[Event], Awaitable[None]]:
    async def dispatch(event: Event) -> None:
        handler = HANDLERS.get(type(event))
        if handler is None:
            raise BadMessage(f"ingestion does not handle {event.name}")
        await handler(event, deps)

    return dispatch
