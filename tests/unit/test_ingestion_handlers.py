"""on_instance_received and read_header with the in-memory store and catalog."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest
from dicomfiles import add_pixels, bundled, make_dataset, pixel_data_offset, write_part10
from pydicom.dataset import Dataset

from edge.common.bus import BadMessage, TransientError
from edge.common.catalog import InMemoryCatalog, UpsertOutcome
from edge.common.dicom import instance_key
from edge.common.events import InstanceReceived, InstanceReplaced, InstanceStored
from edge.common.headers import FIRST_READ, read_header
from edge.common.store import ObjectStoreError
from edge.common.store_memory import InMemoryObjectStore
from edge.ingestion.handlers import IngestionDeps, on_instance_received

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class RecordingStore(InMemoryObjectStore):
    """The in-memory store, remembering every ranged read and refusing whole-object reads."""

    def __init__(self) -> None:
        super().__init__()
        self.ranges: list[tuple[int, int]] = []

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.ranges.append((offset, length))
        return super().get_range(key, offset, length)

    def read_head(self, key: str, length: int):  # type: ignore[no-untyped-def]
        self.ranges.append((0, length))
        return super().read_head(key, length)

    def header(self, key: str, size: int) -> Dataset:
        """read_header as ingestion calls it: after one read_head."""
        first, _ = self.read_head(key, FIRST_READ)
        return read_header(self, key, first, size)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20):  # type: ignore[no-untyped-def]
        raise AssertionError("ingestion read the whole object")

    def bytes_read(self) -> int:
        return max(offset + length for offset, length in self.ranges)


def put_instance(store: InMemoryObjectStore, data: bytes) -> InstanceReceived:
    """Store ``data`` as the listener would and return the event it would publish."""
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
    key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    sha256 = hashlib.sha256(data).hexdigest()
    store.put_bytes(key, data, sha256=sha256)
    return InstanceReceived(
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        object_key=key,
        size=len(data),
        sha256=sha256,
        calling_ae="MODALITY1",
        called_ae="EDGE",
    )


def part10_bytes(tmp_path: Path, ds: Dataset) -> bytes:
    return write_part10(tmp_path / f"{ds.SOPInstanceUID}.dcm", ds).read_bytes()


@pytest.fixture
def deps() -> IngestionDeps:
    return IngestionDeps(store=InMemoryObjectStore(), catalog=InMemoryCatalog())


@pytest.fixture
def ct_bytes(tmp_path: Path) -> bytes:
    return part10_bytes(tmp_path, add_pixels(make_dataset(InstanceNumber=7), 16, 16))


async def test_first_delivery_inserts_the_instance_into_the_catalog(
    deps: IngestionDeps, ct_bytes: bytes
) -> None:
    event = put_instance(deps.store, ct_bytes)

    outcome = await on_instance_received(event, deps)

    assert outcome is UpsertOutcome.INSERTED
    row = await deps.catalog.get_instance(event.sop_instance_uid)
    assert row is not None
    assert (row["study_instance_uid"], row["series_instance_uid"]) == (
        event.study_uid,
        event.series_uid,
    )
    assert (row["sha256"], row["object_key"], row["size"]) == (
        event.sha256,
        event.object_key,
        event.size,
    )
    assert (row["patient_id"], row["instance_number"]) == ("P-1", 7)


async def test_redelivery_of_the_same_event_is_unchanged(
    deps: IngestionDeps, ct_bytes: bytes
) -> None:
    event = put_instance(deps.store, ct_bytes)
    await on_instance_received(event, deps)

    assert await on_instance_received(event, deps) is UpsertOutcome.UNCHANGED
    assert await deps.catalog.count_instances() == 1


async def test_same_sop_instance_uid_with_new_bytes_is_replaced(
    deps: IngestionDeps, tmp_path: Path
) -> None:
    ds = add_pixels(make_dataset(), 16, 16)
    first = put_instance(deps.store, part10_bytes(tmp_path, ds))
    await on_instance_received(first, deps)
    ds.SeriesDescription = "corrected"
    second = put_instance(deps.store, part10_bytes(tmp_path, ds))

    assert await on_instance_received(second, deps) is UpsertOutcome.REPLACED
    row = await deps.catalog.get_instance(ds.SOPInstanceUID)
    assert row is not None and row["sha256"] == second.sha256
    assert await deps.catalog.count_instances() == 1


async def test_new_instance_queues_instance_stored_in_its_transaction(
    deps: IngestionDeps, ct_bytes: bytes
) -> None:
    event = put_instance(deps.store, ct_bytes)
    woken: list[bool] = []
    deps.committed = lambda: woken.append(True)

    await on_instance_received(event, deps)

    assert isinstance(deps.catalog, InMemoryCatalog)
    [row] = deps.catalog.outbox
    assert type(row.event) is InstanceStored
    assert row.event.model_dump(exclude={"id", "time", "sequence"}) == {
        "study_uid": event.study_uid,
        "series_uid": event.series_uid,
        "sop_instance_uid": event.sop_instance_uid,
        "sop_class_uid": event.sop_class_uid,
        "transfer_syntax_uid": event.transfer_syntax_uid,
        "modality": "CT",
        "object_key": event.object_key,
        "size": event.size,
        "sha256": event.sha256,
        "calling_ae": "MODALITY1",
    }
    assert woken == [True]


async def test_redelivery_queues_no_second_event(deps: IngestionDeps, ct_bytes: bytes) -> None:
    event = put_instance(deps.store, ct_bytes)
    await on_instance_received(event, deps)
    await on_instance_received(event, deps)

    assert isinstance(deps.catalog, InMemoryCatalog)
    assert len(deps.catalog.outbox) == 1


async def test_new_bytes_queue_instance_replaced_with_the_previous_checksum(
    deps: IngestionDeps, tmp_path: Path
) -> None:
    ds = add_pixels(make_dataset(), 16, 16)
    first = put_instance(deps.store, part10_bytes(tmp_path, ds))
    await on_instance_received(first, deps)
    ds.SeriesDescription = "corrected"
    second = put_instance(deps.store, part10_bytes(tmp_path, ds))
    await on_instance_received(second, deps)

    assert isinstance(deps.catalog, InMemoryCatalog)
    replaced = deps.catalog.outbox[-1].event
    assert isinstance(replaced, InstanceReplaced)
    assert (replaced.sha256, replaced.previous_sha256) == (second.sha256, first.sha256)


async def test_event_for_a_missing_object_is_a_bad_message(
    deps: IngestionDeps, ct_bytes: bytes
) -> None:
    event = put_instance(deps.store, ct_bytes)
    deps.store.delete(event.object_key)

    with pytest.raises(BadMessage, match="does not exist"):
        await on_instance_received(event, deps)
    assert await deps.catalog.count_instances() == 0


async def test_broken_store_is_a_transient_error(deps: IngestionDeps, ct_bytes: bytes) -> None:
    event = put_instance(deps.store, ct_bytes)
    deps.store.broken = True  # type: ignore[attr-defined]

    with pytest.raises(TransientError):
        await on_instance_received(event, deps)


async def test_store_failing_on_a_later_ranged_read_is_a_transient_error(
    deps: IngestionDeps, tmp_path: Path
) -> None:
    # A header longer than the first read needs a second, ranged read: that one fails.
    ds = _with_large_private_element(make_dataset(), 300_000)
    event = put_instance(deps.store, part10_bytes(tmp_path, add_pixels(ds, 64, 64)))
    store = deps.store
    assert isinstance(store, InMemoryObjectStore)
    original_read_head = store.read_head

    def read_head_then_fail(key: str, length: int):  # type: ignore[no-untyped-def]
        described = original_read_head(key, length)
        store.fail_next = ObjectStoreError("connection reset")
        return described

    store.read_head = read_head_then_fail  # type: ignore[method-assign]

    with pytest.raises(TransientError):
        await on_instance_received(event, deps)


async def test_unavailable_catalog_is_a_transient_error(
    deps: IngestionDeps, ct_bytes: bytes
) -> None:
    event = put_instance(deps.store, ct_bytes)
    deps.catalog.unavailable = True  # type: ignore[attr-defined]

    with pytest.raises(TransientError):
        await on_instance_received(event, deps)


async def test_object_replaced_by_newer_bytes_is_skipped_as_superseded(
    deps: IngestionDeps, tmp_path: Path
) -> None:
    ds = add_pixels(make_dataset(), 16, 16)
    stale = put_instance(deps.store, part10_bytes(tmp_path, ds))
    ds.SeriesDescription = "newer"
    put_instance(deps.store, part10_bytes(tmp_path, ds))  # same key, different sha256

    assert await on_instance_received(stale, deps) is None
    assert await deps.catalog.count_instances() == 0


async def test_object_whose_sop_instance_uid_differs_from_the_event_is_a_bad_message(
    deps: IngestionDeps, ct_bytes: bytes, tmp_path: Path
) -> None:
    event = put_instance(deps.store, ct_bytes)
    other = part10_bytes(tmp_path, add_pixels(make_dataset(), 4, 4))
    sha256 = hashlib.sha256(other).hexdigest()
    deps.store.put_bytes(event.object_key, other, sha256=sha256)
    lying = event.model_copy(update={"sha256": sha256, "size": len(other)})

    with pytest.raises(BadMessage):
        await on_instance_received(lying, deps)


def _with_large_private_element(ds: Dataset, size: int) -> Dataset:
    block = ds.private_block(0x0009, "EDGE TEST", create=True)
    block.add_new(0x10, "OB", b"\x01" * size)
    return ds


async def test_header_larger_than_the_first_read_is_read_whole(
    deps: IngestionDeps, tmp_path: Path
) -> None:
    # (0009,xx10) sorts before (0010,0020) Patient ID: the ID lies past the first 64 KiB.
    ds = _with_large_private_element(make_dataset(PatientID="AFTER-BIG"), 300_000)
    data = part10_bytes(tmp_path, add_pixels(ds, 512, 512))
    assert pixel_data_offset(data) > 4 * FIRST_READ
    event = put_instance(deps.store, data)

    assert await on_instance_received(event, deps) is UpsertOutcome.INSERTED
    row = await deps.catalog.get_instance(event.sop_instance_uid)
    assert row is not None and row["patient_id"] == "AFTER-BIG"


def test_read_header_returns_a_long_text_whole_and_the_elements_after_it(
    tmp_path: Path,
) -> None:
    # ~180 KB of UT (0010,0218) Strain Additional Information, before (0028,...) and the pixels.
    text = "long report line\r\n" * 10_000
    ds = add_pixels(make_dataset(StrainAdditionalInformation=text), 1024, 1024)
    data = part10_bytes(tmp_path, ds)
    assert pixel_data_offset(data) > FIRST_READ
    store = RecordingStore()
    event = put_instance(store, data)

    header = store.header(event.object_key, len(data))

    assert header.StrainAdditionalInformation == text
    assert (header.Rows, header.Columns) == (1024, 1024)  # (0028,...) follows the text
    assert "PixelData" not in header


def test_read_header_of_a_2mb_instance_never_fetches_its_pixel_data(tmp_path: Path) -> None:
    ds = add_pixels(make_dataset(), 1448, 1448)
    data = part10_bytes(tmp_path, ds)
    assert len(data) > 2_000_000
    store = RecordingStore()
    event = put_instance(store, data)

    header = store.header(event.object_key, len(data))

    assert header.SOPInstanceUID == ds.SOPInstanceUID
    assert "PixelData" not in header
    assert len(store.ranges) == 1  # one ranged GET was enough for a ~1 KB header
    assert store.bytes_read() <= FIRST_READ  # ~3% of the object, never the 2 MB of pixels


def test_read_header_of_a_deflated_object_reads_it_whole() -> None:
    data = bundled("image_dfl.dcm").read_bytes()
    store = RecordingStore()
    event = put_instance(store, data)

    header = store.header(event.object_key, len(data))

    assert header.SOPInstanceUID == event.sop_instance_uid
    assert store.bytes_read() >= len(data)  # the whole (small) object


@pytest.mark.parametrize(
    "name", ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "JPEG-lossy.dcm"]
)
async def test_bundled_instance_in_another_transfer_syntax_is_inserted(
    deps: IngestionDeps, name: str
) -> None:
    event = put_instance(deps.store, bundled(name).read_bytes())

    assert await on_instance_received(event, deps) is UpsertOutcome.INSERTED
