"""The audit trail's publishing side: build DICOM PS3.15 A.5 shaped ``audit.*`` events and send
them without ever holding up the operation they describe.

Every service that sees a PHI access or a security-relevant change records it through an
:class:`Auditor`; the auth service stores what arrives, append-only, in a hash chain
(``edge.auth.audit``). Usage, in a service's ``start()``::

    auditor = Auditor(bus, source="edge-auth", hash_key=settings.audit_hash_key)
    await auditor.start()
    ...
    auditor.login("alice", address="10.0.0.7", success=False, reason="wrong password")
    auditor.user_changed("admin1", "alice", "added", roles=["radiologist"], address=...)
    ...
    await auditor.stop()   # in stop(): sends what is still buffered (bounded wait)

Every ``Auditor`` method is synchronous, never blocks and never raises: it may be called from
the event loop or from any thread (pynetdicom's association threads). Events are queued in
memory and a background task publishes them in order, persistent and publisher-confirmed, on
``edge.events`` (routing key ``audit.<kind>``); a refused or unconfirmed publish is retried with
backoff, holding the order, until the broker takes it. The queue on the broker
(``auth.audit``, durable quorum) keeps them while auth is down.

What can be lost, and is counted: the buffer holds at most ``capacity`` events [10,000]; while the
broker is unreachable for long enough to fill it, new events are dropped and
``edge_audit_dropped_total`` counts them (an error is logged). Events still buffered when the
process stops after ``stop``'s grace period are counted there too. A crash loses the buffer
(seconds of events at most, normally none: the buffer drains as fast as the broker confirms).

No PHI leaves through here: patients are a keyed hash of the Patient ID (HMAC-SHA-256 under
``EDGE_AUDIT_HASH_KEY``: without the key a dictionary of IDs cannot be matched against it), query
values are keyed hashes, and outcome descriptions are the suite's own words.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from prometheus_client import Counter, Gauge
from pydantic import SecretStr

from edge.common.bus import EventBus
from edge.common.events import (
    AuditCode,
    AuditDetail,
    AuditEvent,
    AuditObject,
    AuditParticipant,
    AuditSopClass,
    ExportAudited,
    InstancesTransferredAudited,
    QueryAudited,
    SecurityAlertAudited,
    UserAuthenticationAudited,
)

log = logging.getLogger(__name__)

AUDIT_PUBLISHED = Counter("edge_audit_published_total", "Audit events the broker confirmed")
AUDIT_DROPPED = Counter(
    "edge_audit_dropped_total", "Audit events dropped: buffer full, or unsent at shutdown"
)
AUDIT_BUFFERED = Gauge("edge_audit_buffered", "Audit events waiting for the broker")

Outcome = Literal[0, 4, 8, 12]
SUCCESS: Outcome = 0
MINOR_FAILURE: Outcome = 4  # refused: wrong credentials, not permitted, bad request
SERIOUS_FAILURE: Outcome = 8  # could not be done: a dependency was down
MAJOR_FAILURE: Outcome = 12


def dcm(code: str, meaning: str) -> AuditCode:
    return AuditCode(code=code, system="DCM", meaning=meaning)


# PS3.16 CID 401 Audit Event Type Codes (the ones the suite uses).
LOGIN = dcm("110122", "Login")
LOGOUT = dcm("110123", "Logout")
NODE_AUTHENTICATION = dcm("110126", "Node Authentication")
SECURITY_CONFIGURATION = dcm("110129", "Security Configuration")
RESTRICTED_FUNCTION = dcm("110132", "Use of Restricted Function")
SECURITY_ROLES_CHANGED = dcm("110136", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = dcm("110137", "User Security Attributes Changed")
# CID 402 Audit Active Participant Role ID Codes.
APPLICATION = dcm("110150", "Application")
DESTINATION = dcm("110152", "Destination Role ID")
SOURCE = dcm("110153", "Source Role ID")
# CID 404 Audit Participant Object ID Type Codes, and RFC 3881's.
STUDY_INSTANCE_UID = dcm("110180", "Study Instance UID")
SOP_CLASS_UID = dcm("110181", "SOP Class UID")
NODE_ID = dcm("110182", "Node ID")
PATIENT_NUMBER = AuditCode(code="2", system="RFC-3881", meaning="Patient Number")
USER_IDENTIFIER = AuditCode(code="11", system="RFC-3881", meaning="User Identifier")

# RFC 3881 ParticipantObjectTypeCode / ...Role / ...DataLifeCycle.
PERSON, SYSTEM_OBJECT = 1, 2
ROLE_PATIENT, ROLE_REPORT, ROLE_USER, ROLE_SECURITY_RESOURCE, ROLE_QUERY = 1, 3, 6, 13, 24
LIFECYCLE_ORIGINATION, LIFECYCLE_ACCESS = 1, 6


class AuditHasher:
    """Keyed hashes for identifiers that must not travel: HMAC-SHA-256, hex."""

    def __init__(self, key: SecretStr | str) -> None:
        secret = key.get_secret_value() if isinstance(key, SecretStr) else key
        self._key = secret.encode()

    def digest(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()

    def value(self, value: Any) -> str:
        """A query value (a DICOM JSON ``Value`` list, a PN dict...) hashed as canonical JSON;
        an absent or empty value (a return key) gives ``""``."""
        if value in (None, "", [], {}):
            return ""
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return self.digest(text)


# -- participants and objects: plain functions -----------------------------------------------------


def ae(
    title: str, address: str | None = None, *, requestor: bool, role: AuditCode | None = None
) -> AuditParticipant:
    """A remote (or our) AE as an active participant."""
    return AuditParticipant(
        user_id=title,
        kind="ae",
        is_requestor=requestor,
        network_access_point=address or None,
        network_access_point_type=2 if address else None,
        roles=[role] if role else [],
    )


def user(login: str, address: str | None = None, *, requestor: bool = True) -> AuditParticipant:
    """A person or program by its login."""
    return AuditParticipant(
        user_id=login,
        kind="user",
        is_requestor=requestor,
        network_access_point=address or None,
        network_access_point_type=2 if address else None,
    )


def node(address: str, *, role: AuditCode | None = SOURCE) -> AuditParticipant:
    """A network peer known only by its IP address (it failed the TLS handshake: no AE title was
    ever sent), as the requesting participant; ``address`` may also be a label such as ``*``
    (addresses not tracked one by one), which is no network access point."""
    try:
        ipaddress.ip_address(address)
        is_ip = True
    except ValueError:
        is_ip = False
    return AuditParticipant(
        user_id=address,
        kind="node",
        is_requestor=True,
        network_access_point=address if is_ip else None,
        network_access_point_type=2 if is_ip else None,
        roles=[role] if role else [],
    )


def application(source: str, role: AuditCode | None = APPLICATION) -> AuditParticipant:
    """The suite's own service as a participant (the one answering)."""
    return AuditParticipant(
        user_id=source, kind="application", is_requestor=False, roles=[role] if role else []
    )


def study(uid: str, sop_classes: Mapping[str, int] | None = None) -> AuditObject:
    """A study by its UID, with the SOP classes of the instances concerned and their counts."""
    return AuditObject(
        object_id=uid,
        type_code=SYSTEM_OBJECT,
        role=ROLE_REPORT,
        id_type=STUDY_INSTANCE_UID,
        sop_classes=[AuditSopClass(uid=k, count=v) for k, v in sorted((sop_classes or {}).items())],
    )


def query_object(
    sop_class_uid: str, keys: Mapping[str, Any], hasher: AuditHasher, *, level: str | None = None
) -> AuditObject:
    """A query (PS3.15 A.5.3.12): its SOP class, and per key (DICOM JSON ``{tag: element}``) the
    tag with a keyed hash of its value; the level travels as a detail in the clear."""
    details = [AuditDetail(type="QueryRetrieveLevel", value=level)] if level else []
    for tag in sorted(keys):
        if tag == "00080052":  # the level itself
            continue
        element = keys[tag]
        value = element.get("Value") if isinstance(element, dict) else element
        details.append(AuditDetail(type=tag, value=hasher.value(value)))
    return AuditObject(
        object_id=sop_class_uid,
        type_code=SYSTEM_OBJECT,
        role=ROLE_QUERY,
        id_type=SOP_CLASS_UID,
        details=details,
    )


def registry_entry(title: str, change: str) -> AuditObject:
    """An AE registry entry that was added, updated or removed."""
    return AuditObject(
        object_id=title,
        type_code=SYSTEM_OBJECT,
        role=ROLE_SECURITY_RESOURCE,
        id_type=NODE_ID,
        details=[AuditDetail(type="change", value=change)],
    )


def user_object(login: str, change: str, roles: Iterable[str] = ()) -> AuditObject:
    """A user account that was added, changed or removed (its roles in the clear)."""
    details = [AuditDetail(type="change", value=change)]
    details += [AuditDetail(type="role", value=r) for r in roles]
    return AuditObject(
        object_id=login, type_code=PERSON, role=ROLE_USER, id_type=USER_IDENTIFIER, details=details
    )


class Auditor:
    """Builds audit events for one service and publishes them in the background (see the module
    docstring for the guarantees). ``bus`` None: events are only buffered (tests read
    :attr:`pending`)."""

    def __init__(
        self,
        bus: EventBus | None,
        *,
        source: str,
        hash_key: SecretStr | str,
        capacity: int = 10_000,
        max_delay: float = 5.0,
    ) -> None:
        self.bus = bus
        self.source = source
        self.hasher = AuditHasher(hash_key)
        self.capacity = capacity
        self.max_delay = max_delay
        self._pending: deque[AuditEvent] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- publishing ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background publisher on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self._pending:
            self._wake.set()
        if self.bus is not None:
            self._task = asyncio.create_task(self._drain(), name=f"audit publisher {self.source}")

    async def stop(self, timeout: float = 5.0) -> None:
        """Publish what is buffered (at most ``timeout`` s), then stop; the rest is counted."""
        self._stopping = True
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
        with self._lock:
            lost = len(self._pending) if self.bus is not None else 0
            if lost:
                self._pending.clear()
        if lost:
            AUDIT_DROPPED.inc(lost)
            log.error("%d audit event(s) not published before shutdown", lost)

    @property
    def pending(self) -> list[AuditEvent]:
        with self._lock:
            return list(self._pending)

    def emit(self, event: AuditEvent) -> None:
        """Queue ``event`` for publishing; never blocks, never raises."""
        with self._lock:
            if len(self._pending) >= self.capacity:
                AUDIT_DROPPED.inc()
                log.error("audit buffer full (%d): %s dropped", self.capacity, event.name)
                return
            self._pending.append(event)
            AUDIT_BUFFERED.set(len(self._pending))
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            if _on_loop(loop):
                wake.set()
            else:
                loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop closed in between: the event stays counted as pending
            pass

    async def _drain(self) -> None:
        assert self._wake is not None and self.bus is not None
        delay = 0.2
        while True:
            with self._lock:
                event = self._pending[0] if self._pending else None
            if event is None:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self.bus.publish(event)
            except Exception as exc:  # broker down or refusing: keep it, keep the order, retry
                if self._stopping:
                    return
                log.warning("audit publish failed, retry in %.1fs: %s", delay, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)
                continue
            delay = 0.2
            with self._lock:
                if self._pending and self._pending[0] is event:
                    self._pending.popleft()
                AUDIT_BUFFERED.set(len(self._pending))
            AUDIT_PUBLISHED.inc()

    # -- what services record ----------------------------------------------------------------------

    def patient(self, patient_id: str | None) -> AuditObject | None:
        """The patient as a keyed hash of the Patient ID (None without one)."""
        if not patient_id or not patient_id.strip():
            return None
        return AuditObject(
            object_id=self.hasher.digest(patient_id.strip()),
            type_code=PERSON,
            role=ROLE_PATIENT,
            id_type=PATIENT_NUMBER,
        )

    def me(self, role: AuditCode | None = APPLICATION) -> AuditParticipant:
        return application(self.source, role)

    def login(
        self,
        login: str,
        *,
        address: str | None = None,
        success: bool,
        reason: str = "",
        outcome: Outcome | None = None,
    ) -> None:
        """A user's login attempt (User Authentication, Login): ``success`` False with the
        reason in the suite's words ("wrong password", "locked"), never the password given."""
        self.emit(
            UserAuthenticationAudited(
                event_types=[LOGIN],
                action="E",
                outcome=outcome if outcome is not None else (SUCCESS if success else MINOR_FAILURE),
                outcome_description=reason or None,
                source=self.source,
                participants=[user(login, address), self.me()],
            )
        )

    def logout(self, login: str, *, address: str | None = None) -> None:
        """A user's logout or token revocation (User Authentication, Logout)."""
        self.emit(
            UserAuthenticationAudited(
                event_types=[LOGOUT],
                action="E",
                outcome=SUCCESS,
                source=self.source,
                participants=[user(login, address), self.me()],
            )
        )

    def user_changed(
        self,
        actor: str,
        login: str,
        change: Literal["added", "updated", "removed", "password", "locked", "unlocked", "revoked"],
        *,
        roles: Sequence[str] = (),
        address: str | None = None,
        success: bool = True,
        reason: str = "",
    ) -> None:
        """A user account changed by ``actor`` (an admin's login, or ``cli``): Security Alert,
        (110136, Security Roles Changed) when ``roles`` are given, else (110137, User Security
        Attributes Changed)."""
        kind = SECURITY_ROLES_CHANGED if roles else USER_SECURITY_ATTRIBUTES_CHANGED
        action: Literal["C", "U", "D"] = {"added": "C", "removed": "D"}.get(change, "U")  # type: ignore[assignment]
        self.emit(
            SecurityAlertAudited(
                event_types=[kind],
                action=action,
                outcome=SUCCESS if success else MINOR_FAILURE,
                outcome_description=reason or None,
                source=self.source,
                participants=[user(actor, address), self.me()],
                objects=[user_object(login, change, roles)],
            )
        )

    def ae_changed(
        self, actor: str, title: str, change: Literal["added", "updated", "removed"]
    ) -> None:
        """An AE registry entry changed (Security Alert, Security Configuration)."""
        action: Literal["C", "U", "D"] = {"added": "C", "removed": "D"}.get(change, "U")  # type: ignore[assignment]
        self.emit(
            SecurityAlertAudited(
                event_types=[SECURITY_CONFIGURATION],
                action=action,
                outcome=SUCCESS,
                source=self.source,
                participants=[user(actor), self.me()],
                objects=[registry_entry(title, change)],
            )
        )

    def association(
        self,
        calling_ae: str,
        called_ae: str,
        address: str,
        *,
        accepted: bool,
        reason: str = "",
        unavailable: bool = False,
        identity: str | None = None,
    ) -> None:
        """An association request: accepted (User Authentication, Login, outcome 0); refused by
        policy (Security Alert, Node Authentication, outcome 4); refused because admission could
        not be asked (User Authentication, outcome 8). ``identity``: the DICOM User Identity
        verified for an accepted association (PS3.7 D.3.3.7), a participant of its own."""
        peer = ae(calling_ae, address, requestor=True, role=SOURCE)
        us = ae(called_ae, requestor=False, role=DESTINATION)
        if accepted or unavailable:
            people = [user(identity, address)] if identity else []
            self.emit(
                UserAuthenticationAudited(
                    event_types=[LOGIN],
                    action="E",
                    outcome=SUCCESS if accepted else SERIOUS_FAILURE,
                    outcome_description=reason or None,
                    source=self.source,
                    participants=[peer, us, *people],
                )
            )
            return
        self.emit(
            SecurityAlertAudited(
                event_types=[NODE_AUTHENTICATION],
                action="E",
                outcome=MINOR_FAILURE,
                outcome_description=reason or None,
                source=self.source,
                participants=[peer, us],
                objects=[registry_entry(calling_ae, "refused")],
            )
        )

    def handshake_refused(
        self, address: str, reason: str, *, failures: int = 1, description: str = ""
    ) -> None:
        """A TLS handshake refused (Security Alert, Node Authentication, outcome 4): the peer by
        its address, ``reason`` in the suite's words ("certificate revoked", "not TLS"), never a
        certificate's subject. ``failures``: how many refusals this message stands for (repeats
        from the address coalesced), also a detail of the node object with the reason."""
        self.emit(
            SecurityAlertAudited(
                event_types=[NODE_AUTHENTICATION],
                action="E",
                outcome=MINOR_FAILURE,
                outcome_description=description or reason,
                source=self.source,
                participants=[node(address), self.me()],
                objects=[
                    AuditObject(
                        object_id=address,
                        type_code=SYSTEM_OBJECT,
                        role=ROLE_SECURITY_RESOURCE,
                        id_type=NODE_ID,
                        details=[
                            AuditDetail(type="reason", value=reason),
                            AuditDetail(type="failures", value=str(failures)),
                        ],
                    )
                ],
            )
        )

    def refused(self, requester: AuditParticipant, operation: str, reason: str) -> None:
        """An operation refused for lack of permission (Security Alert, Use of Restricted
        Function): ``operation`` such as ``C-MOVE``, in the outcome description."""
        self.emit(
            SecurityAlertAudited(
                event_types=[RESTRICTED_FUNCTION],
                action="E",
                outcome=MINOR_FAILURE,
                outcome_description=f"{operation}: {reason}",
                source=self.source,
                participants=[requester, self.me()],
            )
        )

    def query(
        self,
        requester: AuditParticipant,
        sop_class_uid: str,
        keys: Mapping[str, Any],
        *,
        level: str | None = None,
        outcome: Outcome = SUCCESS,
        reason: str = "",
    ) -> None:
        """A C-FIND or QIDO-RS query (Query, action E): ``keys`` the identifier as DICOM JSON;
        values are hashed, tags kept."""
        self.emit(
            QueryAudited(
                action="E",
                outcome=outcome,
                outcome_description=reason or None,
                source=self.source,
                participants=[requester, self.me()],
                objects=[query_object(sop_class_uid, keys, self.hasher, level=level)],
            )
        )

    def transferred(
        self,
        *,
        source: AuditParticipant,
        destination: AuditParticipant,
        study_uid: str,
        sop_classes: Mapping[str, int],
        patient_id: str | None = None,
        action: Literal["C", "R", "U"] = "R",
        outcome: Outcome = SUCCESS,
        reason: str = "",
        others: Sequence[AuditParticipant] = (),
    ) -> None:
        """Instances of one study moved from ``source`` to ``destination`` (DICOM Instances
        Transferred): action C when stored here, R when sent out. ``others``: e.g. the C-MOVE
        requester when it is not the destination."""
        objects = [study(study_uid, sop_classes)]
        patient = self.patient(patient_id)
        if patient is not None:
            objects.append(patient)
        self.emit(
            InstancesTransferredAudited(
                action=action,
                outcome=outcome,
                outcome_description=reason or None,
                source=self.source,
                participants=[source, destination, *others],
                objects=objects,
            )
        )

    def exported(
        self,
        *,
        actor: AuditParticipant,
        destination: AuditParticipant,
        study_uid: str,
        sop_classes: Mapping[str, int],
        patient_id: str | None = None,
        outcome: Outcome = SUCCESS,
        reason: str = "",
    ) -> None:
        """A study released outside the security domain (Export, action R)."""
        objects = [study(study_uid, sop_classes)]
        patient = self.patient(patient_id)
        if patient is not None:
            objects.append(patient)
        self.emit(
            ExportAudited(
                action="R",
                outcome=outcome,
                outcome_description=reason or None,
                source=self.source,
                participants=[actor, destination],
                objects=objects,
            )
        )


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
