"""Sending stored instances by C-STORE (C-MOVE and C-GET sub-operations): which presentation
contexts to propose and how to send each instance over what the peer accepted. The objects come
from S3 through ``edge.common.spool`` (read ahead of the send, memory bounded per association).

An instance goes as stored when the peer accepted its transfer syntax: the data set's bytes of
the spooled Part-10 object, unchanged, written to the association in PDU-sized pieces
(``edge.common.direct``).
Otherwise, if the peer accepted Explicit or Implicit VR Little Endian only: an uncompressed
instance is re-encoded by pydicom, a compressed one decompressed by pydicom's pixel handlers
(pylibjpeg, openjpeg, Pillow plugins); an instance that cannot be is a failed sub-operation with
the reason, never something else sent in its place. Those two paths hold one instance in memory.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.presentation import PresentationContext, build_context

from edge.common.direct import DirectSender, c_store_command, reactor_paused
from edge.common.spool import IntegrityError, Spool, fetch, release_when_done
from edge.common.store import ObjectStore

log = logging.getLogger(__name__)


UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
# Stored encodings pydicom can read and write in an uncompressed syntax without pixel handlers.
_REENCODABLE = frozenset(
    {*UNCOMPRESSED, str(DeflatedExplicitVRLittleEndian), str(ExplicitVRBigEndian)}
)
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are the odd numbers 1..255

# PS3.4 B.2.3 and PS3.7 C: C-STORE warnings (coercion, elements discarded, data set mismatch).
WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})


class Outcome(Enum):
    COMPLETED = "completed"
    WARNING = "warning"
    FAILED = "failed"


class Route(Enum):
    AS_STORED = "as-stored"
    REENCODE = "re-encode"
    DECOMPRESS = "decompress"


@dataclass(frozen=True)
class Instance:
    """What a sub-operation needs of a located instance (``retrieval.locate``'s reply)."""

    sop: str
    sop_class: str
    transfer_syntax: str
    object_key: str
    size: int
    sha256: str

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Instance:
        return cls(
            sop=str(item["sop"]),
            sop_class=str(item["sop_class"]),
            transfer_syntax=str(item["transfer_syntax"]),
            object_key=str(item["object_key"]),
            size=int(item["size"]),
            sha256=str(item["sha256"]),
        )


@dataclass(frozen=True)
class SubResult:
    sop: str
    outcome: Outcome
    status: int | None  # the peer's C-STORE status; None when there was no answer
    reason: str = ""
    size: int = 0
    route: Route | None = None


def proposed_contexts(instances: Iterable[Instance]) -> list[PresentationContext]:
    """Per SOP class, one context for each compressed syntax it is stored in (offered alone, so
    the peer's answer says exactly whether it takes it) and one for Explicit and Implicit VR
    Little Endian. At most 128 contexts: past that, instances of the SOP classes left out fail
    with 'no presentation context'."""
    wanted: dict[str, set[str]] = {}
    for instance in instances:
        wanted.setdefault(instance.sop_class, set()).add(instance.transfer_syntax)
    contexts: list[PresentationContext] = []
    for sop_class in sorted(wanted):
        contexts.append(build_context(sop_class, list(UNCOMPRESSED)))
        for syntax in sorted(wanted[sop_class] - set(UNCOMPRESSED)):
            contexts.append(build_context(sop_class, [syntax]))
    return contexts[:MAX_CONTEXTS]


def choose_route(accepted: Iterable[tuple[str, str]], instance: Instance) -> Route | None:
    """How to send ``instance`` over contexts accepted as (abstract syntax, transfer syntax):
    as stored when its own syntax was accepted, else re-encoded or decompressed into an accepted
    uncompressed syntax; None when the peer accepted nothing usable for its SOP class."""
    syntaxes = {ts for sop_class, ts in accepted if sop_class == instance.sop_class}
    if instance.transfer_syntax in syntaxes:
        return Route.AS_STORED
    if not syntaxes & set(UNCOMPRESSED):
        return None
    if instance.transfer_syntax in _REENCODABLE:
        return Route.REENCODE
    return Route.DECOMPRESS


def outcome_of(status: int | None) -> Outcome:
    if status is None:
        return Outcome.FAILED
    if status == 0x0000:
        return Outcome.COMPLETED
    if status in WARNING_STATUSES:
        return Outcome.WARNING
    return Outcome.FAILED


def _decoded(spool: Spool, route: Route) -> Any:
    ds = dcmread(io.BytesIO(spool.read()))
    if route is Route.DECOMPRESS:
        # The instance keeps its SOP Instance UID: it is the same image, sent in another
        # encoding (pydicom 3 would otherwise mint a new one).
        ds.decompress(generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
    ds.set_original_encoding(False, True)
    return ds


def _send_as_stored(
    assoc: Any, spool: Spool, instance: Instance, kwargs: dict[str, Any]
) -> Any | None:
    """The stored bytes written straight to the association (``direct``): the data set after
    the object's meta, unchanged. None when the meta cannot be skipped there, and the caller
    sends it through pynetdicom."""
    context = assoc._get_valid_context(instance.sop_class, instance.transfer_syntax, "scu")
    command = c_store_command(
        kwargs["msg_id"],
        instance.sop_class,
        instance.sop,
        originator_aet=kwargs.get("originator_aet"),
        originator_id=kwargs.get("originator_id"),
    )
    sender = DirectSender(assoc)
    if spool.data is not None:
        return sender.c_store_bytes(spool.data, int(context.context_id), command)
    assert spool.path is not None
    return sender.c_store_file(spool.path, int(context.context_id), command)


def send_instance(
    assoc: Any,
    store: ObjectStore,
    instance: Instance,
    *,
    spool_dir: Path | None = None,
    msg_id: int = 1,
    originator_aet: str | None = None,
    originator_id: int | None = None,
    fetched: Future[Spool] | None = None,
) -> SubResult:
    """One C-STORE sub-operation over the established ``assoc``; never raises. ``fetched``:
    the object's read already under way (``spool.ReadAhead``); else it is read here. The spool
    is released either way."""
    accepted = [
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
    ]
    route = choose_route(accepted, instance)
    if route is None:
        if fetched is not None:
            fetched.add_done_callback(release_when_done)
        return SubResult(instance.sop, Outcome.FAILED, None, "no presentation context accepted")
    kwargs: dict[str, Any] = {"msg_id": msg_id}
    if originator_aet:
        kwargs.update(originator_aet=originator_aet, originator_id=originator_id)
    spool: Spool | None = None
    try:
        spool = fetched.result() if fetched is not None else fetch(store, instance, spool_dir)
        answer = None
        if route is Route.AS_STORED:
            answer = _send_as_stored(assoc, spool, instance, kwargs)
        if answer is None:
            # An object whose meta cannot be skipped (no group length), or a re-encoding: the
            # data set in memory, through pynetdicom. (Not pynetdicom's chunked sending from
            # a file: that is a process-wide switch, and it would change how every other
            # C-STORE of this process is sent.)
            if route is Route.AS_STORED:
                dataset = dcmread(io.BytesIO(spool.read()))
            else:
                dataset = _decoded(spool, route)
            with reactor_paused(assoc):  # pynetdicom's own pause can lose the response
                answer = assoc.send_c_store(dataset, **kwargs)
    except IntegrityError as exc:
        log.error("sub-operation for %s: %s", instance.sop, exc)
        return SubResult(instance.sop, Outcome.FAILED, None, "stored object fails its checksum")
    except Exception as exc:  # S3 down, a codec missing, a peer that went away mid-way
        log.warning(
            "sub-operation for %s failed (%s): %s", instance.sop, route.value, type(exc).__name__
        )
        reason = "cannot decompress" if route is Route.DECOMPRESS else type(exc).__name__
        return SubResult(instance.sop, Outcome.FAILED, None, reason, route=route)
    finally:
        if spool is not None:
            spool.release()
    status = int(answer.Status) if "Status" in answer else None
    reason = "" if status is not None else "no C-STORE response"
    return SubResult(instance.sop, outcome_of(status), status, reason, instance.size, route)
