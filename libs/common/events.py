"""Every event of the suite as a frozen pydantic model, and the CloudEvents codec.

Events carry UIDs, counts, modalities, SOP classes, sizes and object keys, never patient names,
birth dates or other demographics; bytes never ride the bus.

Wire format: CloudEvents 1.0 in binary mode: the attributes travel as ``ce-*`` AMQP headers and
the body is the event's data as JSON (never pickle). ``to_headers``/``to_body`` and ``from_parts``
are the one place that knows the mapping.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SPEC_VERSION = "1.0"
TYPE_PREFIX = "org.dicom-edge."
CONTENT_TYPE = "application/json"

UID = str  # validated where it enters the system (edge.common.dicom), carried as text


class Event(BaseModel):
    """Base of every event: an ``id`` for idempotency and a ``time`` it happened."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ClassVar[str]  # the routing key on `edge.events`, e.g. "instance.received"
    version: ClassVar[int] = 1

    id: UUID = Field(default_factory=uuid4)
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def ce_type(cls) -> str:
        return f"{TYPE_PREFIX}{cls.name}.v{cls.version}"

    def subject(self) -> str | None:
        """The CloudEvents subject: the Study Instance UID where the event concerns a study."""
        return getattr(self, "study_uid", None)

    def data(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"id", "time"})


class InstanceReceived(Event):
    """The listener holds a durable copy of an instance in S3; ingestion indexes it."""

    name: ClassVar[str] = "instance.received"

    study_uid: UID
    series_uid: UID
    sop_instance_uid: UID
    sop_class_uid: UID
    transfer_syntax_uid: UID
    object_key: str
    size: int
    sha256: str
    calling_ae: str
    called_ae: str


class AeChanged(Event):
    """The AE registry changed; listeners drop their admission cache for that AE title."""

    name: ClassVar[str] = "ae.changed"

    ae_title: str
    change: str  # "added" | "updated" | "removed"


EVENT_TYPES: dict[str, type[Event]] = {cls.ce_type(): cls for cls in (InstanceReceived, AeChanged)}


class UndecodableMessage(ValueError):
    """A message that is not one of our events (unknown type, bad JSON, wrong fields)."""


def to_headers(event: Event, source: str) -> dict[str, str]:
    """The CloudEvents attributes of ``event`` as ``ce-*`` headers (binary content mode)."""
    headers = {
        "ce-specversion": SPEC_VERSION,
        "ce-id": str(event.id),
        "ce-source": source,
        "ce-type": event.ce_type(),
        "ce-time": event.time.isoformat(),
    }
    subject = event.subject()
    if subject:
        headers["ce-subject"] = subject
    return headers


def to_body(event: Event) -> bytes:
    return json.dumps(event.data(), separators=(",", ":")).encode()


def from_parts(headers: dict[str, Any], body: bytes) -> Event:
    """Rebuild an event from its ``ce-*`` headers and JSON body; raise UndecodableMessage."""
    ce_type = _text(headers.get("ce-type"))
    cls = EVENT_TYPES.get(ce_type)
    if cls is None:
        raise UndecodableMessage(f"unknown event type {ce_type!r}")
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise UndecodableMessage("event body is not a JSON object")
        return cls.model_validate(
            {**data, "id": _text(headers.get("ce-id")), "time": _text(headers.get("ce-time"))}
        )
    except (ValueError, ValidationError, TypeError) as exc:
        raise UndecodableMessage(f"{ce_type}: {exc}") from exc


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)
