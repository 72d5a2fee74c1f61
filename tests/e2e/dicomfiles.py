"""Test data for the e2e tests: pydicom's bundled files, grouped as storescu must send them."""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.filereader import _read_file_meta_info as read_file_meta
from pydicom.filereader import read_preamble

from edge.common.dicom import is_valid_uid
from edge.common.dimse import STORAGE_SOP_CLASSES

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# pydicom ships these broken on purpose (cut short); they are not valid instances.
KNOWN_BROKEN = {"MR_truncated.dcm", "rtplan_truncated.dcm"}

# storescu proposes a compressed transfer syntax only when told which one (PS3.5 Annex A).
STORESCU_OPTION = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


@dataclass(frozen=True)
class Bundled:
    path: Path
    sop_instance_uid: str
    transfer_syntax: str


def dataset_sha256(data: bytes) -> str:
    """SHA-256 of a Part-10 file's data set: everything after the file meta group."""
    fp = io.BytesIO(data)
    read_preamble(fp, force=False)
    read_file_meta(fp)
    return hashlib.sha256(fp.read()).hexdigest()


def valid_bundled_instances() -> list[Bundled]:
    """Every bundled Part-10 file of a storage SOP class with conformant UIDs."""
    found = []
    for path in sorted(TEST_FILES.iterdir()):
        if path.name in KNOWN_BROKEN or not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:
            continue
        uids = [ds.get(k) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")]
        if not all(is_valid_uid(str(u)) for u in uids if u is not None) or None in uids:
            continue
        if str(meta.get("MediaStorageSOPClassUID")) not in STORAGE_SOP_CLASSES:
            continue
        if str(meta.get("MediaStorageSOPInstanceUID")) != str(ds.SOPInstanceUID):
            continue
        if str(ds.get("SOPClassUID")) != str(meta.MediaStorageSOPClassUID):
            continue
        found.append(Bundled(path, str(ds.SOPInstanceUID), str(meta.TransferSyntaxUID)))
    return found


def group_by_storescu_option(
    files: list[Bundled],
) -> tuple[dict[str, list[Bundled]], list[Bundled]]:
    """Files storescu can send grouped by its -x option, and those it cannot propose."""
    groups: dict[str, list[Bundled]] = defaultdict(list)
    others = []
    for item in files:
        option = STORESCU_OPTION.get(item.transfer_syntax)
        if option is None:
            others.append(item)
        else:
            groups[option].append(item)
    return dict(groups), others
