"""Audit events (PS3.15 A.5 shape) as the Auditor builds them, and its background publisher."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from edge.common.audit import AuditHasher, Auditor
from edge.common.bus import BusError
from edge.common.events import (
    AuditEvent,
    InstancesTransferredAudited,
    QueryAudited,
    SecurityAlertAudited,
    UserAuthenticationAudited,
    from_parts,
    to_body,
    to_headers,
)

KEY = "unit-test-key"
STUDY = "1.2.826.0.1.3680043.8.498.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


def auditor(bus: Any = None, **options: Any) -> Auditor:
    return Auditor(bus, source="edge-listener", hash_key=KEY, **options)


def only(a: Auditor) -> AuditEvent:
    [event] = a.pending
    return event


def test_accepted_association_is_a_login_of_the_calling_ae_with_its_address() -> None:
    a = auditor()
    a.association("CT1", "EDGE", "10.0.0.5", accepted=True)

    event = only(a)
    assert isinstance(event, UserAuthenticationAudited)
    assert event.name == "audit.user-authentication"
    assert (event.event.code, event.event.system) == ("110114", "DCM")
    assert [c.code for c in event.event_types] == ["110122"]
    assert (event.action, event.outcome) == ("E", 0)
    peer, us = event.participants
    assert (peer.user_id, peer.kind, peer.is_requestor) == ("CT1", "ae", True)
    assert (peer.network_access_point, peer.network_access_point_type) == ("10.0.0.5", 2)
    assert [r.code for r in peer.roles] == ["110153"]
    assert (us.user_id, us.is_requestor, [r.code for r in us.roles]) == ("EDGE", False, ["110152"])


def test_refused_association_is_a_node_authentication_security_alert() -> None:
    a = auditor()
    a.association("NOBODY", "EDGE", "10.0.0.9", accepted=False, reason="not registered")

    event = only(a)
    assert isinstance(event, SecurityAlertAudited)
    assert event.event.code == "110113"
    assert [c.code for c in event.event_types] == ["110126"]
    assert event.outcome == 4 and event.outcome_description == "not registered"
    assert event.objects[0].object_id == "NOBODY"


def test_admission_unavailable_is_a_serious_failure_not_an_alert() -> None:
    a = auditor()
    a.association("CT1", "EDGE", "10.0.0.5", accepted=False, unavailable=True)

    event = only(a)
    assert isinstance(event, UserAuthenticationAudited) and event.outcome == 8


def test_stored_study_carries_its_uid_sop_classes_and_a_keyed_patient_hash() -> None:
    a = auditor()
    a.transferred(
        source=a.me(),
        destination=a.me(),
        study_uid=STUDY,
        sop_classes={CT: 3},
        patient_id="PID-42",
        action="C",
    )

    event = only(a)
    assert isinstance(event, InstancesTransferredAudited)
    assert event.event.code == "110104" and event.action == "C"
    study, patient = event.objects
    assert (study.object_id, study.id_type.code) == (STUDY, "110180")
    assert [(s.uid, s.count) for s in study.sop_classes] == [(CT, 3)]
    assert (patient.type_code, patient.role, patient.id_type.code) == (1, 1, "2")
    assert patient.object_id == AuditHasher(KEY).digest("PID-42")
    assert "PID-42" not in to_body(event).decode()
    assert event.subject() == STUDY


def test_patient_hash_depends_on_the_key_so_a_dictionary_cannot_reverse_it() -> None:
    assert AuditHasher("one").digest("PID-42") != AuditHasher("two").digest("PID-42")
    assert len(AuditHasher("one").digest("PID-42")) == 64


def test_query_keeps_tags_and_level_and_hashes_every_value() -> None:
    a = auditor()
    keys = {
        "00080052": {"vr": "CS", "Value": ["STUDY"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]},
        "00100030": {"vr": "DA", "Value": ["19700101"]},
        "0020000D": {"vr": "UI"},
    }
    a.query(a.me(), "1.2.840.10008.5.1.4.1.2.2.1", keys, level="STUDY")

    event = only(a)
    assert isinstance(event, QueryAudited) and event.event.code == "110112"
    [query] = event.objects
    assert (query.object_id, query.role, query.id_type.code) == (
        "1.2.840.10008.5.1.4.1.2.2.1",
        24,
        "110181",
    )
    details = {d.type: d.value for d in query.details}
    assert details["QueryRetrieveLevel"] == "STUDY"
    assert details["0020000D"] == ""  # a return key: nothing to hash
    assert len(details["00100010"]) == 64 and len(details["00100030"]) == 64
    body = to_body(event).decode()
    assert "DOE" not in body and "19700101" not in body


def test_login_failure_and_user_change_shapes() -> None:
    a = Auditor(None, source="edge-auth", hash_key=KEY)
    a.login("alice", address="10.1.1.1", success=False, reason="wrong password")
    a.user_changed("admin1", "alice", "added", roles=["radiologist"])
    a.ae_changed("cli", "CT1", "removed")

    login, added, removed = a.pending
    assert isinstance(login, UserAuthenticationAudited) and login.outcome == 4
    assert login.participants[0].user_id == "alice" and login.participants[0].kind == "user"
    assert isinstance(added, SecurityAlertAudited) and added.action == "C"
    assert [c.code for c in added.event_types] == ["110136"]
    assert {(d.type, d.value) for d in added.objects[0].details} == {
        ("change", "added"),
        ("role", "radiologist"),
    }
    assert removed.action == "D" and [c.code for c in removed.event_types] == ["110129"]


def test_audit_event_survives_the_codec_with_its_subject() -> None:
    a = auditor()
    a.transferred(
        source=a.me(), destination=a.me(), study_uid=STUDY, sop_classes={CT: 1}, action="R"
    )
    event = only(a)
    headers = to_headers(event, "/edge/listener")

    assert headers["ce-subject"] == STUDY
    assert headers["ce-type"] == "org.dicom-edge.audit.instances-transferred.v1"
    assert from_parts(headers, to_body(event)) == event


def test_an_event_cannot_carry_another_event_id_than_its_routing_key_says() -> None:
    data = json.loads(to_body(QueryAudited(action="E", outcome=0, source="x", participants=[])))
    data["event"] = {"code": "110114", "system": "DCM", "meaning": "User Authentication"}
    with pytest.raises(ValueError, match="110112"):
        QueryAudited.model_validate(data)


class FlakyBus:
    """Refuses the first ``failures`` publishes, then records what it confirms."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.published: list[AuditEvent] = []

    async def publish(self, event: Any, **_: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise BusError("broker down")
        self.published.append(event)


async def test_publisher_retries_in_order_until_the_broker_confirms() -> None:
    bus = FlakyBus(failures=2)
    a = auditor(bus)
    await a.start()
    for n in range(3):
        a.login(f"user{n}", success=True)
    await asyncio.sleep(0.8)  # two retries: 0.2 s then 0.4 s
    await a.stop()

    assert [e.participants[0].user_id for e in bus.published] == ["user0", "user1", "user2"]
    assert a.pending == []


async def test_emit_from_another_thread_is_published() -> None:
    bus = FlakyBus()
    a = auditor(bus)
    await a.start()
    thread = threading.Thread(target=lambda: a.login("from-thread", success=True))
    thread.start()
    thread.join()
    for _ in range(50):
        if bus.published:
            break
        await asyncio.sleep(0.01)
    await a.stop()

    assert [e.participants[0].user_id for e in bus.published] == ["from-thread"]


def test_full_buffer_drops_new_events_and_never_blocks() -> None:
    a = auditor(capacity=2)
    for n in range(5):
        a.login(f"user{n}", success=True)

    assert [e.participants[0].user_id for e in a.pending] == ["user0", "user1"]
