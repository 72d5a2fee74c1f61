"""STOW-RS, the DICOMweb store transaction (PS3.18 10.5), under ``/dicom-web``.

Each ``application/dicom`` part of a ``multipart/related`` request is spooled to a file as it
arrives and goes through the very decision C-STORE uses (:func:`store_instance`, Rule 1: S3
object with a server-verified checksum and a confirmed ``instance.received``, then success).
The response (PS3.18 10.5.3) lists what was stored (ReferencedSOPSequence, with a Retrieve
URL each) and what was not (FailedSOPSequence, with the DIMSE status as Failure Reason).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import Counter, Histogram
from pydicom import dcmread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.common.audit import Auditor, ae
from edge.common.dicom import Status, is_valid_uid
from edge.common.http import problem
from edge.common.tracing import record_failure, safe_attributes
from edge.listener.auditing import StoreTally, http_requester
from edge.listener.multipart import (
    MultipartError,
    Part,
    boundary_of,
    parse_media_type,
    read_parts,
)
from edge.listener.qido import DICOM_JSON, PREFIX, acceptable
from edge.listener.storage_scp import StoreRequest, StoreResult

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

DICOM = "application/dicom"
# What a STOW-RS instance records as its sender (the events' calling_ae), until HTTP clients
# are authenticated and have names of their own.
STOW_CALLER = "STOW-RS"

# PS3.18 Table 10.5.3-1 / F.2: the response's attributes.
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"

STOW_SECONDS = Histogram(
    "edge_stow_seconds",
    "STOW-RS request handling time, by HTTP status",
    ["status"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
STOW_INSTANCES = Counter("edge_stow_instances_total", "STOW-RS instances by status", ["status"])

# Store one spooled instance (blocking): ``store_instance`` with its dependencies bound.
StoreOne = Callable[[StoreRequest], StoreResult]


@dataclass(frozen=True)
class Stored:
    sop_class_uid: str
    sop_instance_uid: str
    url: str


@dataclass(frozen=True)
class Failed:
    sop_class_uid: str
    sop_instance_uid: str
    reason: int


@dataclass
class Outcome:
    """What one STOW-RS request did, part by part."""

    stored: list[Stored] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)

    def status(self) -> int:
        """PS3.18 10.5.3: 200 all stored, 202 some stored, 409 none stored."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def body(self, service: str) -> dict[str, Any]:
        """The response data set as DICOM JSON (PS3.18 10.5.3, Table 10.5.3-1)."""
        body: dict[str, Any] = {}
        if len(self.studies) == 1:
            (study,) = self.studies
            body[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{service}/studies/{study}"]}
        if self.failed:
            body[FAILED_SOP_SEQUENCE] = {
                "vr": "SQ",
                "Value": [
                    {
                        REFERENCED_SOP_CLASS: _ui(f.sop_class_uid),
                        REFERENCED_SOP_INSTANCE: _ui(f.sop_instance_uid),
                        FAILURE_REASON: {"vr": "US", "Value": [f.reason]},
                    }
                    for f in self.failed
                ],
            }
        if self.stored:
            body[REFERENCED_SOP_SEQUENCE] = {
                "vr": "SQ",
                "Value": [
                    {
                        REFERENCED_SOP_CLASS: _ui(s.sop_class_uid),
                        REFERENCED_SOP_INSTANCE: _ui(s.sop_instance_uid),
                        RETRIEVE_URL: {"vr": "UR", "Value": [s.url]},
                    }
                    for s in self.stored
                ],
            }
        return body


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _claimed_uids(path: Path) -> tuple[str, str]:
    """The SOP Class and Instance UIDs a refused part carries, when they can be read at all:
    the Failed SOP Sequence names them (PS3.18 Table 10.5.3-3)."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return str(ds.get("SOPClassUID", "") or ""), str(ds.get("SOPInstanceUID", "") or "")
    except Exception:  # unreadable: the failure reason says so, the UIDs stay empty
        return "", ""


def _part_is_dicom(part: Part) -> bool:
    # PS3.18 8.6.1.2: a part without Content-Type has the type of the multipart's type parameter.
    media, _ = parse_media_type(part.content_type or DICOM)
    return media == DICOM


def store_part(part: Part, *, store: StoreOne, study: str | None, called_ae: str) -> StoreResult:
    """Store one spooled part (blocking), in a span of its own."""
    with tracer.start_as_current_span(
        "STOW-RS instance",
        kind=SpanKind.INTERNAL,
        attributes=safe_attributes({"dicom.size": part.size}),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        if not _part_is_dicom(part):
            result = StoreResult(Status.CANNOT_UNDERSTAND, "part is not application/dicom")
        else:
            request = StoreRequest(
                path=part.path,
                sop_class_uid=None,
                sop_instance_uid=None,
                calling_ae=STOW_CALLER,
                called_ae=called_ae,
                # HTTP requests are not authenticated yet (see docs/architecture.md).
                permissions=frozenset({"store"}),
                study_uid=study,
            )
            try:
                result = store(request)
            except Exception as exc:
                record_failure(span, exc)
                log.exception("STOW-RS: storing a part failed")
                result = StoreResult(Status.PROCESSING_FAILURE, "internal error")
        status_label = f"0x{result.status:04X}"
        span.set_attributes(safe_attributes({"dicom.status": status_label}))
        if result.status != Status.SUCCESS:
            span.set_status(StatusCode.ERROR, status_label)
            log.warning("STOW-RS instance refused with %s: %s", status_label, result.comment)
        STOW_INSTANCES.labels(status_label).inc()
        return result


async def stow(
    request: Request,
    *,
    store: StoreOne,
    called_ae: str,
    max_size: int,
    spool_dir: str | None,
    audit: Auditor | None = None,
) -> Response:
    """Answer one STOW-RS request (PS3.18 10.5); its stores go to the audit trail as one message
    per study and outcome when it ends."""
    study = request.path_params.get("study")
    if study is not None and not is_valid_uid(study):
        return problem(400, "Bad store request", "the study in the path is not a UID")
    if not acceptable(request.headers.get("accept")):
        return problem(406, "Not acceptable", f"store responses are {DICOM_JSON} only")
    media, params = parse_media_type(request.headers.get("content-type", ""))
    part_type, _ = parse_media_type(params.get("type", DICOM))
    if media != "multipart/related" or part_type != DICOM:
        return problem(
            415,
            "Unsupported media type",
            f'STOW-RS takes multipart/related; type="{DICOM}" only',
        )
    try:
        boundary = boundary_of(params)
    except MultipartError as exc:
        return problem(400, "Bad store request", str(exc))
    service = str(request.base_url).rstrip("/") + PREFIX
    outcome = Outcome()
    parts = read_parts(request.stream(), boundary, spool_dir=spool_dir, max_part_size=max_size)
    tally = StoreTally()
    try:
        async for part in parts:
            result = await asyncio.to_thread(
                store_part, part, store=store, study=study, called_ae=called_ae
            )
            if result.status == Status.SUCCESS and result.event is not None:
                event = result.event
                outcome.studies.add(event.study_uid)
                outcome.stored.append(
                    Stored(
                        event.sop_class_uid,
                        event.sop_instance_uid,
                        f"{service}/studies/{event.study_uid}/series/{event.series_uid}"
                        f"/instances/{event.sop_instance_uid}",
                    )
                )
            else:
                sop_class, sop_instance = await asyncio.to_thread(_claimed_uids, part.path)
                outcome.failed.append(Failed(sop_class, sop_instance, int(result.status)))
            tally.add(result, None if result.event else sop_class)
    except MultipartError as exc:
        detail = str(exc)
        if outcome.stored:  # they are durable and announced; say so rather than hide them
            detail += f" (after {len(outcome.stored)} instances were stored)"
        return problem(400, "Bad store request", detail)
    finally:
        await parts.aclose()
        if audit is not None:
            tally.flush(audit, http_requester(request), ae(called_ae, requestor=False))
    if not outcome.stored and not outcome.failed:
        return problem(400, "Bad store request", "the request carries no instance")
    return JSONResponse(outcome.body(service), status_code=outcome.status(), media_type=DICOM_JSON)


def stow_routes(
    store: StoreOne,
    *,
    called_ae: str,
    max_size: int,
    spool_dir: Path | None,
    audit: Auditor | None = None,
) -> list[BaseRoute]:
    """``POST /studies`` and ``POST /studies/{study}`` of the Studies Service (PS3.18 10.5.1)."""
    spool = str(spool_dir) if spool_dir is not None else None

    async def endpoint(request: Request) -> Response:
        started = time.monotonic()
        with tracer.start_as_current_span(
            "STOW-RS", kind=SpanKind.SERVER, record_exception=False
        ) as span:
            response = await stow(
                request,
                store=store,
                called_ae=called_ae,
                max_size=max_size,
                spool_dir=spool,
                audit=audit,
            )
            span.set_attributes(
                safe_attributes({"http.response.status_code": response.status_code})
            )
        STOW_SECONDS.labels(str(response.status_code)).observe(time.monotonic() - started)
        return response

    return [
        Route(PREFIX + "/studies", endpoint, methods=["POST"]),
        Route(PREFIX + "/studies/{study}", endpoint, methods=["POST"]),
    ]
