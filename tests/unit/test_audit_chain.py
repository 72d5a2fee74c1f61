"""The audit trail's hash chain, its canonical form, the XML export and the API's parameters,
without a database."""

from __future__ import annotations

import hashlib
import json
from xml.etree import ElementTree as ET

import pytest

from edge.auth import auditxml
from edge.auth.audit_http import BadParameter, parse_query
from edge.auth.auditlog import GENESIS, ChainRow, canonical, chain_hash, verify_rows
from edge.common.audit import Auditor

STUDY = "1.2.3.4"


def chain(texts: list[str]) -> list[ChainRow]:
    rows, previous = [], GENESIS
    for seq, text in enumerate(texts, start=1):
        digest = chain_hash(previous, text)
        rows.append(ChainRow(seq, text, previous, digest))
        previous = digest
    return rows


def test_each_hash_is_sha256_of_the_previous_hash_and_the_canonical_text() -> None:
    rows = chain(['{"a":1}', '{"b":2}'])

    assert rows[0].hash == hashlib.sha256((GENESIS + '{"a":1}').encode()).hexdigest()
    assert rows[1].prev_hash == rows[0].hash
    assert verify_rows(rows) == (2, None)


def test_an_edited_row_is_named() -> None:
    rows = chain(["one", "two", "three"])
    rows[1] = ChainRow(2, "TWO", rows[1].prev_hash, rows[1].hash)

    checked, broken = verify_rows(rows)

    assert broken is not None and broken.seq == 2 and checked == 2
    assert str(broken).startswith("audit chain broken at row 2")


def test_a_rehashed_edit_breaks_the_link_to_the_next_row() -> None:
    rows = chain(["one", "two", "three"])
    rows[1] = ChainRow(2, "TWO", rows[1].prev_hash, chain_hash(rows[1].prev_hash, "TWO"))

    assert verify_rows(rows)[1].seq == 3  # type: ignore[union-attr]


def test_a_missing_row_is_named() -> None:
    rows = chain(["one", "two", "three"])

    broken = verify_rows([rows[0], rows[2]])[1]

    assert broken is not None and broken.seq == 2 and "missing" in broken.reason


def test_canonical_form_is_sorted_compact_json_of_id_type_time_and_data() -> None:
    recorder = Auditor(None, source="edge-test", hash_key="k")
    recorder.login("alice", success=True)
    [event] = recorder.pending

    text = canonical(event)

    parsed = json.loads(text)
    assert set(parsed) == {"id", "type", "version", "time", "data"}
    assert parsed["type"] == "audit.user-authentication" and parsed["id"] == str(event.id)
    assert text == json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_xml_follows_the_dicom_audit_message_schema_order_and_coding() -> None:
    recorder = Auditor(None, source="edge-listener", hash_key="k")
    recorder.transferred(
        source=recorder.me(),
        destination=recorder.me(),
        study_uid=STUDY,
        sop_classes={"1.2.840.10008.5.1.4.1.1.2": 3},
        patient_id="PID",
        action="C",
    )
    [event] = recorder.pending

    root = ET.fromstring(auditxml.render([json.loads(canonical(event))]))

    [message] = root
    assert [child.tag for child in message] == [
        "EventIdentification",
        "ActiveParticipant",
        "ActiveParticipant",
        "AuditSourceIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
    ]
    event_id = message.find("EventIdentification/EventID")
    assert event_id is not None and event_id.attrib == {
        "csd-code": "110104",
        "codeSystemName": "DCM",
        "originalText": "DICOM Instances Transferred",
    }
    study, patient = message.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == STUDY
    assert patient.get("ParticipantObjectTypeCodeRole") == "1"


def test_api_parameters_are_checked() -> None:
    query = parse_query({"since": "2025-01-01T00:00:00Z", "type": "audit.query", "limit": "5"})
    assert query.since is not None and query.event_type == "audit.query" and query.limit == 5
    for bad in ({"since": "2025-01-01"}, {"limit": "0"}, {"outcome": "3"}, {"after": "-1"}):
        with pytest.raises(BadParameter):
            parse_query(bad)
