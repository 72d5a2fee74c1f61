"""The storage scrub: objects written but never announced are announced (ARCHITECTURE.md, Rule 1).

A crash between the listener's S3 write and its confirmed ``instance.received`` leaves an object
that no catalog row points at. A pass lists the bucket under ``studies/`` one page at a time, asks
the catalog which of the page's keys it knows, and announces every object older than the grace
period that has no row, or whose row holds another SHA-256 (new bytes replaced the object and
were never announced). Ingestion is idempotent, so an extra announcement costs a message, never
a second row.

What a process remembers, so that a pass stays cheap on a bucket of millions of objects:

- ``verified_before``, the cutoff of its last complete pass: a catalogued object not modified
  since then was compared by that pass and is not looked at again. Only the first pass of a
  process, and objects modified since, cost a HEAD each; every page costs one indexed query.
- a bounded memo of the objects it announced or could not announce, by listing fingerprint
  (ETag, size, date). An announcement waits, durable, on a quorum queue until ingestion catalogues
  or dead-letters it, so announcing the same bytes again could only add a copy to the DLQ. New
  bytes have a new fingerprint and are looked at afresh. A restart forgets: a broken object is
  reported once per process lifetime, not once per pass.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import islice

from prometheus_client import Counter

from edge.common.bus import BusError, EventBus
from edge.common.catalog import Catalog, CatalogUnavailable
from edge.common.events import InstanceReceived
from edge.common.store import ObjectStore, ObjectStoreError, StoredObject
from edge.storage.describe import Unannounceable, Vanished, describe, parse_instance_key

log = logging.getLogger(__name__)

PREFIX = "studies/"
MEMO_SIZE = 100_000  # entries of ~200 bytes: a bounded ~20 MB however broken the bucket is

SCANNED = Counter("edge_scrub_objects_scanned", "Objects listed by the storage scrub")
ANNOUNCED = Counter("edge_scrub_objects_announced", "Unannounced objects the scrub announced")
UNPARSABLE = Counter(
    "edge_scrub_objects_unparsable", "Objects the scrub found unannounced but cannot announce"
)


class Outcome(StrEnum):
    """What a pass did with one listed object (the names of :class:`ScrubReport`'s counts)."""

    FOREIGN = "foreign"  # not an instance key: not ours to announce
    YOUNG = "young"  # inside the grace period: its own announcement may be in flight
    REMEMBERED = "remembered"  # this process announced it or gave up on it; unchanged since
    CURRENT = "current"  # catalogued with these very bytes
    ANNOUNCED = "announced"
    UNPARSABLE = "unparsable"
    SUPERSEDED = "superseded"  # its SOP Instance UID is catalogued at another key, as new
    VANISHED = "vanished"  # deleted between the listing and the look


@dataclass
class ScrubReport:
    """What one pass saw and did: the summary it logs and ``POST /api/scrub`` answers."""

    scanned: int = 0
    foreign: int = 0
    young: int = 0
    remembered: int = 0
    current: int = 0
    announced: int = 0
    unparsable: int = 0
    superseded: int = 0
    vanished: int = 0
    complete: bool = False
    error: str | None = None
    seconds: float = 0.0

    def count(self, outcome: Outcome) -> None:
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Pacer:
    """Spaces :meth:`wait` returns at least ``1/rate`` seconds apart (``rate`` 0: no limit).

    No bursts: time spent idle earns no credit. ``clock`` and ``sleep`` are injectable, so tests
    check the spacing without waiting.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = -math.inf

    async def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        if now < self._next:
            await self._sleep(self._next - now)
            now = self._next
        self._next = now + self._interval


Fingerprint = tuple[str | None, int, datetime | None]


def fingerprint(obj: StoredObject) -> Fingerprint:
    """What a listing says about an object's version: new bytes change it."""
    return obj.etag, obj.size, obj.last_modified


class Memo:
    """Objects this process announced (with the SHA-256 announced) or gave up on (None), by
    fingerprint. Past ``limit`` entries the oldest are forgotten, and may be announced again."""

    def __init__(self, limit: int = MEMO_SIZE) -> None:
        self._limit = limit
        self._entries: OrderedDict[str, tuple[Fingerprint, str | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def knows(self, obj: StoredObject) -> bool:
        entry = self._entries.get(obj.key)
        return entry is not None and entry[0] == fingerprint(obj)

    def remember(self, obj: StoredObject, sha256: str | None) -> None:
        self._entries[obj.key] = (fingerprint(obj), sha256)
        self._entries.move_to_end(obj.key)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def settle(self, key: str, catalogued_sha256: str | None) -> None:
        """Forget an announcement once the catalog holds what it announced."""
        entry = self._entries.get(key)
        if entry is not None and catalogued_sha256 is not None and entry[1] == catalogued_sha256:
            del self._entries[key]


def screen(obj: StoredObject, cutoff: datetime) -> Outcome | None:
    """Before the catalog is asked: None when ``obj`` is an instance old enough to check.

    An object without a date (no S3 listing omits it) counts as old: announcing it at worst
    costs ingestion one idempotent message.
    """
    if parse_instance_key(obj.key) is None:
        return Outcome.FOREIGN
    if obj.last_modified is not None and obj.last_modified > cutoff:
        return Outcome.YOUNG
    return None


def triage(
    obj: StoredObject,
    catalogued_sha256: str | None,
    *,
    verified_before: datetime | None,
    memo: Memo,
) -> Outcome | None:
    """After the catalog answered: the outcome, or None when the object must be looked at
    (``describe``): uncatalogued, or catalogued but modified since the last complete pass."""
    if memo.knows(obj):
        return Outcome.REMEMBERED
    if catalogued_sha256 is None:
        return None
    if (
        verified_before is not None
        and obj.last_modified is not None
        and obj.last_modified <= verified_before
    ):
        return Outcome.CURRENT
    return None


def _page(listing: Iterator[StoredObject], size: int) -> list[StoredObject]:
    return list(islice(listing, size))


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Scrubber:
    """Runs scrub passes, one at a time, over ``store``, announcing on ``bus``."""

    def __init__(
        self,
        store: ObjectStore,
        catalog: Catalog,
        bus: EventBus,
        *,
        grace: float,
        batch: int,
        pacer: Pacer,
        now: Callable[[], datetime] = _utcnow,
        memo: Memo | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.bus = bus
        self.grace = timedelta(seconds=grace)
        self.batch = batch
        self.pacer = pacer
        self.memo = memo if memo is not None else Memo()
        self.verified_before: datetime | None = None
        self._now = now
        self._lock = asyncio.Lock()

    async def run_pass(self) -> ScrubReport:
        """One pass over the bucket, after any pass in progress. Infrastructure failures end the
        pass early (``complete`` False, ``error`` set); the next pass starts over."""
        async with self._lock:
            started = time.monotonic()
            cutoff = self._now() - self.grace
            report = ScrubReport()
            listing = self.store.list(PREFIX)  # a lazy iterator: each page is read in a thread
            try:
                while page := await asyncio.to_thread(_page, listing, self.batch):
                    await self._scrub_page(page, cutoff, report)
            except (ObjectStoreError, CatalogUnavailable, BusError) as exc:
                report.error = f"{type(exc).__name__}: {exc}"
            else:
                self.verified_before = cutoff
                report.complete = True
            finally:
                close = getattr(listing, "close", None)
                if close is not None:
                    close()
            report.seconds = round(time.monotonic() - started, 3)
            log.log(
                logging.INFO if report.complete else logging.WARNING,
                "scrub pass: %s",
                report.as_dict(),
            )
            return report

    async def _scrub_page(
        self, page: list[StoredObject], cutoff: datetime, report: ScrubReport
    ) -> None:
        report.scanned += len(page)
        SCANNED.inc(len(page))
        eligible = []
        for obj in page:
            outcome = screen(obj, cutoff)
            if outcome is None:
                eligible.append(obj)
            else:
                report.count(outcome)
        if not eligible:
            return
        catalogued = await self.catalog.catalogued_objects([obj.key for obj in eligible])
        for obj in eligible:
            sha256 = catalogued.get(obj.key)
            self.memo.settle(obj.key, sha256)
            outcome = triage(obj, sha256, verified_before=self.verified_before, memo=self.memo)
            report.count(outcome or await self._look(obj, sha256))

    async def _look(self, obj: StoredObject, catalogued_sha256: str | None) -> Outcome:
        try:
            event = await asyncio.to_thread(describe, self.store, obj, catalogued_sha256)
        except Vanished:
            return Outcome.VANISHED
        except Unannounceable as exc:
            # The key holds UIDs only and the reason is ours: no patient data reaches the log.
            log.warning("scrub: cannot announce %s: %s", obj.key, exc)
            UNPARSABLE.inc()
            self.memo.remember(obj, None)
            return Outcome.UNPARSABLE
        if event is None:
            return Outcome.CURRENT
        if catalogued_sha256 is None and await self._superseded(obj, event):
            self.memo.remember(obj, None)
            return Outcome.SUPERSEDED
        await self.pacer.wait()
        await self.bus.publish(event)
        ANNOUNCED.inc()
        self.memo.remember(obj, event.sha256)
        log.info("scrub: announced %s (sha256 %s)", obj.key, event.sha256[:12])
        return Outcome.ANNOUNCED

    async def _superseded(self, obj: StoredObject, event: InstanceReceived) -> bool:
        """True when the instance is catalogued at another key (it was re-sent with other study
        or series UIDs) with these bytes or bytes received since: announcing this copy would
        point the catalog back at the stale one. The copy stays in S3, unannounced."""
        row = await self.catalog.get_instance(event.sop_instance_uid)
        if row is None or row["object_key"] == obj.key:
            return False
        return bool(row["sha256"] == event.sha256 or row["received_at"] >= event.time)


async def scrub_periodically(scrubber: Scrubber, interval: float, stopping: asyncio.Event) -> None:
    """A pass now, then one every ``interval`` seconds until ``stopping`` is set."""
    while not stopping.is_set():
        try:
            await scrubber.run_pass()
        except Exception:  # a bug in one pass must not end scrubbing for the process's lifetime
            log.exception("scrub pass failed")
        try:
            await asyncio.wait_for(stopping.wait(), interval)
        except TimeoutError:
            pass
