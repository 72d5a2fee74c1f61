"""Infrastructure faults: a C-STORE is answered 0xA700 and nothing claims success."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bench.generate import generate_ct_study
from edge.cli.devsuite import DevSuite
from edge.common.dicom import Status
from tests.e2e.conftest import Client, start_suite
from tests.e2e.rawscu import send_raw

pytestmark = pytest.mark.e2e


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[Client]:
    """A suite of its own: these tests break it."""
    suite = start_suite(tmp_path / "suite")
    try:
        yield Client(suite)
    finally:
        suite.stop()


def s3_process(suite: DevSuite) -> psutil.Process:
    assert suite.process is not None
    for child in psutil.Process(suite.process.pid).children(recursive=True):
        if "weed" in child.name() and f"-s3.port={suite.s3_port}" in child.cmdline():
            return child
    raise LookupError("the suite's S3 server")


def test_s3_down_answers_A700_and_publishes_nothing(faulty: Client, tmp_path: Path) -> None:
    ok, down = generate_ct_study(tmp_path / "s3", series=1, per_series=2, rows=32, cols=32)
    assert send_raw(ok, port=faulty.suite.dicom_port) == Status.SUCCESS  # admission now cached
    assert faulty.wait_for_instances(1) == 1
    s3_process(faulty.suite).send_signal(signal.SIGKILL)
    time.sleep(0.5)
    started = time.monotonic()
    assert send_raw(down, port=faulty.suite.dicom_port) == Status.OUT_OF_RESOURCES
    assert time.monotonic() - started < 20  # within the store deadline, before the peer gives up
    time.sleep(1)
    assert faulty.queue_depth() == 0
    assert faulty.queue_depth("ingestion.instance-received.dlq") == 0
    assert faulty.instance_count() == 1


def test_broker_unreachable_answers_A700(faulty: Client, tmp_path: Path) -> None:
    ok, lost = generate_ct_study(tmp_path / "mq", series=1, per_series=2, rows=32, cols=32)
    assert send_raw(ok, port=faulty.suite.dicom_port) == Status.SUCCESS  # admission now cached
    assert faulty.wait_for_instances(1) == 1
    # Deleting the suite's virtual host closes its connections and refuses reconnection: to
    # these services the broker is gone, while other suites on the same broker carry on.
    subprocess.run(
        ["rabbitmqctl", "delete_vhost", faulty.suite.vhost],
        check=True,
        capture_output=True,
        timeout=60,
    )
    time.sleep(0.5)
    assert send_raw(lost, port=faulty.suite.dicom_port) == Status.OUT_OF_RESOURCES
    assert faulty.instance_count() == 1


def test_sigterm_stops_every_service_and_the_s3_server(tmp_path: Path) -> None:
    suite = start_suite(tmp_path / "suite")
    try:
        assert suite.process is not None
        children = psutil.Process(suite.process.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        for service in ("edge.listener", "edge.ingestion", "edge.storage", "edge.auth", "weed"):
            assert service in names
        suite.process.send_signal(signal.SIGTERM)
        assert suite.process.wait(60) == 0
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:
        suite.stop()
