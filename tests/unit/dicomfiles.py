"""Part-10 files for unit tests: built with pydicom, or taken from pydicom's bundled test files.

The bundled files are read from the installed package, never fetched: ``get_testdata_files``
would try to download the ones pydicom does not ship.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# pydicom ships these cut short on purpose (its own tests of truncated reads).
KNOWN_TRUNCATED = frozenset({"MR_truncated.dcm", "rtplan_truncated.dcm"})


def bundled(name: str) -> Path:
    path = TEST_FILES / name
    assert path.is_file(), f"pydicom no longer ships {name}"
    return path


def has_file_meta(path: Path) -> bool:
    with path.open("rb") as fp:
        return fp.read(132)[128:] == b"DICM"


def bundled_part10_files() -> list[Path]:
    """Every bundled file that starts with a Part-10 preamble and file meta, sorted."""
    return sorted(p for p in TEST_FILES.rglob("*") if p.is_file() and has_file_meta(p))


def make_dataset(**attrs: Any) -> Dataset:
    """A small CT header with fresh UIDs; keyword arguments set (or override) attributes."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P-1"
    ds.PatientName = "Doe^Jane"
    ds.Modality = "CT"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def add_pixels(ds: Dataset, rows: int, columns: int, fill: int = 0x5A) -> Dataset:
    """Native 8-bit monochrome pixel data of ``rows`` x ``columns`` bytes."""
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes([fill]) * (rows * columns)
    return ds


def write_part10(path: Path, ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """Write ``ds`` as a Part-10 file with a file meta matching its SOP Class and Instance."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CTImageStorage)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


def pixel_data_offset(data: bytes) -> int:
    """Offset of the (7FE0,0010) tag in an explicit VR little endian file, found by its bytes."""
    offset = data.rfind(b"\xe0\x7f\x10\x00OB")
    if offset < 0:
        offset = data.rfind(b"\xe0\x7f\x10\x00OW")
    assert offset > 0, "no pixel data element"
    return offset
