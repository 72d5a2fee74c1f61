"""The C-STORE decision: Rule 1, success only after the S3 put and a confirmed publish."""

from __future__ import annotations

import hashlib
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from dicomfiles import add_pixels, bundled, make_dataset, pixel_data_offset, write_part10
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid

from edge.common.dicom import Status
from edge.common.events import InstanceReceived
from edge.common.store import ObjectStoreError
from edge.common.store_memory import InMemoryObjectStore
from edge.listener.storage_scp import StoreRequest, StoreResult, store_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MAX_SIZE = 64 << 20


class Publisher:
    """Records published events; raises ``fail`` instead when set (a broker that never confirms)."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.events: list[tuple[InstanceReceived, float]] = []
        self.fail = fail

    def __call__(self, event: InstanceReceived, timeout: float) -> None:
        if self.fail is not None:
            raise self.fail
        self.events.append((event, timeout))


def request_for(
    path: Path,
    *,
    sop_class_uid: str | None = None,
    sop_instance_uid: str | None = None,
    permissions: frozenset[str] = frozenset({"store"}),
) -> StoreRequest:
    """A request whose command UIDs match the file's data set unless told otherwise."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return StoreRequest(
        path=path,
        sop_class_uid=sop_class_uid if sop_class_uid is not None else str(ds.SOPClassUID),
        sop_instance_uid=sop_instance_uid
        if sop_instance_uid is not None
        else str(ds.SOPInstanceUID),
        calling_ae="MODALITY1",
        called_ae="EDGE",
        permissions=permissions,
    )


def run(
    request: StoreRequest,
    store: InMemoryObjectStore | None = None,
    publish: Publisher | None = None,
    *,
    max_size: int = MAX_SIZE,
    deadline: float = 30.0,
) -> tuple[StoreResult, InMemoryObjectStore, Publisher]:
    store = store if store is not None else InMemoryObjectStore()
    publish = publish if publish is not None else Publisher()
    result = store_instance(
        request, store=store, publish=publish, max_size=max_size, deadline=deadline
    )
    return result, store, publish


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    return write_part10(tmp_path / "ct.dcm", add_pixels(make_dataset(), 64, 64))


def copy_bundled(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copy(bundled(name), tmp_path / name))


def test_success_stores_exact_bytes_under_instance_key_and_publishes_one_event(
    ct_file: Path,
) -> None:
    ds = pydicom.dcmread(ct_file)
    result, store, publish = run(request_for(ct_file))

    key = (
        f"studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}.dcm"
    )
    file_bytes = ct_file.read_bytes()
    sha256 = hashlib.sha256(file_bytes).hexdigest()
    assert result.status == Status.SUCCESS
    assert list(store.objects) == [key]
    assert hashlib.sha256(store.objects[key].data).hexdigest() == sha256
    assert len(publish.events) == 1
    event, timeout = publish.events[0]
    assert 0 < timeout <= 30.0
    assert result.event == event
    assert result.size == len(file_bytes)
    assert (
        event.study_uid,
        event.series_uid,
        event.sop_instance_uid,
        event.sop_class_uid,
        event.transfer_syntax_uid,
    ) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        ds.SOPClassUID,
        ds.file_meta.TransferSyntaxUID,
    )
    assert event.object_key == key
    assert event.size == len(file_bytes)
    assert event.sha256 == sha256
    assert (event.calling_ae, event.called_ae) == ("MODALITY1", "EDGE")


def test_calling_ae_without_store_permission_is_refused_with_0124_and_nothing_stored(
    ct_file: Path,
) -> None:
    result, store, publish = run(request_for(ct_file, permissions=frozenset({"find", "move"})))

    assert result.status == Status.NOT_AUTHORIZED == 0x0124
    assert store.objects == {}
    assert publish.events == []


@pytest.mark.parametrize("cut", [1, 7, 100, 4000], ids=lambda n: f"minus{n}")
def test_file_cut_short_in_its_pixel_data_is_refused_with_C000_and_nothing_stored(
    ct_file: Path, cut: int
) -> None:
    data = ct_file.read_bytes()
    assert len(data) - cut > pixel_data_offset(data) + 12  # the cut lands inside the pixels
    ct_file.write_bytes(data[:-cut])
    request = request_for(ct_file)

    result, store, publish = run(request)

    assert result.status == Status.CANNOT_UNDERSTAND == 0xC000
    assert store.objects == {}
    assert publish.events == []


def test_file_cut_inside_its_header_is_refused_with_C000(ct_file: Path) -> None:
    data = ct_file.read_bytes()
    request = request_for(ct_file)
    ct_file.write_bytes(data[: pixel_data_offset(data) - 3])

    result, store, publish = run(request)

    assert result.status == Status.CANNOT_UNDERSTAND
    assert store.objects == {}
    assert publish.events == []


def test_bundled_truncated_file_is_refused_with_C000(tmp_path: Path) -> None:
    path = copy_bundled("MR_truncated.dcm", tmp_path)

    result, store, _ = run(request_for(path))

    assert result.status == Status.CANNOT_UNDERSTAND
    assert store.objects == {}


def test_file_that_is_not_dicom_is_refused_with_C000(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"\x00" * 128 + b"JUNK" + b"x" * 200)
    request = StoreRequest(path, MRImageStorage, generate_uid(), "M", "EDGE", frozenset({"store"}))

    result, store, _ = run(request)

    assert result.status == Status.CANNOT_UNDERSTAND
    assert store.objects == {}


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_data_set_without_required_uid_is_refused_with_C000_naming_it(
    tmp_path: Path, missing: str
) -> None:
    ds = make_dataset()
    sop_uid = ds.SOPInstanceUID
    delattr(ds, missing)
    path = write_part10(tmp_path / "x.dcm", ds)
    request = StoreRequest(path, ds.SOPClassUID, sop_uid, "M", "EDGE", frozenset({"store"}))

    result, store, publish = run(request)

    assert result.status == Status.CANNOT_UNDERSTAND
    assert missing in result.comment
    assert store.objects == {}
    assert publish.events == []


def test_command_sop_instance_uid_differing_from_data_set_is_refused_with_A900(
    ct_file: Path,
) -> None:
    result, store, publish = run(request_for(ct_file, sop_instance_uid=generate_uid()))

    assert result.status == Status.DATASET_DOES_NOT_MATCH == 0xA900
    assert store.objects == {}
    assert publish.events == []


def test_command_sop_class_differing_from_data_set_is_refused_with_A900(ct_file: Path) -> None:
    result, store, publish = run(request_for(ct_file, sop_class_uid=MRImageStorage))

    assert result.status == Status.DATASET_DOES_NOT_MATCH
    assert store.objects == {}
    assert publish.events == []


BAD_UIDS = {
    "relative_path": "../1",
    "letter": "1.2.a",
    "65_chars": "1." + "2" * 63,
    "embedded_nul": "1.2\x003.4",
    "slash": "1.2/3",
    "empty_component": "1..2",
}


def _write_raw_uid(path: Path, ds: Dataset, keyword: str, value: str) -> None:
    # pydicom would refuse or re-pad some of these on assignment; write the raw bytes instead.
    raw = value.encode("latin-1")
    if len(raw) % 2:
        raw += b"\x00"
    ds[keyword].value = raw.decode("latin-1")
    write_part10(path, ds)


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
@pytest.mark.parametrize("bad", list(BAD_UIDS.values()), ids=list(BAD_UIDS))
def test_non_conformant_uid_in_data_set_is_refused_with_C001_and_nothing_stored(
    tmp_path: Path, keyword: str, bad: str
) -> None:
    ds = make_dataset()
    path = tmp_path / "bad.dcm"
    _write_raw_uid(path, ds, keyword, bad)
    command_uid = bad if keyword == "SOPInstanceUID" else str(ds.SOPInstanceUID)
    request = StoreRequest(path, ds.SOPClassUID, command_uid, "M", "EDGE", frozenset({"store"}))

    result, store, publish = run(request)

    assert result.status == Status.INVALID_UID == 0xC001
    assert store.objects == {}
    assert publish.events == []


def test_non_conformant_command_sop_instance_uid_is_refused_with_C001(ct_file: Path) -> None:
    result, store, _ = run(request_for(ct_file, sop_instance_uid="../../etc"))

    assert result.status == Status.INVALID_UID
    assert store.objects == {}


def test_s3_failure_answers_A700_and_publishes_nothing(ct_file: Path) -> None:
    result, store, publish = run(request_for(ct_file), InMemoryObjectStore(broken=True))

    assert result.status == Status.OUT_OF_RESOURCES == 0xA700
    assert result.event is None
    assert publish.events == []


def test_single_s3_failure_answers_A700_and_publishes_nothing(ct_file: Path) -> None:
    store = InMemoryObjectStore(fail_next=ObjectStoreError("503 Slow Down"))

    result, store, publish = run(request_for(ct_file), store)

    assert result.status == Status.OUT_OF_RESOURCES
    assert store.objects == {}
    assert publish.events == []


def test_publish_that_raises_answers_A700_not_success(ct_file: Path) -> None:
    publish = Publisher(fail=TimeoutError("no confirm from the broker"))

    result, store, _ = run(request_for(ct_file), publish=publish)

    assert result.status == Status.OUT_OF_RESOURCES
    assert result.event is None


def test_s3_put_slower_than_the_deadline_answers_A700_and_publishes_nothing(
    ct_file: Path,
) -> None:
    result, _, publish = run(request_for(ct_file), deadline=0.0)

    assert result.status == Status.OUT_OF_RESOURCES
    assert publish.events == []


def test_instance_larger_than_max_size_is_refused_with_C002_and_nothing_stored(
    ct_file: Path,
) -> None:
    size = ct_file.stat().st_size

    result, store, publish = run(request_for(ct_file), max_size=size - 1)

    assert result.status == Status.TOO_LARGE == 0xC002
    assert store.objects == {}
    assert publish.events == []


def test_instance_of_exactly_max_size_is_accepted(ct_file: Path) -> None:
    result, _, _ = run(request_for(ct_file), max_size=ct_file.stat().st_size)

    assert result.status == Status.SUCCESS


@pytest.mark.parametrize(
    "name",
    [
        "image_dfl.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "JPEG-lossy.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
    ],
)
def test_bundled_file_in_other_transfer_syntax_is_accepted_byte_for_byte(
    tmp_path: Path, name: str
) -> None:
    path = copy_bundled(name, tmp_path)
    ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID

    result, store, publish = run(request_for(path))

    assert result.status == Status.SUCCESS, result.comment
    assert result.event is not None
    assert result.event.transfer_syntax_uid == ts
    assert store.objects[result.event.object_key].data == path.read_bytes()
    assert len(publish.events) == 1


class HungStore(InMemoryObjectStore):
    """An object store that takes the upload and does not answer for seconds."""

    def put_file(self, key, path, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(3)
        return super().put_file(key, path, **kwargs)


def test_hung_object_store_is_answered_A700_within_the_deadline(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "ct.dcm", add_pixels(make_dataset(), 8, 8))
    publish = Publisher()
    with ThreadPoolExecutor(1) as uploads:
        started = time.monotonic()
        result = store_instance(
            request_for(path),
            store=HungStore(),
            publish=publish,
            max_size=MAX_SIZE,
            deadline=0.3,
            uploads=uploads,
        )
        elapsed = time.monotonic() - started
    assert result.status == Status.OUT_OF_RESOURCES
    assert elapsed < 2.0  # the answer did not wait for the store
    assert publish.events == []


def test_upload_on_an_executor_within_the_deadline_succeeds(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "ct.dcm", add_pixels(make_dataset(), 8, 8))
    publish = Publisher()
    store = InMemoryObjectStore()
    with ThreadPoolExecutor(1) as uploads:
        result = store_instance(
            request_for(path),
            store=store,
            publish=publish,
            max_size=MAX_SIZE,
            deadline=5.0,
            uploads=uploads,
        )
    assert result.status == Status.SUCCESS
    assert len(store.objects) == 1 and len(publish.events) == 1


def test_image_cut_exactly_before_its_pixel_data_is_refused_with_C000(tmp_path: Path) -> None:
    full = write_part10(tmp_path / "ct.dcm", add_pixels(make_dataset(), 16, 16))
    data = full.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: pixel_data_offset(data)])  # structurally whole, pixels gone

    result, store, publish = run(request_for(cut))

    assert result.status == Status.CANNOT_UNDERSTAND
    assert "pixel data" in result.comment
    assert store.objects == {} and publish.events == []
