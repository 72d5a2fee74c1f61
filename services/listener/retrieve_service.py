"""C-MOVE and C-GET responses from our own handlers, not pynetdicom's sub-operation loop.

pynetdicom's Query/Retrieve SCP performs C-MOVE's sub-operations itself (it wants the
destination's address from the handler and associates from the listener), and its C-GET sends
only decoded data sets. Neither fits: C-MOVE's C-STOREs are the retrieval service's, and C-GET
sends the stored bytes from a spool file. So C-MOVE and C-GET requests go to
``EdgeRetrieveService``: it triggers ``EVT_C_MOVE`` / ``EVT_C_GET`` as pynetdicom does (the
handlers stay bound in the listener's one list), and the handler yields
:class:`RetrieveResponse` objects, each sent as it comes: pendings, then one final response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

import pynetdicom.association as _association
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import Histogram
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.service_class import QueryRetrieveServiceClass, ServiceClass
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from edge.common.dicom import Status
from edge.common.direct import DirectSender
from edge.common.suboperations import CANCELLED, PENDING, SUCCESS, UNABLE_TO_PROCESS, WARNING
from edge.common.tracing import record_failure, safe_attributes
from edge.listener.spans import association_context

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# The information models we retrieve from, by SOP Class (PS3.4 C.6.1, C.6.2).
MOVE_MODELS: dict[str, str] = {
    str(PatientRootQueryRetrieveInformationModelMove): "PATIENT",
    str(StudyRootQueryRetrieveInformationModelMove): "STUDY",
}
GET_MODELS: dict[str, str] = {
    str(PatientRootQueryRetrieveInformationModelGet): "PATIENT",
    str(StudyRootQueryRetrieveInformationModelGet): "STUDY",
}


@dataclass(frozen=True)
class RetrieveResponse:
    """One C-MOVE or C-GET response. Counts left None are not sent (PS3.7 9.1.3/9.1.4: the
    remaining count goes with pendings and a cancel only)."""

    status: int
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    failed_uids: tuple[str, ...] = ()
    comment: str = ""

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> RetrieveResponse:
        """A ``retrieval.move`` reply (or a reply-shaped decision of the listener's own)."""
        status = int(reply["status"])
        final = status != PENDING
        return cls(
            status=status,
            remaining=reply.get("remaining") if status in (PENDING, CANCELLED) else None,
            completed=reply.get("completed"),
            failed=reply.get("failed"),
            warning=reply.get("warning"),
            failed_uids=tuple(reply.get("failed_uids") or ()) if final else (),
            comment=str(reply.get("comment") or ""),
        )


def traced(
    name: str,
    event: evt.Event,
    responses: Iterator[RetrieveResponse],
    seconds: Histogram,
    on_end: Callable[[RetrieveResponse | None], None],
) -> Iterator[RetrieveResponse]:
    """``responses`` of one C-MOVE or C-GET under a span named ``name``, timed in ``seconds``
    by final status; the span carries AE titles and counts, never the identifier's values.
    ``on_end`` gets the final response (None when there was none), e.g. for the audit trail."""
    started = time.monotonic()
    calling = str(event.assoc.requestor.ae_title).strip()
    span = tracer.start_span(
        name,
        context=association_context(event.assoc),
        kind=SpanKind.SERVER,
        attributes=safe_attributes({"dicom.calling_ae": calling}),
    )
    final = "none"
    last: RetrieveResponse | None = None
    try:
        with trace.use_span(span, end_on_exit=False):
            for response in responses:
                if response.status != PENDING:
                    last = response
                    final = f"0x{response.status:04X}"
                    span.set_attributes(
                        safe_attributes(
                            {
                                "dicom.status": final,
                                "edge.count": response.completed or 0,
                                "edge.failed": response.failed or 0,
                            }
                        )
                    )
                yield response
    except Exception as exc:
        record_failure(span, exc)
        raise
    finally:
        if final not in ("0x0000", "0xFE00"):
            span.set_status(StatusCode.ERROR, final)
        span.end()
        seconds.labels(final).observe(time.monotonic() - started)
        on_end(last)


def retrieve_request(
    event: evt.Event, permission: str, models: dict[str, str]
) -> dict[str, Any] | RetrieveResponse:
    """The checks C-MOVE and C-GET share: the requester's ``permission``, the information model
    of the SOP class, a decodable identifier. The request payload (model, level, identifier as
    DICOM JSON), or the response that refuses it."""
    permissions: frozenset[str] = getattr(event.assoc, "edge_permissions", frozenset())
    calling = str(event.assoc.requestor.ae_title).strip()
    if permission not in permissions:
        return RetrieveResponse(Status.NOT_AUTHORIZED, comment=f"{calling} may not {permission}")
    model = models.get(str(event.request.AffectedSOPClassUID or ""))
    if model is None:
        return RetrieveResponse(0xA900, comment="information model not supported")
    try:
        identifier = event.identifier
        return {
            "model": model,
            "level": str(identifier.get("QueryRetrieveLevel", "") or "").strip(),
            "identifier": identifier.to_json_dict(),
        }
    except Exception as exc:
        log.warning(
            "C-%s from %s: identifier cannot be decoded (%s)",
            permission.upper(),
            calling,
            type(exc).__name__,
        )
        return RetrieveResponse(0xC000, comment="identifier cannot be decoded")


def _is_failure(status: int) -> bool:
    return status not in (SUCCESS, PENDING, CANCELLED, WARNING)


class EdgeRetrieveService(QueryRetrieveServiceClass):
    """The Query/Retrieve service class for C-MOVE and C-GET (C-FIND stays pynetdicom's)."""

    def _move_scp(self, req: C_MOVE, context: Any) -> None:
        self._serve(req, context, C_MOVE, evt.EVT_C_MOVE)

    def _get_scp(self, req: C_GET, context: Any) -> None:
        self._serve(req, context, C_GET, evt.EVT_C_GET)

    def _serve(self, req: Any, context: Any, primitive: type, event: Any) -> None:
        cx_id = cast(int, context.context_id)
        syntax = context.transfer_syntax[0]
        try:
            responses = cast(
                Iterator[RetrieveResponse],
                evt.trigger(
                    self.assoc,
                    event,
                    {
                        "request": req,
                        "context": context.as_tuple,
                        "_is_cancelled": self.is_cancelled,
                    },
                ),
            )
            for response in responses:
                if not self.assoc.is_established:
                    return  # the peer released or aborted: nobody to answer
                DirectSender(self.assoc).send_message(
                    self._response(req, primitive, response, syntax), cx_id
                )
                if response.status != PENDING:
                    return
        except Exception:
            log.exception("%s handler failed", primitive.__name__)
            if self.assoc.is_established:
                failure = RetrieveResponse(UNABLE_TO_PROCESS, comment="internal error")
                DirectSender(self.assoc).send_message(
                    self._response(req, primitive, failure, syntax), cx_id
                )

    @staticmethod
    def _response(req: Any, primitive: type, response: RetrieveResponse, syntax: Any) -> Any:
        rsp = primitive()
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        rsp.Status = response.status
        rsp.NumberOfRemainingSuboperations = response.remaining
        rsp.NumberOfCompletedSuboperations = response.completed
        rsp.NumberOfFailedSuboperations = response.failed
        rsp.NumberOfWarningSuboperations = response.warning
        if response.comment and _is_failure(response.status):
            rsp.ErrorComment = response.comment[:64]  # PS3.7 C.4: at most 64 characters
        if response.failed_uids and response.status != PENDING:
            # PS3.4 C.4.2.1.4.2: the Failed SOP Instance UID List is the final identifier.
            identifier = Dataset()
            identifier.FailedSOPInstanceUIDList = list(response.failed_uids)
            encoded = encode(
                identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
            )
            rsp.Identifier = BytesIO(cast(bytes, encoded))
        return rsp


_ROUTED = frozenset({*MOVE_MODELS, *GET_MODELS})


def install() -> None:
    """Route C-MOVE and C-GET requests of this process's associations to
    :class:`EdgeRetrieveService`. pynetdicom picks a request's service class with
    ``uid_to_service_class`` inside ``Association._serve_request``; we wrap that one name."""
    original = _association.uid_to_service_class
    if getattr(original, "edge_routed", False):
        return

    def service_class(uid: str) -> type[ServiceClass]:
        if uid in _ROUTED:
            return EdgeRetrieveService
        return original(uid)

    service_class.edge_routed = True  # type: ignore[attr-defined]
    _association.uid_to_service_class = service_class
