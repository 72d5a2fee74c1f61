"""What the listener records in the audit trail (``edge.common.audit``), in one place.

- Associations: accepted, refused (``dimse.AdmittingACSE``).
- Stores, C-STORE and STOW-RS alike: one DICOM Instances Transferred message per study and
  outcome, aggregated over the association (or the STOW-RS request) and sent when it ends, not
  one per instance: PS3.15 A.5.3.5 allows it, and the trail (a serial hash chain) then grows
  with transfers, not with instances. The listener, not ingestion, records them: it is where
  the peer's AE title and address are known, and where refused instances end (ingestion never
  sees those). A C-STORE's own answer never waits for its audit event.
- C-FIND and QIDO-RS (Query), C-MOVE, C-GET and WADO-RS (DICOM Instances Transferred, R),
  permission refusals (Security Alert, Use of Restricted Function).
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from edge.common.audit import (
    DESTINATION,
    MINOR_FAILURE,
    SERIOUS_FAILURE,
    SOURCE,
    SUCCESS,
    Auditor,
    Outcome,
    ae,
    user,
)
from edge.common.dicom import Status
from edge.common.events import AuditParticipant
from edge.listener.storage_scp import StoreResult

STUDY_INSTANCE_UID = "0020000D"
PATIENT_ID = "00100020"


def outcome_of(status: int) -> Outcome:
    """A DIMSE final status as an EventOutcomeIndicator: success (and cancel) 0; the suite could
    not do it (0xA7xx, 0x0110) 8; a refusal or a bad request 4."""
    if status in (Status.SUCCESS, 0xFE00, 0xB000):
        return SUCCESS if status != 0xB000 else MINOR_FAILURE
    if (status & 0xFF00) == 0xA700 or status == Status.PROCESSING_FAILURE:
        return SERIOUS_FAILURE
    return MINOR_FAILURE


def peer(assoc: Any) -> AuditParticipant:
    """The requesting AE of an association, with its address."""
    return ae(
        str(assoc.requestor.ae_title).strip(),
        str(assoc.requestor.address),
        requestor=True,
        role=SOURCE,
    )


def us(assoc: Any, role: Any = DESTINATION) -> AuditParticipant:
    return ae(str(assoc.acceptor.ae_title).strip(), requestor=False, role=role)


def http_requester(request: Request) -> AuditParticipant:
    """Who made an HTTP request: the token's subject (``edge.common.authn``), else
    ``anonymous``; the client's address."""
    principal = getattr(request.state, "principal", None)
    login = str(getattr(principal, "subject", "") or "anonymous")
    return user(login, request.client.host if request.client else None)


def values(identifier: Mapping[str, Any], tag: str) -> list[str]:
    """The string values of ``tag`` in a DICOM JSON identifier (a list of UIDs, or one)."""
    element = identifier.get(tag)
    if not isinstance(element, dict):
        return []
    return [str(v).strip() for v in element.get("Value") or [] if str(v).strip()]


@dataclass
class StoreTally:
    """Instances stored and refused over one association or STOW-RS request, by study."""

    stored: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    refused: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    patients: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, result: StoreResult, claimed_sop_class: str | None = None) -> None:
        """Count one instance: stored (by study and SOP class) or refused (by the SOP class its
        request claimed; its study may be unreadable)."""
        with self.lock:
            if result.status == Status.SUCCESS and result.event is not None:
                event = result.event
                self.stored[event.study_uid][event.sop_class_uid] += 1
                if result.patient_id:
                    self.patients[event.study_uid] = result.patient_id
            else:
                self.refused[""][claimed_sop_class or "unknown"] += 1

    def flush(
        self, auditor: Auditor, source: AuditParticipant, destination: AuditParticipant
    ) -> None:
        """One message per study for the stored instances, one per study for the refused
        ones (PS3.15 A.5.2: never one message of mixed outcome); then empty."""
        with self.lock:
            stored, refused, patients = self.stored, self.refused, self.patients
            self.stored, self.refused = defaultdict(Counter), defaultdict(Counter)
            self.patients = {}
        for study, classes in stored.items():
            auditor.transferred(
                source=source,
                destination=destination,
                study_uid=study,
                sop_classes=classes,
                patient_id=patients.get(study),
                action="C",
            )
        for study, classes in refused.items():
            auditor.transferred(
                source=source,
                destination=destination,
                study_uid=study or "unknown",
                sop_classes={k: v for k, v in classes.items() if k != "unknown"},
                action="C",
                outcome=MINOR_FAILURE,
                reason=f"{sum(classes.values())} instance(s) refused",
            )


def tally_of(assoc: Any) -> StoreTally:
    """The association's store tally, made on first use."""
    tally = getattr(assoc, "edge_store_tally", None)
    if tally is None:
        tally = StoreTally()
        assoc.edge_store_tally = tally
    return tally  # type: ignore[no-any-return]


def association_ended(assoc: Any, auditor: Auditor | None) -> None:
    """Release, abort or close: the association's stores go to the trail (once)."""
    tally = getattr(assoc, "edge_store_tally", None)
    if auditor is None or tally is None:
        return
    tally.flush(auditor, peer(assoc), us(assoc))


def retrieved(
    auditor: Auditor | None,
    *,
    requester: AuditParticipant,
    destination: AuditParticipant,
    identifier: Mapping[str, Any],
    status: int,
    others: tuple[AuditParticipant, ...] = (),
    sop_classes: Mapping[str, Mapping[str, int]] | None = None,
    reason: str = "",
) -> None:
    """A C-MOVE, C-GET or WADO-RS retrieval: one message per study named, action R. The
    requester is the source of the request; we are the source of the instances."""
    if auditor is None:
        return
    if status == Status.NOT_AUTHORIZED:
        auditor.refused(requester, "retrieve", reason or "not permitted")
        return
    patients = values(identifier, PATIENT_ID)
    per_study = sop_classes or {}
    for study in values(identifier, STUDY_INSTANCE_UID) or list(per_study) or ["unknown"]:
        auditor.transferred(
            source=auditor.me(SOURCE),
            destination=destination,
            study_uid=study,
            sop_classes=per_study.get(study, {}),
            patient_id=patients[0] if len(patients) == 1 else None,
            action="R",
            outcome=outcome_of(status),
            reason=reason,
            others=(requester, *others) if requester is not destination else others,
        )
