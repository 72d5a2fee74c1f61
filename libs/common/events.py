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
from typing import Any, ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class InstanceFacts(BaseModel):
    """What every instance event says of the instance (fields shared by several events)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_uid: UID = Field(description="Study Instance UID (0020,000D).")
    series_uid: UID = Field(description="Series Instance UID (0020,000E).")
    sop_instance_uid: UID = Field(description="SOP Instance UID (0008,0018).")
    sop_class_uid: UID = Field(description="SOP Class UID (0008,0016).")
    transfer_syntax_uid: UID = Field(description="Transfer syntax the object is stored in.")
    object_key: str = Field(description="S3 key of the instance in the suite's bucket.")
    size: int = Field(ge=0, description="Size of the stored Part-10 object in bytes.")
    sha256: str = Field(description="SHA-256 of the stored object, hex.")


class InstanceReceived(Event, InstanceFacts):
    """The listener holds a durable copy of an instance in S3; ingestion indexes it."""

    name: ClassVar[str] = "instance.received"

    calling_ae: str = Field(description="Calling AE title of the association that sent it.")
    called_ae: str = Field(description="Called AE title (ours) of that association.")


class CatalogEvent(Event):
    """An event derived from a catalog change: written to the outbox in the transaction that made
    the change, published by the relay, replayable from ``GET /api/changes``.

    ``sequence`` is the change-feed position, assigned by the relay in commit order: strictly
    increasing across all catalog events, so a subscriber that remembers the last one it saw
    can ask for everything after it. It also travels as the CloudEvents ``sequence`` extension.
    """

    sequence: int = Field(
        0, ge=0, description="Change-feed position (GET /api/changes?after=N); 0 until relayed."
    )


class InstanceStored(CatalogEvent, InstanceFacts):
    """A new instance is in the catalog (first time this SOP Instance UID was seen)."""

    name: ClassVar[str] = "instance.stored"

    modality: str | None = Field(description="Modality of the series (0008,0060), if present.")
    calling_ae: str = Field(description="AE title (or STOW-RS client) that sent it.")


class InstanceReplaced(InstanceStored):
    """A known SOP Instance UID arrived again with different bytes; the catalog now describes
    the new object (same key, new ``sha256`` and ``size``)."""

    name: ClassVar[str] = "instance.replaced"

    previous_sha256: str = Field(description="SHA-256 of the object this one replaced.")


class SeriesSummary(BaseModel):
    """One series of a study as announced."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    series_uid: UID = Field(description="Series Instance UID (0020,000E).")
    modality: str | None = Field(description="Modality (0008,0060) of the series, if present.")
    sop_class_uids: list[UID] = Field(description="Distinct SOP Class UIDs, sorted.")
    instance_count: int = Field(ge=0, description="Instances in the series.")
    bytes: int = Field(ge=0, description="Sum of the instances' object sizes.")


class StudyArrived(CatalogEvent):
    """A study has been quiet for ``EDGE_STABLE_AFTER`` seconds: published once per study.

    Carries no patient name, ID, birth date or other demographics: UIDs, counts and sizes only.
    """

    name: ClassVar[str] = "study.arrived"

    study_uid: UID = Field(description="Study Instance UID (0020,000D).")
    series: list[SeriesSummary] = Field(description="Every series, by Series Instance UID.")
    modalities: list[str] = Field(description="Distinct modalities of the series, sorted.")
    sop_class_uids: list[UID] = Field(description="Distinct SOP Class UIDs, sorted.")
    series_count: int = Field(ge=0, description="Series in the study.")
    instance_count: int = Field(ge=0, description="Instances in the study.")
    bytes: int = Field(ge=0, description="Sum of the instances' object sizes.")
    object_key_prefix: str = Field(description="S3 key prefix of every object of the study.")
    first_received_at: datetime = Field(description="When the first instance was received.")
    last_received_at: datetime = Field(description="When the latest instance was received.")
    calling_aes: list[str] = Field(description="AE titles that sent instances, sorted.")


class StudyChanges(BaseModel):
    """What changed in a study since its previous announcement."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    series_added: list[UID] = Field(description="Series that were not in the last announcement.")
    series_changed: list[UID] = Field(
        description="Series already announced whose instances were added or replaced."
    )
    instances_added: int = Field(ge=0, description="Instances new since the last announcement.")
    instances_replaced: int = Field(
        ge=0, description="Instances that arrived again with other bytes since then."
    )
    bytes_added: int = Field(description="Change of the study's total size (may be negative).")
    previous_sequence: int | None = Field(
        description="Sequence of the announcement this one follows."
    )


class StudyUpdated(StudyArrived):
    """Instances arrived (or were replaced) after the study was announced, and the study has been
    quiet again for ``EDGE_STABLE_AFTER`` seconds. Same shape as ``study.arrived`` (the whole
    study as it is now) plus ``changes``."""

    name: ClassVar[str] = "study.updated"

    changes: StudyChanges


class AeChanged(Event):
    """The AE registry changed; listeners drop their admission cache for that AE title."""

    name: ClassVar[str] = "ae.changed"

    ae_title: str = Field(description="The remote AE title whose registry entry changed.")
    change: Literal["added", "updated", "removed"] = Field(description="What happened to it.")


class TokensRevoked(Event):
    """A user's access tokens issued before ``not_before`` are void: the user was locked (by an
    admin or after repeated failed logins), removed, given a new password or role, or their
    tokens were revoked outright. Every service's token verifier refuses such a token from
    then on (HTTP 401, a DICOM User Identity not verified); tokens issued later are valid.
    Published by auth and the ``edge user`` commands; services that were away load the recent
    ones from auth (RPC ``auth.revocations``) when they start or reconnect."""

    name: ClassVar[str] = "auth.tokens_revoked"

    login: str = Field(description="The user (login name) whose tokens are revoked.")
    not_before: int = Field(
        ge=0,
        description="Epoch seconds: a token of this user whose `iat` is earlier is refused.",
    )
    reason: Literal["locked", "lockout", "removed", "password", "role", "revoked"] = Field(
        description="Why: an admin's lock, a lockout after failed logins, the user removed, a "
        "new password, a new role, or an explicit revocation."
    )


# -- audit (DICOM PS3.15 A.5) ---------------------------------------------------------------


class AuditCode(BaseModel):
    """A coded value of the audit message (PS3.15 A.5.1: ``csd-code``, ``codeSystemName``,
    ``originalText``), e.g. (110112, DCM, "Query")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(description="Code value (`csd-code`), e.g. `110112`.")
    system: str = Field("DCM", description="Coding scheme (`codeSystemName`): `DCM`, `RFC-3881`.")
    meaning: str = Field(description="Code meaning (`originalText`), e.g. `Query`.")


class AuditParticipant(BaseModel):
    """An active participant (PS3.15 A.5.1 ``ActiveParticipant``): a remote AE, a user, a network
    node known only by its address, or one of the suite's own applications."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str = Field(
        description="`UserID`: an AE title, a user's login, a node's IP address (a peer that "
        "failed the TLS handshake, before any AE title), or `edge-<service>` for the suite."
    )
    kind: Literal["ae", "user", "node", "application"] = Field(
        description="What `user_id` identifies (the suite's filter key; not in the XML)."
    )
    is_requestor: bool = Field(description="`UserIsRequestor`: this participant asked for it.")
    network_access_point: str | None = Field(
        None, description="`NetworkAccessPointID`: the peer's IP address (or host name)."
    )
    network_access_point_type: Literal[1, 2, 5] | None = Field(
        None, description="`NetworkAccessPointTypeCode`: 1 machine name, 2 IP address, 5 URI."
    )
    roles: list[AuditCode] = Field(
        default=[],
        description="`RoleIDCode`s: (110153, DCM, Source Role ID), (110152, DCM, Destination "
        "Role ID), (110150, DCM, Application)...",
    )


class AuditDetail(BaseModel):
    """A ``ParticipantObjectDetail`` pair. Query keys travel as ``tag`` = the attribute tag and
    ``value`` = the keyed hash of its value (empty for a return key), never the value itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(description="Detail type: a tag `GGGGEEEE`, or a word such as `change`.")
    value: str = Field(description="The value: a keyed hash (hex) for query values.")


class AuditSopClass(BaseModel):
    """SOP classes of the instances concerned (PS3.15 A.5.1 ``SOPClass``, DICOM extension)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uid: UID = Field(description="SOP Class UID.")
    count: int = Field(ge=0, description="`NumberOfInstances` of that class.")


class AuditObject(BaseModel):
    """A participant object (PS3.15 A.5.1 ``ParticipantObjectIdentification``): a study by its
    UID, a patient by a keyed SHA-256 of the Patient ID (never the ID, name or birth date), a
    query by its SOP class with its keys' tags and hashed values, a registry entry or a user."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    object_id: str = Field(
        description="`ParticipantObjectID`: Study Instance UID, patient hash (HMAC-SHA-256 hex of "
        "the Patient ID under `EDGE_AUDIT_HASH_KEY`), SOP Class UID of a query, AE title, login."
    )
    type_code: Literal[1, 2, 3, 4] = Field(
        description="`ParticipantObjectTypeCode`: 1 person, 2 system object, 3 organization, "
        "4 other."
    )
    role: int = Field(
        ge=1,
        le=24,
        description="`ParticipantObjectTypeCodeRole` (RFC 3881): 1 patient, 3 report, "
        "6 user, 13 security resource, 24 query...",
    )
    id_type: AuditCode = Field(
        description="`ParticipantObjectIDTypeCode`: (110180, DCM, Study Instance UID), "
        "(2, RFC-3881, Patient Number), (110181, DCM, SOP Class UID), (110182, DCM, Node ID)..."
    )
    lifecycle: int | None = Field(
        None, description="`ParticipantObjectDataLifeCycle`: 1 origination, 6 access/use..."
    )
    details: list[AuditDetail] = Field(
        default=[], description="`ParticipantObjectDetail`s (query keys, a change)."
    )
    sop_classes: list[AuditSopClass] = Field(
        default=[], description="`SOPClass` elements: instances of a study, by class."
    )


class AuditEvent(Event):
    """Base of the audit events: one DICOM audit message (PS3.15 A.5) as a model. Subclasses fix
    the routing key and the EventID; ``time`` (ce-time) is the `EventDateTime`."""

    event_id: ClassVar[AuditCode]

    event: AuditCode = Field(description="`EventID` (PS3.15 A.5.2, CID 400).")
    event_types: list[AuditCode] = Field(
        default=[], description="`EventTypeCode`s (CID 401), e.g. (110122, DCM, Login)."
    )
    action: Literal["C", "R", "U", "D", "E"] = Field(
        description="`EventActionCode`: create, read, update, delete, execute."
    )
    outcome: Literal[0, 4, 8, 12] = Field(
        description="`EventOutcomeIndicator`: 0 success, 4 minor failure, 8 serious failure, "
        "12 major failure."
    )
    outcome_description: str | None = Field(
        None, description="`EventOutcomeDescription`: the suite's own words, never peer data."
    )
    source: str = Field(description="`AuditSourceID`: the service that saw it, `edge-<service>`.")
    participants: list[AuditParticipant] = Field(description="`ActiveParticipant`s.")
    objects: list[AuditObject] = Field(
        default=[], description="`ParticipantObjectIdentification`s."
    )

    @model_validator(mode="after")
    def _event_matches_routing_key(self) -> AuditEvent:
        if self.event.code != self.event_id.code:
            raise ValueError(f"{self.name} carries EventID {self.event_id.code}")
        return self

    def subject(self) -> str | None:
        """The first Study Instance UID among the participant objects, if any."""
        for obj in self.objects:
            if obj.id_type.code == "110180":
                return obj.object_id
        return None


def _dcm(code: str, meaning: str) -> AuditCode:
    return AuditCode(code=code, system="DCM", meaning=meaning)


class UserAuthenticationAudited(AuditEvent):
    """A party authenticated, or failed to (PS3.15 A.5.3.14 User Authentication): an association
    accepted (a remote AE "logs in"), a user's login or logout. Event type (110122, Login) or
    (110123, Logout); outcome 0 or 4 (wrong credentials), 8 when the check itself was
    unavailable."""

    name: ClassVar[str] = "audit.user-authentication"
    event_id: ClassVar[AuditCode] = _dcm("110114", "User Authentication")

    event: AuditCode = Field(event_id, description="`EventID`: (110114, DCM, User Authentication).")


class SecurityAlertAudited(AuditEvent):
    """Something the security officer must see (PS3.15 A.5.3.11 Security Alert): an association
    refused (unknown AE, wrong address, wrong called AE: (110126, Node Authentication)), a TLS
    handshake refused (revoked or untrusted certificate, old TLS version, not TLS at all: (110126,
    Node Authentication), the peer by its address, repeats coalesced), an
    operation refused for lack of permission ((110132, Use of Restricted Function)), the AE
    registry edited ((110129, Security Configuration)), users or roles changed ((110137, User
    Security Attributes Changed), (110136, Security Roles Changed))."""

    name: ClassVar[str] = "audit.security-alert"
    event_id: ClassVar[AuditCode] = _dcm("110113", "Security Alert")

    event: AuditCode = Field(event_id, description="`EventID`: (110113, DCM, Security Alert).")


class QueryAudited(AuditEvent):
    """A C-FIND or QIDO-RS query (PS3.15 A.5.3.12 Query): the requester, and the query as its SOP
    class with each key's tag and a keyed hash of its value."""

    name: ClassVar[str] = "audit.query"
    event_id: ClassVar[AuditCode] = _dcm("110112", "Query")

    event: AuditCode = Field(event_id, description="`EventID`: (110112, DCM, Query).")


class InstancesTransferredAudited(AuditEvent):
    """Instances moved between nodes (PS3.15 A.5.3.5 DICOM Instances Transferred), one message per
    study: stored here (C-STORE, STOW-RS; action C) or sent out (C-MOVE to its destination,
    C-GET, WADO-RS; action R). Source and destination as participants, the study with its SOP
    classes and counts, the patient as a hash."""

    name: ClassVar[str] = "audit.instances-transferred"
    event_id: ClassVar[AuditCode] = _dcm("110104", "DICOM Instances Transferred")

    event: AuditCode = Field(
        event_id, description="`EventID`: (110104, DCM, DICOM Instances Transferred)."
    )


class ExportAudited(AuditEvent):
    """Data left the suite's security domain (PS3.15 A.5.3.6 Export): a released study."""

    name: ClassVar[str] = "audit.export"
    event_id: ClassVar[AuditCode] = _dcm("110106", "Export")

    event: AuditCode = Field(event_id, description="`EventID`: (110106, DCM, Export).")


AUDIT_EVENTS: tuple[type[AuditEvent], ...] = (
    UserAuthenticationAudited,
    SecurityAlertAudited,
    QueryAudited,
    InstancesTransferredAudited,
    ExportAudited,
)


ALL_EVENTS: tuple[type[Event], ...] = (
    InstanceReceived,
    InstanceStored,
    InstanceReplaced,
    StudyArrived,
    StudyUpdated,
    AeChanged,
    TokensRevoked,
    *AUDIT_EVENTS,
)
EVENT_TYPES: dict[str, type[Event]] = {cls.ce_type(): cls for cls in ALL_EVENTS}
EVENTS_BY_NAME: dict[str, type[Event]] = {cls.name: cls for cls in ALL_EVENTS}


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
    if isinstance(event, CatalogEvent):
        # CloudEvents "sequence" extension: a string that sorts like the number (zero-padded).
        headers["ce-sequence"] = f"{event.sequence:020d}"
    return headers


def to_structured(event: Event, source: str) -> dict[str, Any]:
    """The event as one structured-mode CloudEvents JSON object (the change feed's form)."""
    attributes: dict[str, Any] = {
        name.removeprefix("ce-"): value for name, value in to_headers(event, source).items()
    }
    if isinstance(event, CatalogEvent):
        attributes["sequence"] = event.sequence  # a number here: JSON keeps it exact
    return {**attributes, "datacontenttype": CONTENT_TYPE, "data": event.data()}


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
        try:
            return value.decode()
        except UnicodeDecodeError as exc:
            raise UndecodableMessage(f"header is not UTF-8: {value[:40]!r}") from exc
    return "" if value is None else str(value)
