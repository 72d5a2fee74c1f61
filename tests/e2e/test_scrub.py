"""A crash between the S3 write and the publish loses nothing: the storage scrub of the running
suite announces the object nobody announced, and ingestion catalogues it."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from bench.generate import generate_ct_study
from edge.cli.devsuite import DevSuite
from edge.common.dicom import Status, instance_key
from edge.common.store import (
    OBJECT_META_CALLED_AE,
    OBJECT_META_CALLING_AE,
    OBJECT_META_TRANSFER_SYNTAX,
)
from tests.e2e.conftest import STORE_AE, Client
from tests.e2e.rawscu import send_raw

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def scrubbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A suite whose scrub looks at objects of any age (no grace period)."""
    suite = DevSuite(
        tmp_path_factory.mktemp("scrub-suite"), extra_env={"EDGE_SCRUB_GRACE": "0"}
    ).start()
    try:
        suite.edge(
            "ae", "add", STORE_AE, "--host", "127.0.0.1", "--port", "11119", "--allow", "store"
        )
        yield Client(suite)
    finally:
        suite.stop()


def scrub_now(client: Client) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{client.suite.storage_port}/api/scrub",
        data=b"",
        method="POST",
        headers=client.suite.auth_headers("admin"),
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return dict(json.load(response))


def test_object_stored_but_never_announced_is_catalogued_after_a_scrub(
    scrubbed: Client, tmp_path: Path
) -> None:
    # One instance the normal way: announced and catalogued, so the scrub must leave it be.
    [sent] = generate_ct_study(tmp_path, series=1, per_series=1, rows=16, cols=16)
    assert send_raw(sent, port=scrubbed.suite.dicom_port, calling=STORE_AE) == Status.SUCCESS
    assert scrubbed.wait_for_instances(1) == 1

    # The crash: the listener wrote this one to S3 and died before its publish was confirmed.
    lost = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    ds = pydicom.dcmread(lost, stop_before_pixels=True)
    key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    sha256 = hashlib.sha256(lost.read_bytes()).hexdigest()
    scrubbed.store.put_file(
        key,
        lost,
        sha256=sha256,
        metadata={
            OBJECT_META_CALLING_AE: STORE_AE,
            OBJECT_META_CALLED_AE: scrubbed.suite.ae_title,
            OBJECT_META_TRANSFER_SYNTAX: str(ds.file_meta.TransferSyntaxUID),
        },
    )
    assert scrubbed.instance_count() == 1

    report = scrub_now(scrubbed)
    assert (report["scanned"], report["announced"], report["complete"]) == (2, 1, True)

    deadline = time.monotonic() + 60
    rows: list[tuple] = []
    while not rows and time.monotonic() < deadline:
        rows = scrubbed.query(
            "SELECT object_key, sha256, calling_ae FROM instance WHERE sop_instance_uid = %s",
            ds.SOPInstanceUID,
        )
        time.sleep(0.1)
    assert rows == [(key, sha256, STORE_AE)]
    assert scrubbed.instance_count() == 2
    assert scrubbed.queue_depth("ingestion.instance-received.dlq") == 0
