"""Association acceptance: deny by default (PS3.8 7.1.1.3). Before any presentation context is
negotiated, the called AE must be ours, the calling AE registered for the peer's address (auth's
``auth.admit``, cached), the transport what the registry asks of it (TLS, a client certificate
naming it) and its DICOM User Identity (PS3.7 D.3.3.7) present and valid where required. Every
refusal is audited (Security Alert, Node Authentication) with its reason; an acceptance too
(User Authentication, Login), naming the user when one was verified. When admission or a User
Identity cannot be checked (auth unreachable or timing out), the association is rejected
transiently and audited as a serious failure (User Authentication, outcome 8).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from prometheus_client import Counter
from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from edge.common.admission import Admission
from edge.common.audit import Auditor
from edge.common.dimse import prefer_requested_order, set_nodelay
from edge.listener.identity import identity_refusal, outcome_of, transport_refusal
from edge.listener.spans import end_association, start_association

log = logging.getLogger(__name__)

ASSOCIATIONS = Counter("edge_associations_total", "Association requests by outcome", ["outcome"])

# PS3.8 9.3.4: A-ASSOCIATE-RJ (result, source, reason).
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service-user, called AE not recognised
REJECT_TRANSPORT = (0x01, 0x01, 0x01)  # permanent, service-user, no reason given
# PS3.7 D.3.3.7: an identity not accepted is rejected permanent, source service-provider (ACSE).
REJECT_IDENTITY = (0x01, 0x02, 0x01)
# PS3.8 Table 9-21: rejected-transient, DICOM UL service-provider (presentation related
# function), temporary congestion: admission or a User Identity could not be checked for now.
REJECT_TRANSIENT = (0x02, 0x03, 0x01)

Admit = Callable[[str, str], Admission]  # (calling AE, address) -> decision; blocks


def peer_certificate(assoc: Any) -> tuple[bool, dict[str, Any] | None]:
    """(over TLS, the verified client certificate or None) of ``assoc``'s connection."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return False, None
    try:
        return True, sock.getpeercert() or None
    except (ValueError, OSError):
        return True, None


class AdmittingACSE(ACSE):
    """ACSE that decides admission before negotiating."""

    def __init__(
        self, assoc: Any, admit: Admit, ae_title: str, audit: Auditor | None = None
    ) -> None:
        super().__init__(assoc)
        self._admit = admit
        self._ae_title = ae_title
        self._audit = audit
        self._identity: tuple[bool, UserIdentityNegotiation | None] = (True, None)

    def _audited(self, accepted: bool, reason: str = "", **extra: Any) -> None:
        if self._audit is not None:
            request = self.requestor.primitive
            assert request is not None
            self._audit.association(
                str(request.calling_ae_title).strip(),
                str(request.called_ae_title).strip(),
                str(self.assoc.requestor.address),
                accepted=accepted,
                reason=reason,
                **extra,
            )

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        assert request is not None  # the A-ASSOCIATE-RQ that started this negotiation
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        address = str(self.assoc.requestor.address)
        span = start_association(self.assoc, calling, called)

        if called != self._ae_title:
            return self._refuse(REJECT_CALLED_AE, f"called AE {called!r} is not ours")
        try:
            # The admission RPC (or cache hit) runs under the association's span.
            with trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                decision = self._admit(calling, address)
        except Exception as exc:  # auth unreachable: refuse for now, the peer may retry
            log.error("admission check failed for %s: %s", calling, exc)
            self._audited(False, "admission unavailable", unavailable=True)
            return self._reject(REJECT_TRANSIENT, "admission unavailable")
        if not decision.allowed:
            return self._refuse(REJECT_CALLING_AE, decision.reason)
        over_tls, peer_cert = peer_certificate(self.assoc)
        refusal = transport_refusal(
            decision, over_tls=over_tls, peer_cert=peer_cert, calling_ae=calling
        )
        if refusal is not None:
            return self._refuse(REJECT_TRANSPORT, refusal)
        user, refusal = self._check_identity(decision)
        outcome = outcome_of(self.assoc)
        if refusal is not None and outcome is not None and outcome.unavailable:
            # Auth unreachable, timing out or without its database: no verdict on the identity,
            # so refuse for now (the peer may retry) and audit it as a serious failure.
            self._audited(False, refusal, unavailable=True)
            return self._reject(REJECT_TRANSIENT, refusal)
        if refusal is not None:
            return self._refuse(REJECT_IDENTITY, refusal)
        self._audited(True, identity=user or None)
        self.assoc.edge_permissions = decision.permissions  # type: ignore[attr-defined]
        self.assoc.edge_user = user  # type: ignore[attr-defined]
        ASSOCIATIONS.labels("accepted").inc()
        prefer_requested_order(
            request.presentation_context_definition_list, self.acceptor.supported_contexts
        )
        super()._negotiate_as_acceptor()

    def _check_identity(self, decision: Admission) -> tuple[str, str | None]:
        """(verified user or "", refusal reason or None). The identity is verified here, once
        (EVT_USER_ID); pynetdicom's own negotiation then reuses the answer."""
        item = self.requestor.user_identity
        user_id_type = item.user_identity_type if item is not None else None
        refusal = identity_refusal(decision, user_id_type)
        if refusal is not None:
            return "", refusal
        if item is None or decision.identity == "none":
            self._identity = (True, None)  # none offered, or not supported: no response
            return "", None
        verified, _ = super()._check_user_identity()
        outcome = outcome_of(self.assoc)
        if not verified or outcome is None or not outcome.verified:
            reason = outcome.reason if outcome is not None and outcome.reason else "not verified"
            return "", f"user identity: {reason}"
        response = None
        if item.positive_response_requested:
            # PS3.8 D.3.3.7.2: a positive response; empty server response for these types.
            response = UserIdentityNegotiation()
            response.server_response = b""
        self._identity = (True, response)
        return outcome.user, None

    def _check_user_identity(self) -> tuple[bool, UserIdentityNegotiation | None]:
        return self._identity

    def _refuse(self, rsd: tuple[int, int, int], reason: str) -> None:
        self._audited(False, reason)
        self._reject(rsd, reason)

    def _reject(self, rsd: tuple[int, int, int], reason: str) -> None:
        log.warning("association rejected: %s", reason)
        ASSOCIATIONS.labels("rejected").inc()
        end_association(self.assoc, "rejected")
        self.send_reject(*rsd)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


def on_conn_open(
    event: evt.Event, admit: Admit, ae_title: str, audit: Auditor | None = None
) -> None:
    """EVT_CONN_OPEN: Nagle off, and admission wired into this association's ACSE."""
    set_nodelay(event)
    if event.assoc.is_acceptor:
        event.assoc.acse = AdmittingACSE(event.assoc, admit, ae_title, audit)
