"""The generated event reference: committed copies current, AsyncAPI 3 shape, no demographics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.common import eventdocs
from edge.common.events import ALL_EVENTS, Event, from_parts, to_body, to_headers

DOCS = Path(__file__).resolve().parents[2] / "docs"

# Every field name an event (or a model nested in one) may have. A new field is added here on
# purpose, after checking that it carries no patient demographics: events announce UIDs, counts,
# sizes and keys, and anyone bound to edge.events reads them.
ALLOWED_FIELDS = {
    "id",
    "time",
    "sequence",
    "study_uid",
    "series_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "sop_class_uids",
    "transfer_syntax_uid",
    "modality",
    "modalities",
    "object_key",
    "object_key_prefix",
    "size",
    "bytes",
    "sha256",
    "previous_sha256",
    "calling_ae",
    "calling_aes",
    "called_ae",
    "series",
    "series_count",
    "instance_count",
    "first_received_at",
    "last_received_at",
    "changes",
    "series_added",
    "series_changed",
    "instances_added",
    "instances_replaced",
    "bytes_added",
    "previous_sequence",
    "ae_title",
    "change",
    # auth.tokens_revoked: a staff or program login (never a patient), a time and our reason.
    "login",
    "not_before",
    "reason",
    # Audit events (PS3.15 A.5): codes, participants by AE title / login / IP, objects by UID or
    # a keyed hash (patients, query values); never a patient's ID, name or birth date.
    "event",
    "event_types",
    "action",
    "outcome",
    "outcome_description",
    "source",
    "participants",
    "objects",
    "code",
    "system",
    "meaning",
    "user_id",
    "kind",
    "is_requestor",
    "network_access_point",
    "network_access_point_type",
    "roles",
    "type",
    "value",
    "uid",
    "count",
    "object_id",
    "type_code",
    "role",
    "id_type",
    "lifecycle",
    "details",
    "sop_classes",
}
DEMOGRAPHIC = re.compile(
    r"patient|name|birth|dob|sex|gender|(^|_)age(_|$)|address|phone|weight|height|ethnic|"
    r"accession|physician|operator|mrn",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return yaml.safe_load(eventdocs.render_asyncapi())


@pytest.mark.parametrize("name", eventdocs.DOCS)
def test_committed_docs_match_the_generator(name: str) -> None:
    committed = DOCS / name
    assert committed.is_file(), f"docs/{name} is missing: run `make docs`"
    assert committed.read_text() == eventdocs.render()[name], (
        f"docs/{name} is stale (the event models changed): run `make docs` and commit the result"
    )


def test_rendering_is_deterministic() -> None:
    assert eventdocs.render() == eventdocs.render()


def test_check_mode_lists_stale_files_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "events.md").write_text("old")

    assert eventdocs.main(["--check", "--docs", str(tmp_path)]) == 1
    assert (tmp_path / "events.md").read_text() == "old"
    assert not (tmp_path / "asyncapi.yaml").exists()

    assert eventdocs.main(["--docs", str(tmp_path)]) == 0
    assert eventdocs.main(["--check", "--docs", str(tmp_path)]) == 0


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=lambda c: c.name)
def test_every_event_is_documented_in_both(cls: type[Event], asyncapi: dict[str, Any]) -> None:
    markdown = eventdocs.render_markdown()
    assert f"## {cls.name}\n" in markdown and cls.ce_type() in markdown
    channel = asyncapi["channels"][cls.name]
    assert channel["address"] == cls.name
    assert channel["bindings"]["amqp"]["exchange"]["name"] == "edge.events"
    message = asyncapi["components"]["messages"][cls.__name__]
    assert message["bindings"]["amqp"]["messageType"] == cls.ce_type()


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=lambda c: c.name)
def test_examples_are_events_the_codec_round_trips(cls: type[Event]) -> None:
    event = eventdocs.example(cls)

    assert from_parts(to_headers(event, "/test"), to_body(event)) == event
    assert eventdocs.example(cls) == event


def test_asyncapi_document_is_version_3_and_describes_what_we_send(
    asyncapi: dict[str, Any],
) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    assert asyncapi["info"]["title"] and asyncapi["info"]["version"]
    assert asyncapi["servers"]["rabbitmq"] == {
        **asyncapi["servers"]["rabbitmq"],
        "host": "127.0.0.1:5672",
        "protocol": "amqp",
    }
    assert {op["action"] for op in asyncapi["operations"].values()} == {"send"}
    assert set(asyncapi["channels"]) == {cls.name for cls in ALL_EVENTS}
    for key in asyncapi["channels"]:
        assert re.fullmatch(r"[\w.\-]+", key), key  # AsyncAPI 3 component/channel key pattern


def test_every_ref_in_the_asyncapi_document_resolves(asyncapi: dict[str, Any]) -> None:
    refs = list(_refs(asyncapi))

    assert refs, "the document uses no $ref at all: the generator changed shape"
    for ref in refs:
        _resolve(asyncapi, ref)


def test_operations_point_at_their_channel_and_its_messages(asyncapi: dict[str, Any]) -> None:
    for name, operation in asyncapi["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        channel = _resolve(asyncapi, channel_ref)
        assert "address" in channel, name
        # AsyncAPI 3: an operation's messages must be a subset of its channel's messages.
        for message in operation["messages"]:
            assert message["$ref"].startswith(f"{channel_ref}/messages/"), name
            _resolve(asyncapi, message["$ref"])


def test_every_message_has_a_payload_schema_and_headers(asyncapi: dict[str, Any]) -> None:
    for name, message in asyncapi["components"]["messages"].items():
        assert message["contentType"] == "application/json", name
        payload = _resolve(asyncapi, message["payload"]["$ref"])
        assert payload["type"] == "object" and payload["properties"], name
        assert not {"id", "time"} & set(payload["properties"]), "id/time ride as ce-id/ce-time"
        assert "allOf" in message["headers"], name
        example = message["examples"][0]
        assert set(example["payload"]) <= set(payload["properties"]), name


def test_no_event_field_outside_the_allow_list() -> None:
    fields = set(_field_names())
    unexpected = fields - ALLOWED_FIELDS

    assert not unexpected, (
        f"new event fields {sorted(unexpected)}: check they carry no patient demographics, "
        "then add them to ALLOWED_FIELDS"
    )


def test_allow_list_names_no_demographics() -> None:
    assert not [name for name in ALLOWED_FIELDS if DEMOGRAPHIC.search(name)]


def _field_names() -> Iterator[str]:
    for cls in ALL_EVENTS:
        schema = cls.model_json_schema()
        for model in [schema, *schema.get("$defs", {}).values()]:
            yield from model.get("properties", {})


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer (RFC 6901); fail the test if it leads nowhere."""
    assert ref.startswith("#/"), f"{ref}: only references inside the document are allowed"
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node
