"""C-MOVE and C-GET through the running suite: DCMTK movescu to a DCMTK storescp the test runs
(a registered move destination), DCMTK getscu, and pynetdicom where a test needs exact
statuses, a slow destination or a C-CANCEL.

Byte identity is checked on the data set: each receiver writes a file meta group of its own
(PS3.10 7.1: source AE, implementation class), so the SHA-256 compared is that of everything
after the meta group, in the object S3 holds and in the file the receiver wrote (``+B``: as
received, unchanged).
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from edge.cli.devsuite import DevSuite, dcmtk, dcmtk_env
from edge.common.dimse import NODELAY_HANDLER
from edge.common.netutil import free_ports
from tests.e2e.conftest import Client, start_suite
from tests.unit.dicomfiles import add_pixels, bundled, make_dataset, write_part10

pytestmark = pytest.mark.e2e

RETRIEVER = "RETRIEVER"  # move and get
NO_RETRIEVE = "STOREONLY"
DEST = "DESTSCP"  # DCMTK storescp run by the test
SLOW = "SLOWSCP"  # pynetdicom storage SCP that takes its time
DEAD = "DEADSCP"  # registered, nothing listening
UNUSABLE = "NOTADEST"  # registered, but not a move destination


@dataclass
class World:
    suite: DevSuite
    client: Client
    study: str
    series: list[str]
    sops: dict[str, list[str]]  # series -> SOP Instance UIDs
    compressed_study: str
    compressed_sop: str
    dest_dir: Path
    dest_port: int
    slow_port: int
    slow_received: list[str] = field(default_factory=list)


def dataset_sha256(data: bytes) -> str:
    """SHA-256 of a Part-10 file's data set: everything after the file meta group."""
    assert data[128:132] == b"DICM"
    # (0002,0000) UL, explicit VR little endian: tag, VR, 2-byte length, 4-byte value.
    (group_length,) = struct.unpack("<I", data[140:144])
    return hashlib.sha256(data[144 + group_length :]).hexdigest()


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def _slow_scp(port: int, received: list[str]) -> object:
    ae = AE(ae_title=SLOW)
    ae.add_supported_context(CTImageStorage)

    def on_store(event: evt.Event) -> int:
        time.sleep(0.2)
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    return ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store), NODELAY_HANDLER],
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    dest_port, slow_port, dead_port = free_ports(3)
    suite = start_suite(tmp_path_factory.mktemp("suite"))
    dest_dir = tmp_path_factory.mktemp("dest")
    slow_received: list[str] = []
    storescp: subprocess.Popen[bytes] | None = None
    slow = None
    try:  # whatever fails from here on, the suite and both destinations are stopped
        storescp = subprocess.Popen(
            [dcmtk("storescp"), "-aet", DEST, "+B", "-od", str(dest_dir), str(dest_port)],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        slow = _slow_scp(slow_port, slow_received)
        for title, port, allow, extra in (
            (RETRIEVER, 11130, "move,get", []),
            (NO_RETRIEVE, 11131, "store", []),
            (DEST, dest_port, "store", []),
            (SLOW, slow_port, "store", []),
            (DEAD, dead_port, "store", []),
            (UNUSABLE, 11132, "store", ["--no-move-destination"]),
        ):
            suite.edge(
                "ae", "add", title, "--host", "127.0.0.1", "--port", str(port), "--allow", allow,
                *extra,
            )  # fmt: skip
        folder = tmp_path_factory.mktemp("data")
        study, series = generate_uid(), [generate_uid(), generate_uid()]
        sops: dict[str, list[str]] = {s: [] for s in series}
        files = []
        for n, (s, count) in enumerate(zip(series, (12, 3), strict=True)):
            for i in range(count):
                ds = add_pixels(
                    make_dataset(
                        PatientID="RT-1",
                        StudyInstanceUID=study,
                        SeriesInstanceUID=s,
                        SeriesNumber=n + 1,
                        InstanceNumber=i + 1,
                    ),
                    64,
                    64,
                    fill=i,
                )
                sops[s].append(str(ds.SOPInstanceUID))
                files.append(write_part10(folder / f"{ds.SOPInstanceUID}.dcm", ds))
        compressed = pydicom.dcmread(bundled("MR_small_jp2klossless.dcm"))
        client = Client(suite)
        for batch, options in ((files, ()), ([bundled("MR_small_jp2klossless.dcm")], ("-xv",))):
            sent = client.storescu(batch, *options)
            assert sent.returncode == 0, sent.stdout + sent.stderr
        assert client.wait_for_instances(len(files) + 1) == len(files) + 1
        _wait_port(dest_port)
        yield World(
            suite,
            client,
            str(study),
            [str(s) for s in series],
            sops,
            str(compressed.StudyInstanceUID),
            str(compressed.SOPInstanceUID),
            dest_dir,
            dest_port,
            slow_port,
            slow_received,
        )
    finally:
        if storescp is not None:
            storescp.terminate()
            storescp.wait(10)
        if slow is not None:
            slow.shutdown()
        suite.stop()


def _stored_hashes(world: World, sops: list[str]) -> dict[str, str]:
    rows = world.client.query(
        "SELECT sop_instance_uid, object_key FROM instance WHERE sop_instance_uid = ANY(%s)", sops
    )
    return {sop: dataset_sha256(b"".join(world.client.store.iter_chunks(key))) for sop, key in rows}


def _received_hashes(folder: Path) -> dict[str, str]:
    out = {}
    for path in folder.iterdir():
        if path.is_file():
            data = path.read_bytes()
            out[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = (
                dataset_sha256(data)
            )
    return out


def _clear(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path)


def movescu(world: World, *keys: str, dest: str = DEST) -> subprocess.CompletedProcess[str]:
    args = ["-S", "-v", "-aem", dest, *[a for k in keys for a in ("-k", k)]]
    return world.client.dcmtk("movescu", *args, aet=RETRIEVER, timeout=120)


@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_movescu_delivers_byte_identical_instances_to_storescp(world: World, level: str) -> None:
    _clear(world.dest_dir)
    keys = [f"QueryRetrieveLevel={level}", f"StudyInstanceUID={world.study}"]
    expected = [s for series in world.series for s in world.sops[series]]
    if level in ("SERIES", "IMAGE"):
        keys.append(f"SeriesInstanceUID={world.series[0]}")
        expected = world.sops[world.series[0]]
    if level == "IMAGE":
        keys.append(f"SOPInstanceUID={expected[1]}")
        expected = [expected[1]]
    result = movescu(world, *keys)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Final Move Response (Success)" in result.stdout + result.stderr
    received = _received_hashes(world.dest_dir)
    assert sorted(received) == sorted(expected)
    assert received == _stored_hashes(world, expected)


def test_getscu_receives_byte_identical_instances_over_its_own_association(
    world: World, tmp_path: Path
) -> None:
    out = tmp_path / "get"
    out.mkdir()
    result = world.client.dcmtk(
        "getscu",
        "-S",
        "-v",
        "+B",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        f"StudyInstanceUID={world.study}",
        "-k",
        f"SeriesInstanceUID={world.series[1]}",
        aet=RETRIEVER,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    expected = world.sops[world.series[1]]
    received = _received_hashes(out)
    assert sorted(received) == sorted(expected)
    assert received == _stored_hashes(world, expected)


def test_compressed_instance_is_decompressed_for_a_destination_taking_only_uncompressed(
    world: World,
) -> None:
    _clear(world.dest_dir)
    result = movescu(
        world, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={world.compressed_study}"
    )
    assert "Final Move Response (Success)" in result.stdout + result.stderr, result.stdout
    (path,) = [p for p in world.dest_dir.iterdir() if p.is_file()]
    ds = pydicom.dcmread(path)
    assert ds.SOPInstanceUID == world.compressed_sop
    assert not ds.file_meta.TransferSyntaxUID.is_compressed
    original = pydicom.dcmread(bundled("MR_small_jp2klossless.dcm"))
    assert (ds.pixel_array == original.pixel_array).all()


def _move(
    world: World,
    identifier: Dataset,
    dest: str,
    *,
    aet: str = RETRIEVER,
    cancel_after: int | None = None,
) -> tuple[int, list[Dataset], Dataset | None]:
    """(final status, pending statuses, final status data set) of a pynetdicom C-MOVE."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(
        "127.0.0.1",
        world.suite.dicom_port,
        ae_title=world.suite.ae_title,
        evt_handlers=[NODELAY_HANDLER],
    )
    assert assoc.is_established
    pendings: list[Dataset] = []
    final: Dataset | None = None
    try:
        responses = assoc.send_c_move(
            identifier, dest, StudyRootQueryRetrieveInformationModelMove, msg_id=7
        )
        for status, _ in responses:
            if status.Status == 0xFF00:
                pendings.append(status)
                if cancel_after is not None and len(pendings) == cancel_after:
                    context = assoc._get_valid_context(
                        StudyRootQueryRetrieveInformationModelMove, "", "scu"
                    )
                    assoc.send_c_cancel(7, context.context_id)
            else:
                final = status
    finally:
        assoc.release()
    assert final is not None
    return int(final.Status), pendings, final


def _study(world: World) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = world.study
    return ds


@pytest.mark.parametrize("dest", ["NOSUCHAE", UNUSABLE])
def test_unknown_or_unusable_destination_is_0xa801(world: World, dest: str) -> None:
    status, pendings, _ = _move(world, _study(world), dest)
    assert status == 0xA801 and pendings == []


def test_destination_down_fails_fast_with_every_sub_operation_failed(world: World) -> None:
    started = time.monotonic()
    status, _, final = _move(world, _study(world), DEAD)
    assert time.monotonic() - started < 15
    assert status == 0xA702
    assert final is not None and final.NumberOfFailedSuboperations == 15
    assert final.get("NumberOfCompletedSuboperations", 0) == 0


def test_cancel_ends_the_move_with_fe00_and_what_remains(world: World) -> None:
    world.slow_received.clear()
    status, pendings, final = _move(world, _study(world), SLOW, cancel_after=1)
    assert status == 0xFE00
    assert final is not None and final.NumberOfRemainingSuboperations > 0
    assert pendings[0].NumberOfRemainingSuboperations < 15
    done = final.NumberOfCompletedSuboperations
    assert done == len(world.slow_received) < 15


def test_pendings_count_down_to_a_success(world: World) -> None:
    identifier = _study(world)
    identifier.StudyInstanceUID = f"{world.study}\\{world.compressed_study}"
    status, pendings, final = _move(world, identifier, DEST)
    assert status == 0x0000
    remaining = [int(p.NumberOfRemainingSuboperations) for p in pendings]
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] >= 1
    assert final is not None and final.NumberOfCompletedSuboperations == 16


def test_requester_without_move_or_get_permission_is_refused(world: World) -> None:
    status, _, _ = _move(world, _study(world), DEST, aet=NO_RETRIEVE)
    assert status == 0x0124
    ae = AE(ae_title=NO_RETRIEVE)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    assoc = ae.associate("127.0.0.1", world.suite.dicom_port, ae_title=world.suite.ae_title)
    assert assoc.is_established
    try:
        identifier = _study(world)
        identifier.PatientID = "RT-1"
        statuses = [
            int(s.Status)
            for s, _ in assoc.send_c_get(identifier, PatientRootQueryRetrieveInformationModelGet)
        ]
    finally:
        assoc.release()
    assert statuses == [0x0124]
