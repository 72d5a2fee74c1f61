"""``edge send``: C-STORE files to a DICOM node, streaming each file as it is on disk."""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

from edge.cli.dicomtls import connection_failures, failure
from edge.common.dimse import NODELAY_HANDLER

# PS3.8 9.3.2.2: at most 128 presentation contexts per association.
MAX_CONTEXTS = 128


@dataclass(frozen=True)
class Outgoing:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def discover(paths: Iterable[Path]) -> tuple[list[Outgoing], list[tuple[Path, str]]]:
    """Every DICOM file under ``paths``, and those that are not DICOM with the reason."""
    found: list[Outgoing] = []
    skipped: list[tuple[Path, str]] = []
    for path in _files(paths):
        try:
            ds = dcmread(
                path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
            )
            found.append(
                Outgoing(
                    path,
                    str(ds.file_meta.MediaStorageSOPClassUID),
                    str(ds.file_meta.MediaStorageSOPInstanceUID),
                    str(ds.file_meta.TransferSyntaxUID),
                )
            )
        except (InvalidDicomError, AttributeError, ValueError, OSError) as exc:
            skipped.append((path, f"not a DICOM Part-10 file ({type(exc).__name__})"))
    return found, skipped


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def batches(files: list[Outgoing]) -> Iterator[list[Outgoing]]:
    """Split ``files`` so that no association needs more than 128 presentation contexts."""
    batch: list[Outgoing] = []
    contexts: set[tuple[str, str]] = set()
    for item in files:
        key = (item.sop_class_uid, item.transfer_syntax_uid)
        if key not in contexts and len(contexts) == MAX_CONTEXTS:
            yield batch
            batch, contexts = [], set()
        contexts.add(key)
        batch.append(item)
    if batch:
        yield batch


def send_batch(
    batch: list[Outgoing],
    *,
    called_ae: str,
    host: str,
    port: int,
    calling_ae: str,
    on_result: Callable[[Outgoing, int | None, str], None],
    tls_args: tuple[ssl.SSLContext, str] | None = None,
) -> None:
    """One association for ``batch`` (over TLS with ``tls_args``: pynetdicom's (context, server
    host name)); ``on_result(item, status_or_None, comment)`` per file."""
    # Send the bytes as they are on disk (no decode, no re-encode): needs an exact context.
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class, ts in sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in batch}):
        ae.requested_contexts.append(build_context(sop_class, [ts]))
    with connection_failures() as reasons:
        assoc = ae.associate(
            host, port, ae_title=called_ae, evt_handlers=[NODELAY_HANDLER], tls_args=tls_args
        )
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "association failed"
        reason += "" if assoc.is_rejected else failure(reasons)
        for item in batch:
            on_result(item, None, reason)
        return
    try:
        for item in batch:
            try:
                rsp = assoc.send_c_store(item.path)
            except ValueError as exc:  # no accepted context for this SOP class / syntax
                on_result(item, None, str(exc)[:80])
                continue
            status = getattr(rsp, "Status", None)
            comment = str(getattr(rsp, "ErrorComment", "") or "")
            on_result(item, status, comment or ("no response" if status is None else ""))
            if not assoc.is_established:
                for rest in batch[batch.index(item) + 1 :]:
                    on_result(rest, None, "association aborted")
                return
    finally:
        if assoc.is_established:
            assoc.release()


def summarize(statuses: Counter[str]) -> list[tuple[str, int]]:
    return sorted(statuses.items())
