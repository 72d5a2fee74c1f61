"""The README's worked example, as a test: watch for study.arrived, send a study with DCMTK's
storescu, see the event arrive (and nothing about the patient in it), replay the change feed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from bench.generate import generate_ct_study
from edge.cli.devsuite import DevSuite
from tests.e2e.conftest import Client, start_suite

pytestmark = pytest.mark.e2e

STABLE_AFTER = 1.5


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSuite]:
    started = start_suite(
        tmp_path_factory.mktemp("suite"), extra_env={"EDGE_STABLE_AFTER": str(STABLE_AFTER)}
    )
    try:
        yield started
    finally:
        started.stop()


def watch(suite: DevSuite, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli.main", "watch", *args],
        env=suite.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_bound(suite: DevSuite, routing_key: str, timeout: float = 30) -> None:
    """Until some queue in the suite's vhost is bound with ``routing_key`` (the watcher's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            [
                "rabbitmqctl",
                *suite.rabbitmqctl_args,
                "-q",
                "list_bindings",
                "-p",
                suite.vhost,
                "source_name",
                "routing_key",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        if any(line.split() == ["edge.events", routing_key] for line in out.splitlines()):
            return
        time.sleep(0.2)
    raise AssertionError(f"no queue bound to {routing_key} within {timeout}s")


def get_json(url: str, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_study_sent_with_storescu_is_announced_once_and_replayable(
    quick_suite: DevSuite, tmp_path: Path
) -> None:
    client = Client(quick_suite)
    files = generate_ct_study(tmp_path, series=2, per_series=3, rows=32, cols=32, seed=77)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    patient = pydicom.dcmread(files[0], stop_before_pixels=True)
    watcher = watch(
        quick_suite, "--type", "study.arrived", "--json", "--count", "1", "--timeout", "90"
    )
    try:
        wait_bound(quick_suite, "study.arrived")
        sent = client.storescu(files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        out, err = watcher.communicate(timeout=120)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    [line] = out.splitlines()
    event = json.loads(line)
    assert event["type"] == "org.dicom-edge.study.arrived.v1"
    assert event["subject"] == study_uid
    assert event["data"]["instance_count"] == 6 and event["data"]["series_count"] == 2
    assert event["data"]["calling_aes"] == ["STORESCU"]
    for value in (str(patient.PatientName), str(patient.PatientID)):
        assert value and value not in line

    # As the README does it: a token from `edge token` (its last line), then the change feed.
    token = quick_suite.edge(
        "token", "--user", "admin", "--password", quick_suite.admin_password
    ).stdout.splitlines()[-1]
    status, feed = get_json(
        f"http://127.0.0.1:{quick_suite.ingestion_port}/api/changes?after=0&limit=100", token
    )
    assert status == 200
    types = [e["type"].split(".")[-2] for e in feed["events"] if e["subject"] == study_uid]
    assert types.count("stored") == 6 and types.count("arrived") == 1
    assert types[-1] == "arrived"
    [replayed] = [e for e in feed["events"] if e["id"] == event["id"]]
    assert replayed["sequence"] == event["sequence"]

    status, problem = get_json(
        f"http://127.0.0.1:{quick_suite.ingestion_port}/api/changes?after=x", token
    )
    assert status == 400 and "after" in problem["detail"]
