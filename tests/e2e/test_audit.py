"""The audit trail of a run, end to end: DCMTK clients against the running suite, then the trail
auth stored (in order, with the expected PS3.15 events), GET /api/audit, and `edge audit
verify` before and after a superuser edits a row."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from bench.generate import generate_ct_study
from edge.cli.devsuite import DevSuite, dcmtk, dcmtk_env
from edge.common.netutil import free_ports
from tests.e2e.conftest import STORE_AE, Client, start_suite

pytestmark = pytest.mark.e2e

QR = "AUDITQR"  # find, move, get
DEST = "AUDITDEST"  # DCMTK storescp, the C-MOVE destination
INTRUDER = "INTRUDER"  # not registered


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSuite]:
    started = start_suite(tmp_path_factory.mktemp("audit"))
    try:
        yield started
    finally:
        started.stop()


def trail(suite: DevSuite, after: int = 0) -> list[tuple[int, str, list[str], int, list[str]]]:
    client = Client(suite)
    return [
        (seq, kind, participants, outcome, studies)
        for seq, kind, participants, outcome, studies in client.query(
            "SELECT seq, event_type, participants, outcome, studies FROM audit_log"
            " WHERE seq > %s ORDER BY seq",
            after,
        )
    ]


def wait_for(suite: DevSuite, predicate: Any, timeout: float = 30) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = trail(suite)
        if predicate(rows):
            return rows
        assert time.monotonic() < deadline, f"audit trail incomplete: {rows}"
        time.sleep(0.2)


def test_a_run_leaves_its_events_in_order_and_verify_detects_an_edited_row(
    suite: DevSuite, tmp_path: Path
) -> None:
    client = Client(suite)
    dest_port, qr_port = free_ports(2)
    for title, port, allow in ((QR, qr_port, "find,move,get"), (DEST, dest_port, "store")):
        suite.edge("ae", "add", title, "--host", "127.0.0.1", "--port", str(port), "--allow", allow)
    files = generate_ct_study(tmp_path / "ct", series=1, per_series=2, rows=16, cols=16)
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    storescp = subprocess.Popen(
        [dcmtk("storescp"), "-aet", DEST, "-od", str(dest_dir), str(dest_port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        refused = client.dcmtk("echoscu", aet=INTRUDER, timeout=30)
        assert refused.returncode != 0
        sent = client.storescu(files)
        assert sent.returncode == 0, sent.stderr[-2000:]
        assert client.wait_for_instances(len(files)) == len(files)
        found = client.dcmtk(
            "findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=*",
            "-k", f"StudyInstanceUID={study}", aet=QR, timeout=60,
        )  # fmt: skip
        assert found.returncode == 0, found.stderr[-2000:]
        moved = client.dcmtk(
            "movescu", "-S", "-aem", DEST, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study}", aet=QR, timeout=60,
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr[-2000:]
        got = client.dcmtk(
            "getscu", "-S", "-od", str(tmp_path), "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study}", aet=QR, timeout=60,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr[-2000:]
    finally:
        storescp.terminate()
        storescp.wait(10)

    expected = [
        ("audit.security-alert", INTRUDER, 4, []),  # edge ae add ... come before: skipped below
        ("audit.user-authentication", STORE_AE, 0, []),
        ("audit.instances-transferred", STORE_AE, 0, [study]),
        ("audit.user-authentication", QR, 0, []),
        ("audit.query", QR, 0, []),
        ("audit.user-authentication", QR, 0, []),
        ("audit.instances-transferred", "edge-listener", 0, [study]),  # C-MOVE to DEST
        ("audit.user-authentication", QR, 0, []),
        ("audit.instances-transferred", "edge-listener", 0, [study]),  # C-GET to QR
    ]

    def complete(rows: list[Any]) -> bool:
        return len([r for r in rows if r[2] and r[2][0] in (INTRUDER, STORE_AE, QR)]) >= 5 and (
            sum(1 for r in rows if r[1] == "audit.instances-transferred") >= 3
        )

    rows = wait_for(suite, complete)
    ae_edits = [r for r in rows if r[1] == "audit.security-alert" and r[2][0].startswith("cli")]
    assert len(ae_edits) >= 3, "edge ae add is audited"
    run = [(kind, who[0], outcome, studies) for _, kind, who, outcome, studies in rows]
    run = [r for r in run if not (r[0] == "audit.security-alert" and r[1].startswith("cli"))]
    assert run == expected
    [_, _, move_who, _, _] = [r for r in rows if r[1] == "audit.instances-transferred"][1]
    assert move_who == ["edge-listener", DEST, QR]  # source, destination, requester

    url = f"http://127.0.0.1:{suite.auth_port}/api/audit?type=audit.query&format=json"
    request = urllib.request.Request(url, headers=suite.auth_headers("him"))
    with urllib.request.urlopen(request, timeout=10) as answer:
        [query] = json.loads(answer.read())["events"]
    details = {d["type"]: d["value"] for d in query["event"]["data"]["objects"][0]["details"]}
    assert details["QueryRetrieveLevel"] == "STUDY" and len(details["00100010"]) == 64

    intact = suite.edge("audit", "verify", check=False)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    [seq] = [r[0] for r in rows if r[1] == "audit.query"]
    edited = client.query(
        "UPDATE audit_log SET canonical = replace(canonical, %s, 'SOMEONE') WHERE seq = %s"
        " RETURNING participants",
        QR,
        seq,
    )
    assert edited == [(["SOMEONE", "edge-listener"],)]
    result = suite.edge("audit", "verify", check=False)
    assert result.returncode == 1
    assert f"row {seq}" in result.stdout
