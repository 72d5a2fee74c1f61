"""The storage scrub's decisions with the in-memory store and catalog and a recording bus."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from dicomfiles import add_pixels, make_dataset, write_part10
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from edge.common.bus import BusError
from edge.common.catalog import InMemoryCatalog, record_from_dataset
from edge.common.dicom import instance_key
from edge.common.events import Event, InstanceReceived
from edge.common.store import (
    OBJECT_META_CALLED_AE,
    OBJECT_META_CALLING_AE,
    OBJECT_META_TRANSFER_SYNTAX,
    StoredObject,
)
from edge.common.store_memory import InMemoryObjectStore
from edge.storage import api
from edge.storage.describe import UNKNOWN_AE, parse_instance_key
from edge.storage.scrub import Memo, Pacer, Scrubber
from edge.storage.settings import StorageSettings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LATER = timedelta(hours=1)  # how far ahead of the objects' dates the scrubber's clock runs


class RecordingBus:
    """An ``EventBus`` that keeps what it is given; ``fail`` makes publishing raise BusError."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail = False

    async def publish(
        self, event: Event, *, headers: dict[str, str] | None = None, mandatory: bool = True
    ) -> None:
        if self.fail:
            raise BusError("broker gone")
        self.events.append(event)


class CountingStore(InMemoryObjectStore):
    """Counts HEADs (stat), the per-object cost a pass must keep off verified objects."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: list[str] = []

    def stat(self, key: str) -> StoredObject | None:
        self.stats.append(key)
        return super().stat(key)


class RecordingCatalog(InMemoryCatalog):
    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[list[str]] = []

    async def catalogued_objects(self, keys: Sequence[str]) -> dict[str, str]:
        self.lookups.append(list(keys))
        return await super().catalogued_objects(keys)


class FakeTime:
    """A monotonic clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.publish_times: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def part10(tmp_path: Path, ds: Dataset | None = None, *, ts: str = ExplicitVRLittleEndian) -> bytes:
    ds = ds if ds is not None else add_pixels(make_dataset(), 4, 4)
    return write_part10(tmp_path / f"{generate_uid()}.dcm", ds, ts).read_bytes()


def key_of(data: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def put(store: InMemoryObjectStore, data: bytes, *, key: str | None = None, sender: bool = True):  # type: ignore[no-untyped-def]
    """Store ``data`` as the listener does (with its metadata unless ``sender`` is False)."""
    meta = (
        {
            OBJECT_META_CALLING_AE: "CT_SCANNER",
            OBJECT_META_CALLED_AE: "EDGE",
            OBJECT_META_TRANSFER_SYNTAX: ExplicitVRLittleEndian,
        }
        if sender
        else {}
    )
    key = key or key_of(data)
    store.put_bytes(key, data, metadata=meta)
    return key


async def catalogue(catalog: InMemoryCatalog, data: bytes, key: str) -> None:
    """What ingestion does with the announcement of ``data`` at ``key``."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    record = record_from_dataset(
        ds,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        object_key=key,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        calling_ae="CT_SCANNER",
        received_at=datetime.now(UTC),
    )
    await catalog.upsert_instance(record)


def scrubber(
    store: InMemoryObjectStore,
    catalog: InMemoryCatalog,
    bus: RecordingBus,
    *,
    ahead: timedelta = LATER,
    grace: float = 300,
    batch: int = 500,
    pacer: Pacer | None = None,
    memo: Memo | None = None,
) -> Scrubber:
    return Scrubber(
        store,
        catalog,
        bus,
        grace=grace,
        batch=batch,
        pacer=pacer or Pacer(0),
        now=lambda: datetime.now(UTC) + ahead,
        memo=memo,
    )


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def catalog() -> RecordingCatalog:
    return RecordingCatalog()


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


async def test_object_inside_the_grace_period_is_left_alone(store, catalog, bus, tmp_path):  # type: ignore[no-untyped-def]
    put(store, part10(tmp_path))
    report = await scrubber(store, catalog, bus, ahead=timedelta(0)).run_pass()
    assert (report.scanned, report.young, report.announced) == (1, 1, 0)
    assert bus.events == [] and catalog.lookups == [] and store.stats == []


async def test_old_uncatalogued_object_is_announced_with_the_listeners_facts(  # type: ignore[no-untyped-def]
    store, catalog, bus, tmp_path
) -> None:
    ds = add_pixels(make_dataset(), 4, 4)
    data = part10(tmp_path, ds)
    key = put(store, data)
    report = await scrubber(store, catalog, bus).run_pass()
    assert (report.announced, report.complete) == (1, True)
    [event] = bus.events
    assert isinstance(event, InstanceReceived)
    assert event.model_dump(exclude={"id", "time"}) == {
        "study_uid": ds.StudyInstanceUID,
        "series_uid": ds.SeriesInstanceUID,
        "sop_instance_uid": ds.SOPInstanceUID,
        "sop_class_uid": ds.SOPClassUID,
        "transfer_syntax_uid": ExplicitVRLittleEndian,
        "object_key": key,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "calling_ae": "CT_SCANNER",
        "called_ae": "EDGE",
    }
    # Received when it was stored, not when the scrub found it: ingestion files it so.
    assert event.time == store.objects[key].last_modified


async def test_object_stored_before_sender_metadata_gets_the_placeholder_and_its_own_syntax(  # type: ignore[no-untyped-def]
    store, catalog, bus, tmp_path
) -> None:
    put(store, part10(tmp_path, ts=ImplicitVRLittleEndian), sender=False)
    await scrubber(store, catalog, bus).run_pass()
    [event] = bus.events
    assert isinstance(event, InstanceReceived)
    assert (event.calling_ae, event.called_ae) == (UNKNOWN_AE, UNKNOWN_AE)
    assert event.transfer_syntax_uid == ImplicitVRLittleEndian


async def test_catalogued_object_with_the_same_bytes_is_not_announced(  # type: ignore[no-untyped-def]
    store, catalog, bus, tmp_path
) -> None:
    data = part10(tmp_path)
    key = put(store, data)
    await catalogue(catalog, data, key)
    report = await scrubber(store, catalog, bus).run_pass()
    assert (report.current, report.announced) == (1, 0)
    assert bus.events == []


async def test_catalogued_object_whose_bytes_were_replaced_is_announced_with_the_new_ones(  # type: ignore[no-untyped-def]
    store, catalog, bus, tmp_path
) -> None:
    ds = add_pixels(make_dataset(), 4, 4, fill=1)
    old = part10(tmp_path, ds)
    key = put(store, old)
    await catalogue(catalog, old, key)
    new = part10(tmp_path, add_pixels(ds, 4, 4, fill=2))
    put(store, new, key=key)  # the re-send whose instance.received never got out
    report = await scrubber(store, catalog, bus).run_pass()
    assert report.announced == 1
    [event] = bus.events
    assert isinstance(event, InstanceReceived)
    assert event.sha256 == hashlib.sha256(new).hexdigest() != hashlib.sha256(old).hexdigest()


async def test_announced_object_is_announced_once_per_process_while_ingestion_catches_up(  # type: ignore[no-untyped-def]
    store, catalog, bus, tmp_path
) -> None:
    data = part10(tmp_path)
    key = put(store, data)
    scrub = scrubber(store, catalog, bus)
    await scrub.run_pass()
    again = await scrub.run_pass()
    assert (again.remembered, again.announced, len(bus.events)) == (1, 0, 1)
    await catalogue(catalog, data, key)
    settled = await scrub.run_pass()
    assert (settled.current, len(scrub.memo)) == (1, 0)  # the memo lets go once catalogued


@pytest.mark.parametrize(
    "content",
    [
        b"this is not DICOM at all" * 40,
        b"\0" * 128 + b"DICM" + b"\xff" * 300,  # a preamble, then garbage
    ],
)
async def test_unparsable_object_is_counted_once_and_never_announced(  # type: ignore[no-untyped-def]
    store, catalog, bus, content, caplog
) -> None:
    key = instance_key(generate_uid(), generate_uid(), generate_uid())
    store.put_bytes(key, content)
    scrub = scrubber(store, catalog, bus)
    first = await scrub.run_pass()
    second = await scrub.run_pass()
    assert (first.unparsable, first.complete, bus.events) == (1, True, [])
    assert (second.unparsable, second.remembered) == (0, 1)
    assert key in caplog.text


async def test_object_filed_under_uids_it_does_not_carry_is_not_announced(  # type: ignore[no-untyped-def]
    store, catalog, bus, tmp_path
) -> None:
    data = part10(tmp_path)
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    put(store, data, key=instance_key(generate_uid(), ds.SeriesInstanceUID, ds.SOPInstanceUID))
    report = await scrubber(store, catalog, bus).run_pass()
    assert (report.unparsable, bus.events) == (1, [])


async def test_unannounceable_object_is_logged_by_key_without_patient_data(  # type: ignore[no-untyped-def]
    store, catalog, bus, tmp_path, caplog
) -> None:
    ds = add_pixels(make_dataset(PatientName="Secret^Patient"), 4, 4)
    data = part10(tmp_path, ds)
    key = key_of(data)
    cut = data[: len(data) // 3]  # the header ends inside an element
    store.put_bytes(key, cut)
    report = await scrubber(store, catalog, bus).run_pass()
    assert report.unparsable + report.announced == 1
    assert "Secret" not in caplog.text


async def test_copy_left_behind_by_a_resend_under_new_uids_is_not_announced(  # type: ignore[no-untyped-def]
    store, catalog, bus, tmp_path
) -> None:
    ds = add_pixels(make_dataset(), 4, 4)
    stale = part10(tmp_path, ds)
    put(store, stale)
    ds.StudyInstanceUID = generate_uid()  # corrected and sent again, then catalogued
    fresh = part10(tmp_path, ds)
    fresh_key = put(store, fresh)
    await catalogue(catalog, fresh, fresh_key)
    report = await scrubber(store, catalog, bus).run_pass()
    assert (report.superseded, report.current, report.announced) == (1, 1, 0)


async def test_foreign_keys_are_not_announced(store, catalog, bus) -> None:  # type: ignore[no-untyped-def]
    store.put_bytes("studies/1.2.3/notes.txt", b"hello")
    store.put_bytes("studies/1.2/series/1.3/instances/not-a-uid.dcm", b"x")
    report = await scrubber(store, catalog, bus).run_pass()
    assert (report.scanned, report.foreign, bus.events) == (2, 2, [])


async def test_pages_bound_every_catalog_lookup(store, catalog, bus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for _ in range(5):
        put(store, part10(tmp_path))
    report = await scrubber(store, catalog, bus, batch=2).run_pass()
    assert [len(keys) for keys in catalog.lookups] == [2, 2, 1]
    assert (report.scanned, report.announced) == (5, 5)


async def test_catalogued_objects_verified_by_a_complete_pass_are_not_looked_at_again(  # type: ignore[no-untyped-def]
    store, catalog, bus, tmp_path
) -> None:
    for _ in range(3):
        data = part10(tmp_path)
        await catalogue(catalog, data, put(store, data))
    scrub = scrubber(store, catalog, bus)
    await scrub.run_pass()
    assert len(store.stats) == 3  # the first pass of a process compares every object
    store.stats.clear()
    again = await scrub.run_pass()
    assert (again.current, store.stats) == (3, [])


async def test_store_failure_ends_the_pass_early_and_the_next_pass_starts_over(  # type: ignore[no-untyped-def]
    store, catalog, bus, tmp_path
) -> None:
    put(store, part10(tmp_path))
    scrub = scrubber(store, catalog, bus)
    store.broken = True
    failed = await scrub.run_pass()
    assert (failed.complete, bus.events, scrub.verified_before) == (False, [], None)
    assert failed.error and "ObjectStoreError" in failed.error
    store.broken = False
    assert (await scrub.run_pass()).announced == 1


async def test_unconfirmed_announcement_is_made_again_on_the_next_pass(  # type: ignore[no-untyped-def]
    store, catalog, bus, tmp_path
) -> None:
    put(store, part10(tmp_path))
    scrub = scrubber(store, catalog, bus)
    bus.fail = True
    failed = await scrub.run_pass()
    assert (failed.complete, failed.announced) == (False, 0)
    bus.fail = False
    assert (await scrub.run_pass()).announced == 1


async def test_announcements_are_spaced_by_the_rate_limit(store, catalog, bus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake = FakeTime()
    publish = bus.publish

    async def timed(event: Event, **kwargs: object) -> None:
        fake.publish_times.append(fake.now)
        await publish(event)

    bus.publish = timed  # type: ignore[method-assign]
    for _ in range(4):
        put(store, part10(tmp_path))
    pacer = Pacer(10, clock=fake.clock, sleep=fake.sleep)
    report = await scrubber(store, catalog, bus, pacer=pacer).run_pass()
    assert report.announced == 4
    gaps = [b - a for a, b in zip(fake.publish_times, fake.publish_times[1:], strict=False)]
    assert gaps == pytest.approx([0.1, 0.1, 0.1])


async def test_pacer_without_a_rate_never_sleeps() -> None:
    fake = FakeTime()
    pacer = Pacer(0, clock=fake.clock, sleep=fake.sleep)
    for _ in range(100):
        await pacer.wait()
    assert fake.sleeps == []


async def test_pacer_gives_no_burst_after_idle_time() -> None:
    fake = FakeTime()
    pacer = Pacer(2, clock=fake.clock, sleep=fake.sleep)
    await pacer.wait()
    fake.now += 60  # a long quiet spell earns no credit
    await pacer.wait()
    await pacer.wait()
    assert fake.sleeps == pytest.approx([0.5])


def test_memo_forgets_the_oldest_past_its_limit() -> None:
    memo = Memo(limit=2)
    objs = [StoredObject(f"k{i}", 1, None, "e", None) for i in range(3)]
    for obj in objs:
        memo.remember(obj, None)
    assert [memo.knows(o) for o in objs] == [False, True, True]
    assert not memo.knows(replace(objs[2], etag="new bytes"))


def test_instance_keys_parse_into_their_uids_and_nothing_else_does() -> None:
    assert parse_instance_key("studies/1.2/series/1.3/instances/1.4.dcm") == ("1.2", "1.3", "1.4")
    for key in (
        "studies/1.2/series/1.3/instances/1.4.txt",
        "studies/1.2/series/1.3/1.4.dcm",
        "studies/x/series/1.3/instances/1.4.dcm",
    ):
        assert parse_instance_key(key) is None


async def test_admin_trigger_answers_the_pass_counts(store, catalog, bus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    put(store, part10(tmp_path))
    scrub = scrubber(store, catalog, bus)
    [route] = api.routes(lambda: scrub)
    response = await route.endpoint(None)  # type: ignore[attr-defined]
    assert response.status_code == 200
    body = json.loads(response.body)
    assert (body["announced"], body["complete"]) == (1, True)


def test_scrub_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = StorageSettings()
    assert (defaults.scrub_interval, defaults.scrub_grace) == (600, 300)
    assert (defaults.scrub_batch, defaults.scrub_rate) == (500, 50)
    monkeypatch.setenv("EDGE_SCRUB_GRACE", "0")
    monkeypatch.setenv("EDGE_SCRUB_INTERVAL", "0")
    assert (StorageSettings().scrub_grace, StorageSettings().scrub_interval) == (0, 0)
