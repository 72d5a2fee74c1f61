"""The pynetdicom adapter: AE, contexts, admission at A-ASSOCIATE (``acceptance.py``), C-ECHO,
C-STORE, C-FIND, C-MOVE and C-GET handlers (``find_scp.py``, ``move_scp.py``, ``get_scp.py``).

pynetdicom runs each association in a thread of its own; the handlers here block that thread
(S3 upload, confirmed publish), which is what lets several associations proceed at once.

Tracing: a span per association (``DICOM association``, see ``spans.py``) and, under it, a span
per C-STORE (``C-STORE``) whose children are the S3 put and the confirmed publish.
"""

from __future__ import annotations

import copy
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import Counter, Histogram
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from edge.common.audit import Auditor
from edge.common.dicom import Status
from edge.common.dimse import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from edge.common.store import ObjectStore
from edge.common.tracing import record_failure, safe_attributes
from edge.listener.acceptance import Admit, on_conn_open
from edge.listener.auditing import association_ended, tally_of
from edge.listener.find_scp import FIND_MODELS, FindDeps, on_c_find
from edge.listener.get_scp import GetDeps, on_c_get
from edge.listener.identity import Identify, on_user_identity
from edge.listener.move_scp import MoveDeps, on_c_move
from edge.listener.retrieve_service import GET_MODELS, MOVE_MODELS, install
from edge.listener.spans import association_context, end_association
from edge.listener.storage_scp import Publish, StoreRequest, StoreResult, store_instance

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# Received data sets go to a spool file, never to memory (pynetdicom >= 2.0).
_config.STORE_RECV_CHUNKED_DATASET = True

C_STORE_SECONDS = Histogram(
    "edge_cstore_seconds",
    "C-STORE handling time (spooled file to response), by response status",
    ["status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
C_STORE_BYTES = Histogram(
    "edge_cstore_bytes",
    "Size of stored instances",
    buckets=(1e3, 1e4, 1e5, 5e5, 1e6, 1e7, 1e8, 1e9),
)
C_STORE_STATUS = Counter("edge_cstore_total", "C-STORE responses by status", ["status"])


@dataclass
class StoreDeps:
    store: ObjectStore
    publish: Publish
    max_size: int
    deadline: float
    uploads: Executor | None = None
    audit: Auditor | None = None


def on_released(event: evt.Event, audit: Auditor | None = None) -> None:
    """EVT_RELEASED: the association's span ends (A-RELEASE, PS3.8 7.2); its stores are
    audited. The span ends first: the connection's close, on another thread, ends it too, and
    whichever comes first names the outcome."""
    end_association(event.assoc, "released")
    association_ended(event.assoc, audit)


def on_aborted(event: evt.Event, audit: Auditor | None = None) -> None:
    """EVT_ABORTED: the association's span ends as failed (A-ABORT / A-P-ABORT, PS3.8 7.3-7.4)."""
    end_association(event.assoc, "aborted", failed=True)
    association_ended(event.assoc, audit)


def on_conn_close(event: evt.Event, audit: Auditor | None = None) -> None:
    """EVT_CONN_CLOSE: the connection went without release or abort: end the span anyway."""
    end_association(event.assoc, "closed")
    association_ended(event.assoc, audit)


def on_c_echo(event: evt.Event) -> int:
    """C-ECHO (PS3.4 A.4): success for any admitted association."""
    return Status.SUCCESS


def on_c_store(event: evt.Event, deps: StoreDeps) -> Dataset:
    """C-STORE (PS3.4 B.2): the spooled instance is made durable and announced, or refused."""
    started = time.monotonic()
    command = cast(C_STORE, event.request)
    request = StoreRequest(
        path=Path(event.dataset_path),
        sop_class_uid=str(command.AffectedSOPClassUID or ""),
        sop_instance_uid=str(command.AffectedSOPInstanceUID or ""),
        calling_ae=str(event.assoc.requestor.ae_title).strip(),
        called_ae=str(event.assoc.acceptor.ae_title).strip(),
        permissions=getattr(event.assoc, "edge_permissions", frozenset()),
    )
    with tracer.start_as_current_span(
        "C-STORE",
        context=association_context(event.assoc),
        kind=SpanKind.SERVER,
        attributes=safe_attributes(
            {
                "dicom.calling_ae": request.calling_ae,
                "dicom.called_ae": request.called_ae,
                "dicom.sop_class_uid": request.sop_class_uid,
                "dicom.sop_instance_uid": request.sop_instance_uid,
            }
        ),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            result = store_instance(
                request,
                store=deps.store,
                publish=deps.publish,
                max_size=deps.max_size,
                deadline=deps.deadline,
                uploads=deps.uploads,
            )
        except Exception as exc:  # a bug of ours: say so plainly rather than pynetdicom's 0xC211
            record_failure(span, exc)
            log.exception("C-STORE handler failed for %s", request.sop_instance_uid)
            result = StoreResult(Status.PROCESSING_FAILURE, "internal error")
        status_label = f"0x{result.status:04X}"
        span.set_attributes(safe_attributes({"dicom.status": status_label}))
        if result.status != Status.SUCCESS:
            span.set_status(StatusCode.ERROR, status_label)
            # Logged inside the span, so the line carries the C-STORE's trace id.
            log.warning(
                "C-STORE from %s refused with 0x%04X: %s",
                request.calling_ae,
                result.status,
                result.comment,
            )
    if deps.audit is not None:  # sent when the association ends (auditing.py)
        tally_of(event.assoc).add(result, request.sop_class_uid)
    C_STORE_SECONDS.labels(status_label).observe(time.monotonic() - started)
    C_STORE_STATUS.labels(status_label).inc()
    if result.status == Status.SUCCESS:
        C_STORE_BYTES.observe(result.size)
    status = Dataset()
    status.Status = int(result.status)
    if result.comment:
        # PS3.7 C.4: Error Comment is at most 64 characters.
        status.ErrorComment = result.comment[:64]
    return status


def build_ae(
    *,
    ae_title: str,
    max_associations: int,
    max_pdu_size: int,
    acse_timeout: float,
    dimse_timeout: float,
    network_timeout: float,
) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = max_associations
    ae.maximum_pdu_size = max_pdu_size
    ae.acse_timeout = acse_timeout
    ae.dimse_timeout = dimse_timeout
    ae.network_timeout = network_timeout
    ae.add_supported_context(Verification)
    for sop_class in STORAGE_SOP_CLASSES:
        # Both roles may be taken: a C-GET requester proposes the SCP role for the storage SOP
        # classes it will receive (PS3.7 D.3.3.4); a modality proposes none and stays SCU.
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    for sop_class in [*FIND_MODELS, *MOVE_MODELS, *GET_MODELS]:
        ae.add_supported_context(sop_class)  # identifiers: implicit and explicit VR LE
    for context in ae._supported_contexts.values():
        context.__class__ = SharedUIDContext
    install()  # C-MOVE and C-GET answered by our handlers (retrieve_service.py)
    return ae


class SharedUIDContext(PresentationContext):
    """A supported presentation context whose deep copy shares its UIDs.

    pynetdicom deep-copies every supported context for each association it accepts
    (``transport.RequestHandler._create_association``): ~170 SOP classes by ~45 transfer syntax
    UIDs, each rebuilt and re-validated by pydicom, 0.2 to 0.8 s of CPU per association on a
    2-core machine, before a C-MOVE, C-GET or C-STORE can start. UIDs are immutable strings:
    sharing them is safe; the transfer syntax list is copied.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedUIDContext:
        twin = copy.copy(self)
        twin._transfer_syntax = list(self._transfer_syntax)
        return twin


def event_handlers(
    admit: Admit,
    ae_title: str,
    deps: StoreDeps,
    find: FindDeps,
    *,
    move: MoveDeps | None = None,
    get: GetDeps | None = None,
    audit: Auditor | None = None,
    identify: Identify | None = None,
) -> list[Any]:
    """The listener's DIMSE handlers in one list, pynetdicom's idiom. Without ``identify``
    no identity can be verified: an AE whose registration accepts one gets no association
    when it presents one."""
    retrieve: list[Any] = []
    if identify is not None:
        retrieve.append((evt.EVT_USER_ID, on_user_identity, [identify]))
    if move is not None:
        retrieve.append((evt.EVT_C_MOVE, on_c_move, [move]))
    if get is not None:
        retrieve.append((evt.EVT_C_GET, on_c_get, [get]))
    return [
        *retrieve,
        (evt.EVT_CONN_OPEN, on_conn_open, [admit, ae_title, audit]),
        (evt.EVT_RELEASED, on_released, [audit]),
        (evt.EVT_ABORTED, on_aborted, [audit]),
        (evt.EVT_CONN_CLOSE, on_conn_close, [audit]),
        (evt.EVT_C_ECHO, on_c_echo),
        (evt.EVT_C_STORE, on_c_store, [deps]),
        (evt.EVT_C_FIND, on_c_find, [find]),
    ]
