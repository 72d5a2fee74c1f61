"""A C-STORE client that sends a Part-10 file's data set bytes exactly as they are on disk.

DCMTK refuses to send broken files (and fixes what it re-encodes), so refusals of truncated or
inconsistent data sets are driven through pynetdicom's chunked sender, which streams the raw
bytes after the file meta group under the SOP Class/Instance UIDs of the file meta.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

from edge.common.dimse import NODELAY_HANDLER


def send_raw(
    path: Path, *, port: int, calling: str = "STORESCU", called: str = "EDGE"
) -> int | None:
    """C-STORE ``path``; return the response status, or None without an association/response."""
    # Send the file's data set as it is on disk; pynetdicom's switch is process-wide, so it is
    # put back afterwards (left on, other tests' send_c_store would need exact syntax matches).
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        return _send(path, port=port, calling=calling, called=called)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked


def _send(path: Path, *, port: int, calling: str, called: str) -> int | None:
    meta = read_file_meta_info(path)
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.requested_contexts = [
        build_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])
    ]
    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[NODELAY_HANDLER])
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(path)
        return int(status.Status) if "Status" in status else None
    finally:
        if assoc.is_established:
            assoc.release()
