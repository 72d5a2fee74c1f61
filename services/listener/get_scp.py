"""C-GET (PS3.4 C.4.3): the matches come from the retrieval service (``retrieval.locate``, page by
page), and each instance goes back over the requesting association as a C-STORE sub-operation
(the requester took the SCP role for its storage SOP classes, PS3.7 D.3.3.4), its object read
from S3 while the one before is sent (``spool.ReadAhead``, a few objects at most): memory stays
flat whatever the study size. C-CANCEL stops it between two sub-operations with 0xFE00.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

from prometheus_client import Counter, Histogram
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_GET

from edge.common.audit import Auditor
from edge.common.outbound import Instance, Outcome, send_instance
from edge.common.spool import DEFAULT_DEPTH, ReadAhead, fetch
from edge.common.store import ObjectStore
from edge.common.suboperations import (
    MAX_SUBOPERATIONS,
    UNABLE_TO_CALCULATE,
    Pacer,
    Progress,
)
from edge.listener.auditing import STUDY_INSTANCE_UID, peer, retrieved, values
from edge.listener.retrieve_service import (
    GET_MODELS,
    RetrieveResponse,
    retrieve_request,
    traced,
)

log = logging.getLogger(__name__)

PAGE = 5000  # instances asked of retrieval.locate at a time

C_GET_SECONDS = Histogram(
    "edge_cget_seconds",
    "C-GET handling time, from the request to the final response, by final status",
    ["status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
C_GET_SUBOPERATIONS = Counter(
    "edge_cget_suboperations_total", "C-GET C-STORE sub-operations, by outcome", ["outcome"]
)

# Call ``retrieval.locate`` with a payload and return its reply; raises on timeout or no broker.
LocateCall = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class GetDeps:
    locate: LocateCall
    store: ObjectStore
    spool_dir: Path | None = None
    audit: Auditor | None = None
    # Threads reading objects ahead of the send (None: a pool of each C-GET's own).
    readers: Executor | None = None
    read_ahead: int = DEFAULT_DEPTH


def _locate_error(error: dict[str, Any]) -> RetrieveResponse:
    status = int(error.get("status") or 0xC000)
    if status == 0xA700:  # catalog unavailable or too slow
        status = UNABLE_TO_CALCULATE
    return RetrieveResponse(status, comment=str(error.get("comment") or ""))


def matches(payload: dict[str, Any], locate: LocateCall) -> list[Instance] | RetrieveResponse:
    """Every instance the identifier names, or the refusal to answer."""
    found: list[Instance] = []
    request = dict(payload)
    while True:
        try:
            reply = locate(request)
        except Exception as exc:  # the retrieval service or the broker did not answer in time
            log.error("C-GET: retrieval service unavailable: %s", type(exc).__name__)
            return RetrieveResponse(UNABLE_TO_CALCULATE, comment="retrieval service unavailable")
        if reply.get("error"):
            return _locate_error(reply["error"])
        found += [Instance.from_json(item) for item in reply["instances"]]
        if len(found) > MAX_SUBOPERATIONS:
            return RetrieveResponse(UNABLE_TO_CALCULATE, comment="more than 65535 instances")
        if reply.get("next") is None:
            return found
        request["after"] = reply["next"]


def _response(reply: dict[str, Any]) -> RetrieveResponse:
    return RetrieveResponse.from_reply(reply)


def get_responses(
    event: evt.Event, deps: GetDeps, sent: collections.Counter[str] | None = None
) -> Iterator[RetrieveResponse]:
    """The responses to one C-GET: pendings as sub-operations complete (paced), then the final
    one. ``sent`` counts the instances sent by SOP class (for the audit trail)."""
    request = retrieve_request(event, "get", GET_MODELS)
    if isinstance(request, RetrieveResponse):
        yield request
        return
    payload: dict[str, Any] = {**request, "limit": PAGE}
    found = matches(payload, deps.locate)
    if isinstance(found, RetrieveResponse):
        yield found
        return
    progress = Progress(total=len(found))
    own = None if deps.readers is not None else ThreadPoolExecutor(max(1, deps.read_ahead))
    ahead = ReadAhead(
        _taker(found),
        partial(fetch, deps.store, spool_dir=deps.spool_dir),
        deps.readers or own,  # type: ignore[arg-type]
        deps.read_ahead,
    )
    try:
        yield from _sub_operations(event, deps, ahead, progress, sent)
    finally:
        ahead.close()
        if own is not None:
            own.shutdown(wait=False, cancel_futures=True)


def _taker(found: list[Instance]) -> Callable[[], Instance | None]:
    items = iter(found)
    return lambda: next(items, None)


def _sub_operations(
    event: evt.Event,
    deps: GetDeps,
    ahead: ReadAhead,
    progress: Progress,
    sent: collections.Counter[str] | None,
) -> Iterator[RetrieveResponse]:
    command = cast(C_GET, event.request)
    base_id = int(command.MessageID or 0)
    pacer = Pacer()
    n = 0
    while True:
        if event.is_cancelled:
            yield _response(progress.final(cancelled=True, reached=True))
            return
        item = ahead.next()
        if item is None:
            break
        instance, fetched = item
        n += 1
        result = send_instance(
            event.assoc,
            deps.store,
            instance,
            msg_id=(base_id + n - 1) % 65535 + 1,
            fetched=fetched,
        )
        progress.add(result)
        if sent is not None and result.outcome is not Outcome.FAILED:
            sent[instance.sop_class] += 1
        C_GET_SUBOPERATIONS.labels(result.outcome.value).inc()
        if result.outcome is Outcome.FAILED:
            log.warning("C-GET sub-operation for %s failed: %s", result.sop, result.reason)
        if not event.assoc.is_established:
            return  # the requester went away
        if progress.remaining and pacer.due():
            yield _response(progress.pending())
    yield _response(progress.final(cancelled=False, reached=True))


def on_c_get(event: evt.Event, deps: GetDeps) -> Iterator[RetrieveResponse]:
    """EVT_C_GET: :func:`get_responses` under a span, timed; the span carries AE titles and
    counts, never the identifier's values."""
    sent: collections.Counter[str] = collections.Counter()
    responses = get_responses(event, deps, sent)
    yield from traced(
        "C-GET",
        event,
        responses,
        C_GET_SECONDS,
        lambda last: audit_get(event, deps.audit, last, sent),
    )


def audit_get(
    event: evt.Event,
    audit: Auditor | None,
    last: RetrieveResponse | None,
    sent: collections.Counter[str],
) -> None:
    """The C-GET in the audit trail: instances sent to the requester itself (action R)."""
    if audit is None:
        return
    try:
        identifier = event.identifier.to_json_dict()
    except Exception:
        identifier = {}
    studies = values(identifier, STUDY_INSTANCE_UID)
    requester = peer(event.assoc)
    retrieved(
        audit,
        requester=requester,
        destination=requester,
        identifier=identifier,
        status=last.status if last is not None else 0xA702,
        sop_classes={studies[0]: sent} if len(studies) == 1 else None,
        reason=last.comment if last is not None else "",
    )
