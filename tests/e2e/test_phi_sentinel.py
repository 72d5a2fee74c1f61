"""No PHI in spans, logs or metrics: planted demographics must appear nowhere the suite writes.

The suite runs with ``OTEL_TRACES_EXPORTER=console``, so every service writes its spans (one
JSON object per line) to the same log file as its JSON log lines. Instances whose patient name,
ID and birth date are sentinels are stored, refused, ingested, announced, searched (QIDO-RS and
C-FIND) and retrieved (WADO-RS, C-GET); then, with the
suite stopped (every span flushed), the whole file is searched for the sentinels. The test also
checks that the spans it searched are really there (a C-STORE span per instance, continued by
ingestion's consumer in another process), so an empty file cannot pass.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from bench.generate import generate_ct_study
from edge.cli.devsuite import DevSuite
from edge.common.dicom import Status
from tests.e2e.conftest import Client, start_suite
from tests.e2e.rawscu import send_raw

pytestmark = pytest.mark.e2e

PATIENT_NAME = "SENTINEL^PHI^NAME"
PATIENT_ID = "SENTINELPID123"
BIRTH_DATE = "18991231"
# Case-insensitive: a normalised name ("sentinel^phi^name") or the family name alone is PHI too.
NEEDLES = ("sentinel", "18991231", "1899-12-31")

TRACED_ENV = {
    "OTEL_TRACES_EXPORTER": "console",
    "OTEL_BSP_SCHEDULE_DELAY": "200",  # milliseconds: spans reach the file while we wait
    "EDGE_STABLE_AFTER": "1",  # study.arrived within the test, with its relay spans
}


@pytest.fixture(scope="module")
def traced_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSuite]:
    suite = start_suite(tmp_path_factory.mktemp("phi"), extra_env=TRACED_ENV)
    try:
        yield suite
    finally:
        suite.stop()


def plant(path: Path, **attributes: object) -> Path:
    ds = pydicom.dcmread(path)
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def records(log: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(spans, log lines) among the file's JSON lines; anything else (banners) is skipped."""
    spans, lines = [], []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        if "context" in entry and "attributes" in entry:
            spans.append(entry)
        elif "level" in entry and "message" in entry:
            lines.append(entry)
    return spans, lines


def wait_for_span(log: Path, match: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [span for span in records(log)[0] if match(span)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "span never written"
        time.sleep(0.2)


def audit_bodies(client: Client, study_uid: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Every audit event auth stored, once the study's store and a query are among them."""
    deadline = time.monotonic() + timeout
    while True:
        rows = client.query("SELECT canonical, studies FROM audit_log ORDER BY seq")
        events = [json.loads(text) for text, _ in rows]
        kinds = {
            e["type"] for e, (_, studies) in zip(events, rows, strict=True) if study_uid in studies
        }
        if "audit.instances-transferred" in kinds and any(
            e["type"] == "audit.query" for e in events
        ):
            return events
        assert time.monotonic() < deadline, f"audit events missing: {sorted(kinds)}"
        time.sleep(0.2)


def test_planted_demographics_appear_in_no_span_and_no_log_line(
    traced_suite: DevSuite, tmp_path: Path
) -> None:
    client = Client(traced_suite)
    study = [
        plant(p)
        for p in generate_ct_study(tmp_path / "ct", series=1, per_series=3, rows=32, cols=32)
    ]
    sop_uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in study}
    study_uid = str(pydicom.dcmread(study[0]).StudyInstanceUID)
    # Refused with the sentinels on board: an image whose pixel data is missing.
    [refused] = generate_ct_study(tmp_path / "refused", series=1, per_series=1, rows=32, cols=32)
    refused = plant(refused, PixelData=None)
    refused_uid = str(pydicom.dcmread(refused).SOPInstanceUID)

    sent = client.storescu(study, "-xe")
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert send_raw(refused, port=traced_suite.dicom_port) == Status.CANNOT_UNDERSTAND
    # DICOMweb too: one more planted instance by STOW-RS beside a refused one (another study's),
    # then its metadata and a rendering, which read the planted header and pixels back.
    [stowed] = generate_ct_study(tmp_path / "stow", series=1, per_series=1, rows=32, cols=32)
    stowed = plant(stowed, StudyInstanceUID=study_uid)
    [stranger] = generate_ct_study(tmp_path / "stranger", series=1, per_series=1, rows=8, cols=8)
    stranger = plant(stranger)
    web = f"http://127.0.0.1:{traced_suite.http_port}/dicom-web"
    boundary = "phi-sentinel"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + p.read_bytes()
            + b"\r\n"
            for p in (stowed, stranger)
        )
        + f"--{boundary}--".encode()
    )
    stow = urllib.request.Request(
        f"{web}/studies/{study_uid}",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            **traced_suite.auth_headers("radiologist"),
        },
    )
    with urllib.request.urlopen(stow, timeout=60) as answer:
        assert answer.status == 202
    assert client.wait_for_instances(len(study) + 1) == len(study) + 1
    stowed_ds = pydicom.dcmread(stowed)
    instance_url = (
        f"{web}/studies/{study_uid}/series/{stowed_ds.SeriesInstanceUID}"
        f"/instances/{stowed_ds.SOPInstanceUID}"
    )
    for url in (f"{web}/studies/{study_uid}/metadata", f"{instance_url}/rendered"):
        reading = urllib.request.Request(url, headers=traced_suite.auth_headers("radiologist"))
        with urllib.request.urlopen(reading, timeout=60) as answer:
            assert answer.status == 200
    # A search by the planted name and birth date: the audit trail keeps its keys, hashed.
    search = f"{web}/studies?PatientName=SENTINEL*&PatientBirthDate={BIRTH_DATE}"
    searching = urllib.request.Request(search, headers=traced_suite.auth_headers("radiologist"))
    with urllib.request.urlopen(searching, timeout=60) as answer:
        assert answer.status == 200

    # Over DICOM: a C-FIND by the planted name and a C-GET of the study (DCMTK).
    traced_suite.edge(
        "ae", "add", "PHIQUERY", "--host", "127.0.0.1", "--port", "11120", "--allow", "find,get"
    )
    found = client.dcmtk(
        "findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=SENTINEL*",
        "-k", "PatientBirthDate", "-k", "StudyInstanceUID", aet="PHIQUERY",
    )  # fmt: skip
    assert found.returncode == 0 and study_uid in found.stderr + found.stdout, found.stderr[-2000:]
    (tmp_path / "got").mkdir()
    got = client.dcmtk(
        "getscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
        "-od", str(tmp_path / "got"), aet="PHIQUERY",
    )  # fmt: skip
    assert got.returncode == 0, got.stderr[-2000:]
    assert len(list((tmp_path / "got").iterdir())) == len(study) + 1

    log = traced_suite.log_path
    stored = wait_for_span(
        log,
        lambda s: (
            s["name"] == "C-STORE" and s["attributes"].get("dicom.sop_instance_uid") in sop_uids
        ),
    )
    # The trace crossed the broker into ingestion, another process.
    wait_for_span(
        log,
        lambda s: (
            s["name"] == "process ingestion.instance-received"
            and s["context"]["trace_id"] == stored["context"]["trace_id"]
        ),
    )
    wait_for_span(
        log,
        lambda s: (
            s["name"] == "publish study.arrived"
            and s["attributes"].get("dicom.study_uid") == study_uid
        ),
    )
    metrics = {
        port: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        for port in (
            traced_suite.http_port,
            traced_suite.ingestion_port,
            traced_suite.storage_port,
            traced_suite.auth_port,
        )
    }
    assert b'edge_cstore_seconds_count{status="0x0000"}' in metrics[traced_suite.http_port]
    assert b"edge_queue_lag_seconds_count" in metrics[traced_suite.ingestion_port]
    for text in metrics.values():
        assert not [n for n in NEEDLES if n in text.decode().lower()], "demographics in /metrics"
    # Audit events as they rode the bus (the trail stores each body as published): the store,
    # the search and the retrievals are there, the patient as a hash, the query values hashed.
    audit = audit_bodies(client, study_uid)
    assert {"audit.instances-transferred", "audit.query"} <= {e["type"] for e in audit}
    patients = [
        o["object_id"]
        for e in audit
        for o in e["data"]["objects"]
        if o["id_type"]["meaning"] == "Patient Number"
    ]
    assert patients and all(len(p) == 64 for p in patients)
    flat_audit = json.dumps(audit).lower()
    assert not [n for n in NEEDLES if n in flat_audit], "demographics in audit events"
    traced_suite.stop()  # every service flushes its last spans and logs on SIGTERM

    spans, lines = records(log)
    c_stores = {
        s["attributes"].get("dicom.sop_instance_uid"): s for s in spans if s["name"] == "C-STORE"
    }
    assert sop_uids <= set(c_stores), "a stored instance has no C-STORE span"
    stow_statuses = sorted(
        s["attributes"]["dicom.status"] for s in spans if s["name"] == "STOW-RS instance"
    )
    assert stow_statuses == ["0x0000", "0xA900"]
    assert any(s["name"] == "WADO metadata" for s in spans)
    assert all(c_stores[uid]["attributes"]["dicom.status"] == "0x0000" for uid in sop_uids)
    assert c_stores[refused_uid]["attributes"]["dicom.status"] == "0xC000"
    refusal_logs = [line for line in lines if "refused with 0xC000" in line["message"]]
    assert refusal_logs, "the refusal was not logged"
    assert refusal_logs[0]["trace_id"] == c_stores[refused_uid]["context"]["trace_id"][2:]
    assert {line["service"] for line in lines} >= {"listener", "ingestion", "auth", "storage"}

    leaks = [
        line[:300]
        for line in log.read_text(errors="replace").lower().splitlines()
        if any(needle in line for needle in NEEDLES)
    ]
    assert not leaks, "demographics in the suite's output:\n" + "\n".join(leaks[:10])
    for span in spans:  # the same, span by span, as a back end would index them
        flat = json.dumps(span["attributes"]).lower() + json.dumps(span["events"]).lower()
        assert not [needle for needle in NEEDLES if needle in flat], span["name"]
