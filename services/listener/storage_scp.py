"""The store decision, shared by C-STORE (PS3.4 Annex B) and STOW-RS (PS3.18 10.5): validate,
make durable, announce, answer.

Rule 1 of the design: success only after the object is in S3 with a server-verified checksum
and RabbitMQ confirmed a persistent ``instance.received``. Anything else is a failure status and
nothing is announced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import trace
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from edge.common.dicom import InvalidUID, Status, instance_key, validate_uid
from edge.common.events import InstanceReceived
from edge.common.part10 import IncompleteDataset, inspect
from edge.common.store import (
    OBJECT_META_CALLED_AE,
    OBJECT_META_CALLING_AE,
    OBJECT_META_TRANSFER_SYNTAX,
    ObjectStore,
    ObjectStoreError,
    StoredObject,
)
from edge.common.tracing import carry_context, safe_attributes

log = logging.getLogger(__name__)

HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]

# Publish ``event`` within ``timeout`` seconds or raise: the bus confirmed it or it did not.
Publish = Callable[[InstanceReceived, float], None]


@dataclass(frozen=True)
class StoreRequest:
    """What the listener knows of one instance to store: the spooled Part-10 file and what the
    request claims of it.

    A C-STORE names the SOP Class and Instance in its command; a STOW-RS part names none
    (``None``: nothing to match) but its request may name the study (``study_uid``).
    """

    path: Path
    sop_class_uid: str | None
    sop_instance_uid: str | None
    calling_ae: str
    called_ae: str
    permissions: frozenset[str]
    study_uid: str | None = None


@dataclass(frozen=True)
class StoreResult:
    status: int
    comment: str = ""
    event: InstanceReceived | None = None
    size: int = 0
    # For the audit trail only (hashed there, never published as is).
    patient_id: str | None = None


def _put(
    store: ObjectStore,
    key: str,
    path: Path,
    metadata: dict[str, str],
    timeout: float,
    uploads: Executor | None,
) -> StoredObject:
    if uploads is None:
        return store.put_file(key, path, metadata=metadata)
    if timeout <= 0:
        raise TimeoutError
    # carry_context: the S3 span is a child of the C-STORE span, across the thread hop.
    return uploads.submit(carry_context(store.put_file), key, path, metadata=metadata).result(
        timeout
    )


def store_instance(
    request: StoreRequest,
    *,
    store: ObjectStore,
    publish: Publish,
    max_size: int,
    deadline: float,
    uploads: Executor | None = None,
) -> StoreResult:
    """Decide the C-STORE response status, storing and announcing the instance on success.

    ``deadline`` (seconds) bounds the S3 put and the confirmed publish together. With
    ``uploads``, the put runs on that executor so that a hung object store cannot hold the
    answer past the deadline; without it the put is bounded only by the store's own timeouts.
    """
    started = time.monotonic()
    span = trace.get_current_span()  # the C-STORE's, where there is one; facts as they are known
    if "store" not in request.permissions:
        return StoreResult(Status.NOT_AUTHORIZED, f"{request.calling_ae} may not store")
    size = request.path.stat().st_size
    span.set_attributes(safe_attributes({"dicom.size": size}))
    if size > max_size:
        return StoreResult(Status.TOO_LARGE, f"instance of {size} bytes exceeds {max_size}")
    try:
        info = inspect(request.path)
        header = dcmread(
            request.path,
            stop_before_pixels=True,
            specific_tags=[*HEADER_TAGS, "Rows", "PatientID"],
        )
    except (IncompleteDataset, InvalidDicomError, ValueError, EOFError, OSError) as exc:
        return StoreResult(Status.CANNOT_UNDERSTAND, f"data set cannot be parsed: {exc}")
    transfer_syntax = info.transfer_syntax
    span.set_attributes(safe_attributes({"dicom.transfer_syntax_uid": transfer_syntax}))
    # PS3.3 C.7.6.3: an image (Rows present) carries its pixel data; without it the data set
    # was most likely cut between two elements, which the structural walk cannot see.
    if "Rows" in header and not info.has_pixel_data:
        return StoreResult(Status.CANNOT_UNDERSTAND, "image without pixel data (cut short?)")
    uids = {tag: str(header.get(tag, "") or "").strip() for tag in HEADER_TAGS}
    missing = [tag for tag, value in uids.items() if not value]
    if missing:
        return StoreResult(Status.CANNOT_UNDERSTAND, f"data set lacks {', '.join(missing)}")
    try:
        for tag, value in uids.items():
            validate_uid(value, tag)
        if request.sop_instance_uid is not None:
            validate_uid(request.sop_instance_uid, "Affected SOP Instance UID")
        key = instance_key(
            uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"]
        )
    except InvalidUID as exc:
        return StoreResult(Status.INVALID_UID, str(exc))
    span.set_attributes(
        safe_attributes(
            {
                "dicom.study_uid": uids["StudyInstanceUID"],
                "dicom.series_uid": uids["SeriesInstanceUID"],
            }
        )
    )
    # PS3.4 B.2.3: 0xA900, the data set does not match the SOP class / instance of the command.
    if request.sop_instance_uid is not None and uids["SOPInstanceUID"] != request.sop_instance_uid:
        return StoreResult(
            Status.DATASET_DOES_NOT_MATCH, "SOP Instance UID differs from the command"
        )
    if request.sop_class_uid is not None and uids["SOPClassUID"] != request.sop_class_uid:
        return StoreResult(Status.DATASET_DOES_NOT_MATCH, "SOP Class UID differs from the command")
    # PS3.18 10.5.3: a STOW-RS request to /studies/{study} stores instances of that study only.
    if request.study_uid is not None and uids["StudyInstanceUID"] != request.study_uid:
        return StoreResult(
            Status.DATASET_DOES_NOT_MATCH, "Study Instance UID differs from the request"
        )

    try:
        # The store hashes the file as it reads it and has the server verify that checksum.
        # Who sent it travels with the object, so the storage scrub can announce an object
        # whose instance.received was never confirmed with the same facts the listener knew.
        metadata = {
            OBJECT_META_CALLING_AE: request.calling_ae,
            OBJECT_META_CALLED_AE: request.called_ae,
            OBJECT_META_TRANSFER_SYNTAX: transfer_syntax,
        }
        budget = deadline - (time.monotonic() - started)
        stored = _put(store, key, request.path, metadata, budget, uploads)
        if not stored.sha256:
            raise ObjectStoreError(f"no checksum recorded for {key}")
    except ObjectStoreError as exc:
        log.error("S3 put failed for %s: %s", uids["SOPInstanceUID"], exc)
        return StoreResult(Status.OUT_OF_RESOURCES, "object store unavailable")
    except TimeoutError:
        # The upload may still land; unannounced, it is the storage scrub's to find.
        log.error("S3 put for %s exceeded the store deadline", uids["SOPInstanceUID"])
        return StoreResult(Status.OUT_OF_RESOURCES, "object store too slow")
    remaining = deadline - (time.monotonic() - started)
    if remaining <= 0:
        return StoreResult(Status.OUT_OF_RESOURCES, "object store too slow")
    event = InstanceReceived(
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        transfer_syntax_uid=transfer_syntax,
        object_key=key,
        size=size,
        sha256=stored.sha256,
        calling_ae=request.calling_ae,
        called_ae=request.called_ae,
    )
    try:
        publish(event, remaining)
    except Exception as exc:  # not confirmed in time means not durable: never claim success
        log.error("publish failed for %s: %s", uids["SOPInstanceUID"], exc)
        return StoreResult(Status.OUT_OF_RESOURCES, "message broker unavailable")
    patient_id = str(header.get("PatientID", "") or "").strip() or None
    return StoreResult(Status.SUCCESS, event=event, size=size, patient_id=patient_id)
