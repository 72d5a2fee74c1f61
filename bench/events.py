"""What a downstream subscriber sees during the ingest benchmark (used by ``bench/ingest.py``).

:class:`EventWatcher` binds its own exclusive queue on ``edge.events`` (as an integrator's
system would) and timestamps every catalog event on arrival, in a thread of its own so the
benchmark's clock is not held up by it. From its records:

- announcement latency: from the last C-STORE response of a study to its ``study.arrived``,
  minus ``EDGE_STABLE_AFTER`` (the quiet period the study must first go through);
- relay throughput: :func:`relay_throughput` queues N events straight into the outbox table
  (copies of a real ``instance.stored``) and times the relay numbering, publishing and the
  broker delivering all of them to the watcher.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import aio_pika
import psycopg
from psycopg.types.json import Jsonb

from edge.common.bus import EXCHANGE
from edge.common.events import Event, StudyArrived, UndecodableMessage, from_parts


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() on arrival
    event: Event


class EventWatcher:
    """Every event with one of ``routing_keys``, timestamped on arrival. Bind only what is
    measured: the watcher shares the CPU with the suite under test."""

    def __init__(self, amqp_url: str, routing_keys: tuple[str, ...] = ("study.*",)) -> None:
        self.amqp_url = amqp_url
        self.routing_keys = routing_keys
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="event-watcher")
        self._error: BaseException | None = None

    def start(self, timeout: float = 15.0) -> EventWatcher:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"event watcher did not bind its queue: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._consume())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _consume(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connection = await aio_pika.connect_robust(self.amqp_url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1000)
            exchange = await channel.get_exchange(EXCHANGE)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            for key in self.routing_keys:
                await queue.bind(exchange, routing_key=key)

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                at = time.monotonic()
                try:
                    event = from_parts(dict(message.headers or {}), message.body)
                except UndecodableMessage:
                    await message.ack()
                    return
                with self._lock:
                    self.seen.append(Seen(at, event))
                await message.ack()

            await queue.consume(on_message)
            self._ready.set()
            await self._stop.wait()
        finally:
            await connection.close()

    def count(self, name: str) -> int:
        with self._lock:
            return sum(1 for s in self.seen if s.event.name == name)

    def wait_study_arrived(self, study_uid: str, timeout: float) -> float | None:
        """When ``study.arrived`` for ``study_uid`` came (monotonic), or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for s in self.seen:
                    if type(s.event) is StudyArrived and s.event.study_uid == study_uid:
                        return s.at
            time.sleep(0.01)
        return None


def relay_throughput(
    database_url: str, amqp_url: str, count: int, timeout: float = 300.0
) -> dict[str, float | int | None]:
    """Queue ``count`` copies of a real ``instance.stored`` in the outbox in one transaction and
    time the relay until a subscriber to ``instance.stored`` has received every one."""
    watcher = EventWatcher(amqp_url, ("instance.stored",)).start()
    try:
        return _relay_throughput(database_url, watcher, count, timeout)
    finally:
        watcher.stop()


def _relay_throughput(
    database_url: str, watcher: EventWatcher, count: int, timeout: float
) -> dict[str, float | int | None]:
    before = watcher.count("instance.stored")
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT subject, payload FROM outbox WHERE event_type = 'instance.stored' LIMIT 1"
        ).fetchone()
        if row is None:
            return {"events": 0, "seconds": None, "events_per_s": None}
        started = time.monotonic()
        conn.execute(
            "INSERT INTO outbox (event_type, subject, payload)"
            " SELECT 'instance.stored', %s, %s FROM generate_series(1, %s)",
            (row[0], Jsonb(row[1]), count),
        )
    deadline = started + timeout
    while watcher.count("instance.stored") < before + count and time.monotonic() < deadline:
        time.sleep(0.02)
    received = watcher.count("instance.stored") - before
    seconds = time.monotonic() - started
    return {
        "events": received,
        "seconds": round(seconds, 3),
        "events_per_s": round(received / seconds, 1) if seconds > 0 else None,
    }
