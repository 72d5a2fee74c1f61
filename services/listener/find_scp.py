"""C-FIND (PS3.4 C.4.1): the identifier goes to the query service (``query.find`` RPC) page by
page, and every match comes back as a pending response; C-CANCEL ends it between two matches
(and no further page is asked for).

The listener does no matching of its own: it checks the permission, turns the identifier into
DICOM JSON (pydicom has already decoded it by its Specific Character Set), and turns the matches
back into data sets in a character set the requester can read.
"""

from __future__ import annotations

import json
import logging
import time
from base64 import b64decode
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, cast

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import Counter, Histogram
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from edge.common.audit import Auditor
from edge.common.dicom import Status
from edge.common.findwire import IMPLICIT_VR_LITTLE_ENDIAN, encode_identifier
from edge.common.tracing import record_failure, safe_attributes
from edge.listener.auditing import outcome_of, peer, values
from edge.listener.find_encode import PendingSender
from edge.listener.spans import association_context

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# The information models we serve, by their FIND SOP Class (PS3.4 C.6.1, C.6.2).
FIND_MODELS: dict[str, str] = {
    str(PatientRootQueryRetrieveInformationModelFind): "PATIENT",
    str(StudyRootQueryRetrieveInformationModelFind): "STUDY",
}
PENDING = 0xFF00
CANCELLED = 0xFE00
PAGE = 100  # matches asked of the query service first: the first responses go out soon
NEXT_PAGES = 1000  # then at a time: fewer round trips and statements for a large answer

C_FIND_SECONDS = Histogram(
    "edge_cfind_seconds",
    "C-FIND handling time, from the request to the final response, by final status",
    ["status"],
    buckets=(0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
C_FIND_MATCHES = Counter("edge_cfind_matches_total", "Pending C-FIND responses sent")

# Start a ``query.find`` call with a payload; its future holds the reply, or raises when the
# query service or the broker does not answer.
FindCall = Callable[[dict[str, Any]], "Future[dict[str, Any]]"]


@dataclass
class FindDeps:
    find: FindCall
    ae_title: str
    timeout: float = 16.0  # seconds to wait for one page
    audit: Auditor | None = None


@dataclass(frozen=True)
class Match:
    """One pending response: a match as DICOM JSON, and the character sets the requester
    named (the response's is chosen from them when it is encoded); or its identifier already
    encoded by the query service (``encoded``, for the transfer syntax the payload named)."""

    identifier: dict[str, Any]
    requested_charsets: list[str]
    encoded: bytes | None = None

    def encode(self, transfer_syntax: str) -> bytes:
        """The identifier in ``transfer_syntax`` (one :mod:`edge.common.findwire` covers):
        as the query service encoded it, else by the direct encoder, else by pydicom."""
        if self.encoded is not None:
            return self.encoded
        direct = encode_identifier(self.identifier, self.requested_charsets, transfer_syntax)
        if direct is not None:
            return direct
        implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
        written = encode(self.to_dataset(), implicit, True)
        if not written:
            raise ValueError("identifier cannot be encoded")
        return written

    def to_dataset(self) -> Dataset:
        ds = Dataset.from_json(self.identifier)
        charset = response_charset(self.identifier, self.requested_charsets)
        if charset:
            ds.SpecificCharacterSet = charset
        return ds


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # PS3.7 C.4: at most 64 characters
    return ds


def response_charset(match: dict[str, Any], requested: list[str]) -> str | None:
    """The Specific Character Set for a response: none when the match is plain ASCII, the
    requester's own single-byte Latin-1 when it can carry the match, else UTF-8 (ISO_IR 192),
    which every value the catalog holds can be written in."""
    text = json.dumps(match, ensure_ascii=False)
    if text.isascii():
        return None
    if requested and requested[0] in ("ISO_IR 100",):
        try:
            text.encode("latin-1")
            return requested[0]
        except UnicodeEncodeError:
            pass
    return "ISO_IR 192"


def _requested_charsets(identifier: Dataset) -> list[str]:
    value = identifier.get("SpecificCharacterSet")
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list | tuple) else [value])]


def matches(
    event: evt.Event,
    deps: FindDeps,
    *,
    transfer_syntax: str | None = None,
    before_wait: Callable[[], None] | None = None,
) -> Generator[tuple[int | Dataset, Match | None], None, None]:
    """The responses to one C-FIND: pendings (with their match), then one final status.

    The next page is asked for as soon as a page arrives, so that the query service looks for
    it while this one is being sent. With ``transfer_syntax``, the query service is asked for
    the identifiers encoded in it (``render.cfind``); ``before_wait`` is called before waiting
    for a page (the sender writes what it has gathered)."""
    permissions: frozenset[str] = getattr(event.assoc, "edge_permissions", frozenset())
    calling = str(event.assoc.requestor.ae_title).strip()
    if "find" not in permissions:
        yield _status(Status.NOT_AUTHORIZED, f"{calling} may not query"), None
        return
    command = cast(C_FIND, event.request)
    model = FIND_MODELS.get(str(command.AffectedSOPClassUID or ""))
    if model is None:
        yield _status(0xA900, "information model not supported"), None
        return
    try:
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip()
        payload: dict[str, Any] = {
            "model": model,
            "level": level,
            "identifier": identifier.to_json_dict(),
            "limit": PAGE,
            "retrieve_ae_title": deps.ae_title,
            "returned": 0,
        }
    except Exception as exc:  # an identifier pydicom cannot decode or convert
        log.warning(
            "C-FIND from %s: identifier cannot be decoded (%s)", calling, type(exc).__name__
        )
        yield _status(0xC000, "identifier cannot be decoded"), None
        return
    if not level:
        yield _status(0xA900, "QueryRetrieveLevel missing"), None
        return
    charsets = _requested_charsets(identifier)
    if transfer_syntax is not None:
        payload["render"] = {"cfind": {"transfer_syntax": transfer_syntax, "charsets": charsets}}
    if event.is_cancelled:
        yield CANCELLED, None
        return
    pending: Future[dict[str, Any]] | None = _ask(deps, payload)
    try:
        while pending is not None:
            if before_wait is not None and not pending.done():
                before_wait()
            try:
                reply = pending.result(deps.timeout)
            except Exception as exc:  # the query service or the broker did not answer in time
                log.error("C-FIND from %s: query service unavailable: %s", calling, exc)
                yield _status(0xA700, "query service unavailable"), None
                return
            pending = None
            error = reply.get("error")
            if error:
                yield _status(int(error["status"]), str(error.get("comment", ""))), None
                return
            found = reply.get("identifiers")
            if found is None:
                found = reply["matches"]
            payload["returned"] += len(found)
            if reply.get("next") is not None and not reply.get("capped"):
                payload["after"] = reply["next"]
                payload["limit"] = NEXT_PAGES
                pending = _ask(deps, dict(payload))
            for match in found:
                if event.is_cancelled:
                    yield CANCELLED, None
                    return
                C_FIND_MATCHES.inc()
                if isinstance(match, str):  # encoded by the query service, base64
                    yield PENDING, Match({}, charsets, b64decode(match))
                else:
                    yield PENDING, Match(match, charsets)
            if reply.get("capped"):
                # PS3.4 has no status for "too many matches": refuse the rest, and say why.
                yield _status(0xA700, f"more than {payload['returned']} matches; narrow it"), None
                return
            if event.is_cancelled:
                yield CANCELLED, None
                return
        yield Status.SUCCESS, None
    finally:
        if pending is not None:
            pending.cancel()  # cancelled or failed: the next page is not wanted


def _ask(deps: FindDeps, payload: dict[str, Any]) -> Future[dict[str, Any]]:
    try:
        return deps.find(payload)
    except Exception as exc:  # e.g. the listener is stopping: the failure is in the future
        failed: Future[dict[str, Any]] = Future()
        failed.set_exception(exc)
        return failed


def on_c_find(event: evt.Event, deps: FindDeps) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """EVT_C_FIND: :func:`matches` under a span, timed; the span carries AE titles, the level
    and counts, never the identifier's values.

    Pending responses are written straight to the association (:mod:`find_encode`), encoded
    by the query service, when the presentation context's transfer syntax is one it encodes;
    else, and always for the final response, they go through pynetdicom."""
    started = time.monotonic()
    calling = str(event.assoc.requestor.ae_title).strip()
    span = tracer.start_span(
        "C-FIND",
        context=association_context(event.assoc),
        kind=SpanKind.SERVER,
        attributes=safe_attributes({"dicom.calling_ae": calling}),
    )
    final = "0x0000"
    count = 0
    sender = PendingSender.for_event(event)
    try:
        with trace.use_span(span, end_on_exit=False):
            responses = matches(
                event,
                deps,
                transfer_syntax=None if sender is None else sender.transfer_syntax,
                before_wait=None if sender is None else sender.flush,
            )
            for status, match in responses:
                if match is not None:
                    count += 1
                    if sender is None:
                        yield PENDING, match.to_dataset()
                    elif not sender.send(match.encode(sender.transfer_syntax)):
                        responses.close()  # the association is gone: ask for nothing more
                        final = f"0x{Status.OUT_OF_RESOURCES:04X}"
                        return
                    continue
                if sender is not None:
                    sender.flush()  # every pending written before pynetdicom sends the final
                code = int(status.Status) if isinstance(status, Dataset) else int(status)
                final = f"0x{code:04X}"
                yield status, None
    except Exception as exc:
        record_failure(span, exc)
        log.exception("C-FIND handler failed")
        final = f"0x{Status.PROCESSING_FAILURE:04X}"
        yield _status(Status.PROCESSING_FAILURE, "internal error"), None
    finally:
        span.set_attributes(safe_attributes({"dicom.status": final, "edge.count": count}))
        if final not in ("0x0000", f"0x{CANCELLED:04X}"):
            span.set_status(StatusCode.ERROR, final)
        span.end()
        C_FIND_SECONDS.labels(final).observe(time.monotonic() - started)
        audit_find(event, deps.audit, int(final, 16))


def audit_find(event: evt.Event, audit: Auditor | None, status: int) -> None:
    """The query in the audit trail (PS3.15 A.5.3.12): the requester, the model, every key of
    the identifier with its value hashed; a refusal for lack of permission is a security
    alert instead."""
    if audit is None:
        return
    requester = peer(event.assoc)
    if status == Status.NOT_AUTHORIZED:
        audit.refused(requester, "C-FIND", "no find permission")
        return
    try:
        keys = event.identifier.to_json_dict()
    except Exception:  # undecodable: audited as such, without keys
        keys = {}
    level = values(keys, "00080052")
    audit.query(
        requester,
        str(cast(C_FIND, event.request).AffectedSOPClassUID or ""),
        keys,
        level=level[0] if level else None,
        outcome=outcome_of(status),
    )
