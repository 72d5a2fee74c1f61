"""The two loops that turn catalog changes into events, safely across replicas.

- :class:`Announcer`: claims studies that have been quiet for ``EDGE_STABLE_AFTER`` seconds
  (``FOR UPDATE SKIP LOCKED``), writes their ``study.arrived``/``study.updated`` to the outbox and
  stops their timer, in one transaction. The timer is rows in Postgres: a restart, a crash or a
  different number of replicas changes nothing.
- :class:`Relay`: numbers committed outbox rows (the change-feed ``sequence``) and publishes them
  with confirms, then marks them published. A crash in between re-publishes the same events
  (same ``ce-id``): at-least-once, never lost.

Both wake on a local nudge (ingestion committed something) and otherwise poll, so that work
another replica committed is picked up within ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from opentelemetry import trace
from prometheus_client import Counter, Gauge

from edge.common.bus import EventBus
from edge.common.catalog import CatalogUnavailable, EventLog, OutboxEntry
from edge.common.tracing import extract, inject, safe_attributes
from edge.ingestion.announce import announcement, summary_of

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

STUDIES_ANNOUNCED = Counter(
    "edge_studies_announced", "Study announcements written to the outbox", ["event"]
)
OUTBOX_PUBLISHED = Counter("edge_outbox_published", "Outbox events published and confirmed")
PRUNE_EVERY = 300.0  # seconds between retention sweeps when idle
OUTBOX_BACKLOG = Gauge("edge_outbox_backlog", "Outbox events not yet published")


class _Loop:
    """A background task that runs ``step`` until it finds nothing to do, then waits for a
    nudge or ``poll_interval``; database outages are retried with backoff.

    ``linger``: after a step that did less than a full ``batch``, wait that long before the
    next, so that work arriving one commit at a time is taken in batches (fewer transactions
    per event under load, at most ``linger`` more latency)."""

    name = "loop"
    batch = 1

    def __init__(self, poll_interval: float, start_after: float = 0.0, linger: float = 0.0) -> None:
        self.poll_interval = poll_interval
        self.start_after = start_after
        self.linger = linger
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.warning("%s did not stop within %.0fs; cancelled", self.name, timeout)

    async def step(self) -> int:
        raise NotImplementedError

    async def _run(self) -> None:
        delay = self.poll_interval
        if self.start_after > 0:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.start_after)
            except TimeoutError:
                pass
        while not self._stopping.is_set():
            try:
                done = await self.step()
                delay = self.poll_interval
            except (CatalogUnavailable, ConnectionError, OSError) as exc:
                log.warning("%s: %s; retrying in %.1fs", self.name, exc, delay)
                done = 0
                delay = min(delay * 2, 10.0)
            except Exception:  # a bug must not silently end the loop that announces studies
                log.exception("%s step failed", self.name)
                done = 0
                delay = min(delay * 2, 10.0)
            if done >= self.batch:
                continue
            if not done:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
            if self.linger > 0:
                await asyncio.sleep(self.linger)


class Announcer(_Loop):
    name = "announcer"

    def __init__(
        self,
        log_: EventLog,
        *,
        stable_after: float,
        poll_interval: float,
        batch: int = 50,
        announced: Callable[[], None] = lambda: None,
        start_after: float = 0.0,
    ) -> None:
        super().__init__(poll_interval, start_after)
        self.events = log_
        self.stable_after = stable_after
        self.batch = batch
        self.announced = announced

    async def step(self) -> int:
        """Announce up to ``batch`` due studies in one transaction; returns how many."""
        async with self.events.transaction() as tx:
            due = await tx.claim_due_studies(self.stable_after, self.batch)
            for study in due:
                series = await tx.study_series(study.pk)
                parent = extract(dict(study.trace_context))
                with tracer.start_as_current_span(
                    "study announce",
                    context=parent,
                    attributes=safe_attributes({"dicom.study_uid": study.study_uid}),
                ) as span:
                    if not series:  # every instance gone: nothing to announce
                        await tx.mark_announced(study.pk, summary_of(series), None)
                        continue
                    event = announcement(study, series)
                    span.set_attributes(
                        safe_attributes(
                            {
                                "edge.event": event.name,
                                "dicom.instance_count": event.instance_count,
                                "dicom.series_count": event.series_count,
                            }
                        )
                    )
                    headers: dict[str, str] = {}
                    inject(headers)
                    outbox_pk = await tx.add_outbox(event, headers)
                    await tx.mark_announced(study.pk, summary_of(series), outbox_pk)
                STUDIES_ANNOUNCED.labels(event.name).inc()
                log.info(
                    "%s %s: %d series, %d instances",
                    event.name,
                    study.study_uid,
                    event.series_count,
                    event.instance_count,
                )
        if due:
            self.announced()
        return len(due)


class Relay(_Loop):
    name = "outbox-relay"

    def __init__(
        self,
        log_: EventLog,
        bus: EventBus,
        *,
        poll_interval: float,
        retention: float | None = None,
        batch: int = 200,
        linger: float = 0.02,
    ) -> None:
        super().__init__(poll_interval, linger=linger)
        self.events = log_
        self.bus = bus
        self.retention = retention
        self.batch = batch
        self._next_prune = 0.0

    async def step(self) -> int:
        """Number what has committed, publish what is numbered; returns events published."""
        await self.events.number_outbox(self.batch)
        published = await self.events.publish_outbox(self._publish, self.batch)
        OUTBOX_PUBLISHED.inc(published)
        if not published:
            unnumbered, unpublished = await self.events.outbox_backlog()
            OUTBOX_BACKLOG.set(unnumbered + unpublished)
            await self._prune()
        return published

    async def _prune(self) -> None:
        now = asyncio.get_running_loop().time()
        if self.retention is None or now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        pruned = await self.events.prune_changes(self.retention)
        if pruned:
            log.info("pruned %d events older than the change-feed retention", pruned)

    async def _publish(self, entries: list[OutboxEntry]) -> None:
        # One channel keeps publish order; confirms are awaited together, not one by one.
        await asyncio.gather(*(self._publish_one(entry) for entry in entries))

    async def _publish_one(self, entry: OutboxEntry) -> None:
        parent = extract(entry.headers)
        with tracer.start_as_current_span(
            f"{entry.event.name} relay",
            context=parent,
            kind=trace.SpanKind.INTERNAL,
            attributes=safe_attributes({"edge.sequence": entry.event.sequence}),
        ):
            # Subscribers need not exist: the change feed keeps every event for them.
            await self.bus.publish(entry.event, mandatory=False)
