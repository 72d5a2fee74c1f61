"""Sending stored instances by C-STORE (C-MOVE and C-GET sub-operations): which presentation
contexts to propose, how to send each instance over what the peer accepted, and the spool that
streams an object from S3 to a file so that memory stays flat whatever the instance size.

An instance goes as stored when the peer accepted its transfer syntax: the data set's bytes of
the spooled Part-10 file, unchanged, written to the association in PDU-sized pieces
(``edge.common.direct``).
Otherwise, if the peer accepted Explicit or Implicit VR Little Endian only: an uncompressed
instance is re-encoded by pydicom, a compressed one decompressed by pydicom's pixel handlers
(pylibjpeg, openjpeg, Pillow plugins); an instance that cannot be is a failed sub-operation with
the reason, never something else sent in its place. Those two paths hold one instance in memory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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

from edge.common.direct import DirectSender, c_store_command
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


class IntegrityError(Exception):
    """The stored object does not hash to the SHA-256 the catalog holds for it."""


@contextmanager
def spooled(store: ObjectStore, instance: Instance, spool_dir: Path | None) -> Iterator[Path]:
    """The object in a temporary file, streamed from S3 in 1 MiB chunks and checked against the
    catalog's SHA-256; the file is removed on exit."""
    fd, name = tempfile.mkstemp(prefix="edge-out-", suffix=".dcm", dir=spool_dir)
    path = Path(name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            for chunk in store.iter_chunks(instance.object_key):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != instance.sha256:
            raise IntegrityError(f"{instance.object_key} does not match its catalogued SHA-256")
        yield path
    finally:
        path.unlink(missing_ok=True)


def _decoded(path: Path, route: Route) -> Any:
    ds = dcmread(path)
    if route is Route.DECOMPRESS:
        # The instance keeps its SOP Instance UID: it is the same image, sent in another
        # encoding (pydicom 3 would otherwise mint a new one).
        ds.decompress(generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
    ds.set_original_encoding(False, True)
    return ds


def _send_as_stored(
    assoc: Any, path: Path, instance: Instance, kwargs: dict[str, Any]
) -> Any | None:
    """The stored bytes written straight to the association (``direct``): the data set after
    the file's meta, unchanged. None when the file's meta cannot be skipped there, and the caller
    sends it through pynetdicom."""
    context = assoc._get_valid_context(instance.sop_class, instance.transfer_syntax, "scu")
    command = c_store_command(
        kwargs["msg_id"],
        instance.sop_class,
        instance.sop,
        originator_aet=kwargs.get("originator_aet"),
        originator_id=kwargs.get("originator_id"),
    )
    return DirectSender(assoc).c_store_file(path, int(context.context_id), command)


def send_instance(
    assoc: Any,
    store: ObjectStore,
    instance: Instance,
    *,
    spool_dir: Path | None = None,
    msg_id: int = 1,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> SubResult:
    """One C-STORE sub-operation over the established ``assoc``; never raises."""
    accepted = [
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
    ]
    route = choose_route(accepted, instance)
    if route is None:
        return SubResult(instance.sop, Outcome.FAILED, None, "no presentation context accepted")
    kwargs: dict[str, Any] = {"msg_id": msg_id}
    if originator_aet:
        kwargs.update(originator_aet=originator_aet, originator_id=originator_id)
    try:
        with spooled(store, instance, spool_dir) as path:
            answer = None
            if route is Route.AS_STORED:
                answer = _send_as_stored(assoc, path, instance, kwargs)
            if answer is None:
                # A file whose meta cannot be skipped (no group length), or a re-encoding: the
                # data set in memory, through pynetdicom. (Not pynetdicom's chunked sending from
                # the file: that is a process-wide switch, and it would change how every other
                # C-STORE of this process is sent.)
                dataset = dcmread(path) if route is Route.AS_STORED else _decoded(path, route)
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
    status = int(answer.Status) if "Status" in answer else None
    reason = "" if status is not None else "no C-STORE response"
    return SubResult(instance.sop, outcome_of(status), status, reason, instance.size, route)
