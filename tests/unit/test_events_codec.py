"""The CloudEvents codec: round trips, refusals, and no patient data on the bus."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.common.events import (
    AeChanged,
    Event,
    InstanceReceived,
    UndecodableMessage,
    from_parts,
    to_body,
    to_headers,
)

SOURCE = "/edge/listener/test"


def instance_received(**overrides: Any) -> InstanceReceived:
    fields: dict[str, Any] = {
        "study_uid": "1.2.3",
        "series_uid": "1.2.3.4",
        "sop_instance_uid": "1.2.3.4.5",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "object_key": "studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5.dcm",
        "size": 39206,
        "sha256": "ab" * 32,
        "calling_ae": "CT1",
        "called_ae": "EDGE",
    }
    return InstanceReceived(**{**fields, **overrides})


EVENTS = [instance_received(), AeChanged(ae_title="CT1", change="updated")]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.name)
def test_event_survives_the_codec_round_trip(event: Event) -> None:
    decoded = from_parts(to_headers(event, SOURCE), to_body(event))

    assert type(decoded) is type(event)
    assert decoded == event


def test_round_trip_also_works_with_byte_headers_as_amqp_delivers_them() -> None:
    event = instance_received()
    headers = {k: v.encode() for k, v in to_headers(event, SOURCE).items()}

    assert from_parts(headers, to_body(event)) == event


def test_headers_carry_the_cloudevents_attributes_and_the_study_as_subject() -> None:
    event = instance_received()

    headers = to_headers(event, SOURCE)

    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-id"] == str(event.id)
    assert headers["ce-source"] == SOURCE
    assert headers["ce-type"] == "org.dicom-edge.instance.received.v1"
    assert headers["ce-subject"] == "1.2.3"


def test_event_without_a_study_has_no_subject_header() -> None:
    assert "ce-subject" not in to_headers(AeChanged(ae_title="CT1", change="added"), SOURCE)


def test_body_is_json_of_the_data_without_id_and_time() -> None:
    event = instance_received()

    body = json.loads(to_body(event))

    assert body["sop_instance_uid"] == "1.2.3.4.5"
    assert "id" not in body and "time" not in body


def test_unknown_event_type_is_undecodable() -> None:
    event = instance_received()
    headers = {**to_headers(event, SOURCE), "ce-type": "org.dicom-edge.instance.deleted.v1"}

    with pytest.raises(UndecodableMessage, match="unknown event type"):
        from_parts(headers, to_body(event))


def test_missing_type_header_is_undecodable() -> None:
    event = instance_received()
    headers = to_headers(event, SOURCE)
    del headers["ce-type"]

    with pytest.raises(UndecodableMessage):
        from_parts(headers, to_body(event))


def test_newer_version_of_a_known_event_is_undecodable() -> None:
    event = instance_received()
    headers = {**to_headers(event, SOURCE), "ce-type": "org.dicom-edge.instance.received.v2"}

    with pytest.raises(UndecodableMessage):
        from_parts(headers, to_body(event))


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"\xff\xfe", b"[1, 2]", b'"text"', b"null"],
    ids=["broken", "empty", "not_utf8", "array", "string", "null"],
)
def test_body_that_is_not_a_json_object_is_undecodable(body: bytes) -> None:
    with pytest.raises(UndecodableMessage):
        from_parts(to_headers(instance_received(), SOURCE), body)


def test_body_missing_a_field_is_undecodable() -> None:
    event = instance_received()
    data = json.loads(to_body(event))
    del data["sha256"]

    with pytest.raises(UndecodableMessage, match="sha256"):
        from_parts(to_headers(event, SOURCE), json.dumps(data).encode())


def test_body_with_an_unknown_field_is_undecodable() -> None:
    event = instance_received()
    data = {**json.loads(to_body(event)), "patient_name": "Doe^Jane"}

    with pytest.raises(UndecodableMessage):
        from_parts(to_headers(event, SOURCE), json.dumps(data).encode())


def test_field_of_the_wrong_type_is_undecodable() -> None:
    event = instance_received()
    data = {**json.loads(to_body(event)), "size": "big"}

    with pytest.raises(UndecodableMessage):
        from_parts(to_headers(event, SOURCE), json.dumps(data).encode())


@pytest.mark.parametrize("header", ["ce-id", "ce-time"])
def test_bad_id_or_time_header_is_undecodable(header: str) -> None:
    event = instance_received()
    headers = {**to_headers(event, SOURCE), header: "yesterday"}

    with pytest.raises(UndecodableMessage):
        from_parts(headers, to_body(event))


def test_events_are_frozen() -> None:
    event = instance_received()

    with pytest.raises(ValueError):
        event.size = 1  # type: ignore[misc]


PATIENT_WORDS = ("patient", "name", "birth", "sex", "age", "address", "phone", "accession")


@pytest.mark.parametrize("cls", [InstanceReceived, AeChanged], ids=lambda c: c.__name__)
def test_events_carry_no_patient_fields(cls: type[Event]) -> None:
    fields = set(cls.model_fields)

    leaks = sorted(f for f in fields if any(word in f.lower() for word in PATIENT_WORDS))

    assert leaks == []
