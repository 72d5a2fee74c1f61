"""From an object in the bucket back to the ``instance.received`` the listener would have sent.

The key gives the three UIDs, the object's metadata the sender's AE titles, transfer syntax and
SHA-256, and the header (read by ranged GETs, never the whole object) the SOP Class UID. The
header must agree with the key: an object filed under UIDs it does not carry is not announced.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset

from edge.common.dicom import is_valid_uid
from edge.common.events import InstanceReceived
from edge.common.headers import FIRST_READ, read_header
from edge.common.store import (
    OBJECT_META_CALLED_AE,
    OBJECT_META_CALLING_AE,
    OBJECT_META_TRANSFER_SYNTAX,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    StoredObject,
)

# The AE titles of an object stored before the listener recorded them as metadata. Legal in an
# AE title (PS3.5 6.2) yet never seen in one, so nobody mistakes it for a real sender; it reaches
# the catalog's calling_ae and the events that quote it.
UNKNOWN_AE = "(unknown)"

_INSTANCE_KEY = re.compile(r"studies/([^/]+)/series/([^/]+)/instances/([^/]+)\.dcm")
_KEY_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class Vanished(Exception):
    """The object was deleted between the listing and the look."""


class Unannounceable(Exception):
    """The object cannot be announced. The message is ours and names no patient data."""


def parse_instance_key(key: str) -> tuple[str, str, str] | None:
    """(Study, Series, SOP Instance UID) of ``studies/<st>/series/<se>/instances/<sop>.dcm``,
    or None for any other key."""
    m = _INSTANCE_KEY.fullmatch(key)
    if m is None or not all(is_valid_uid(uid) for uid in m.groups()):
        return None
    return m[1], m[2], m[3]


def describe(
    store: ObjectStore, obj: StoredObject, catalogued_sha256: str | None
) -> InstanceReceived | None:
    """The ``instance.received`` that announces ``obj``, or None when its bytes are the ones
    catalogued (``catalogued_sha256``). Blocking (S3 requests and a parse): run it in a thread.

    Raises :class:`Vanished` or :class:`Unannounceable`; ``ObjectStoreError`` passes through.
    """
    uids = parse_instance_key(obj.key)
    if uids is None:
        raise Unannounceable("not an instance key")
    stat = store.stat(obj.key)
    if stat is None:
        raise Vanished(obj.key)
    # An object without a checksum in its metadata cannot be compared cheaply; the listener has
    # always recorded one, so such an object predates it and was catalogued by other means.
    if catalogued_sha256 is not None and stat.sha256 in (None, catalogued_sha256):
        return None
    sha256 = stat.sha256 or _sha256_of(store, obj.key)
    header = _header(store, obj.key, stat.size)
    if tuple(_text(header, tag) for tag in _KEY_TAGS) != uids:
        raise Unannounceable("the header's UIDs differ from the object key's")
    sop_class = _text(header, "SOPClassUID")
    if not is_valid_uid(sop_class):
        raise Unannounceable("no conformant SOP Class UID in the header")
    meta = stat.metadata
    file_meta = getattr(header, "file_meta", None) or Dataset()
    transfer_syntax = meta.get(OBJECT_META_TRANSFER_SYNTAX) or _text(file_meta, "TransferSyntaxUID")
    if not is_valid_uid(transfer_syntax):
        raise Unannounceable("no conformant transfer syntax UID")
    # The event's time is when the object was received: ingestion files it as received_at.
    when: datetime | None = stat.last_modified or obj.last_modified
    extra: dict[str, Any] = {"time": when} if when is not None else {}
    return InstanceReceived(
        study_uid=uids[0],
        series_uid=uids[1],
        sop_instance_uid=uids[2],
        sop_class_uid=sop_class,
        transfer_syntax_uid=transfer_syntax,
        object_key=obj.key,
        size=stat.size,
        sha256=sha256,
        calling_ae=meta.get(OBJECT_META_CALLING_AE) or UNKNOWN_AE,
        called_ae=meta.get(OBJECT_META_CALLED_AE) or UNKNOWN_AE,
        **extra,
    )


def _header(store: ObjectStore, key: str, size: int) -> Dataset:
    try:
        first, _ = store.read_head(key, FIRST_READ)
    except ObjectNotFound as exc:
        raise Vanished(key) from exc
    # PS3.10 7.1: a Part-10 file (all the listener stores) opens with a 128-byte preamble and
    # "DICM". Checking it first keeps a junk object from being read up to the header limit.
    if first[128:132] != b"DICM":
        raise Unannounceable("not a DICOM Part-10 file")
    try:
        return read_header(store, key, first, size)
    except ObjectNotFound as exc:
        raise Vanished(key) from exc
    except ObjectStoreError:
        raise
    except Exception as exc:  # pydicom raises many types on arbitrary bytes
        # The type only: a parser's message may quote element values, patient data included.
        raise Unannounceable(f"header cannot be parsed ({type(exc).__name__})") from exc


def _sha256_of(store: ObjectStore, key: str) -> str:
    digest = hashlib.sha256()
    try:
        for chunk in store.iter_chunks(key):
            digest.update(chunk)
    except ObjectNotFound as exc:
        raise Vanished(key) from exc
    return digest.hexdigest()


def _text(ds: Dataset, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:  # a malformed value surfaces only when read
        return ""
