"""The association span: opened at A-ASSOCIATE-RQ, ended at release, abort, reject or close.

pynetdicom runs an association in threads of its own (the association's reactor and its DUL),
so the span cannot be the thread's current span for its whole life: it is kept on the
association object, and every handler that makes a child span (C-STORE) takes it as the explicit
parent with :func:`association_context`.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode

from edge.common.tracing import safe_attributes

tracer = trace.get_tracer(__name__)

_SPAN = "edge_span"  # attribute of the pynetdicom Association that holds its span


def start_association(assoc: Any, calling_ae: str, called_ae: str) -> Span:
    """Open the association's span (SERVER) and keep it on ``assoc``."""
    span = tracer.start_span(
        "DICOM association",
        kind=SpanKind.SERVER,
        attributes=safe_attributes(
            {
                "dicom.calling_ae": calling_ae,
                "dicom.called_ae": called_ae,
                "network.peer.address": str(assoc.requestor.address),
                "network.peer.port": int(assoc.requestor.port or 0) or None,
            }
        ),
    )
    setattr(assoc, _SPAN, span)
    return span


def association_context(assoc: Any) -> Context | None:
    """A context whose current span is ``assoc``'s span (None: no span, use the current one)."""
    span = getattr(assoc, _SPAN, None)
    return trace.set_span_in_context(span) if span is not None else None


def end_association(assoc: Any, outcome: str, *, failed: bool = False) -> None:
    """End ``assoc``'s span once, whichever thread's event comes first."""
    # dict.pop is atomic: of two threads ending the association only one gets the span.
    span: Span | None = vars(assoc).pop(_SPAN, None)
    if span is None:
        return
    span.set_attributes(safe_attributes({"dicom.association.outcome": outcome}))
    if failed:
        span.set_status(StatusCode.ERROR, outcome)
    span.end()
