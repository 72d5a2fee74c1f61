"""Structural check of a received Part-10 file: is every element whole?

pydicom reads a truncated file without complaint (it stops where the bytes stop), so a C-STORE
cut short by a peer would otherwise be stored and announced as if it were complete. This walker
reads only tags and lengths (PS3.5 7.1, 7.5), never values, and fails unless the last element
ends exactly at the end of the file.
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, NamedTuple, cast

from edge.common.dicom import DEFLATED_TRANSFER_SYNTAXES

IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# PS3.5 7.1.2: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
MAX_DEPTH = 32
# (7FE0,0008) Float, (7FE0,0009) Double Float and (7FE0,0010) Pixel Data: the bulk of an image.
PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}


class IncompleteDataset(ValueError):
    """The file ends inside an element, or its structure cannot be followed."""


class _Walker:
    def __init__(self, fp: BinaryIO, size: int, *, implicit: bool, little: bool) -> None:
        self.fp, self.size, self.implicit = fp, size, implicit
        self.endian = "<" if little else ">"
        self.pixel_data = False  # a top-level (7FE0,0008/0009/0010) element was seen

    def read(self, n: int) -> bytes:
        data = self.fp.read(n)
        if len(data) != n:
            raise IncompleteDataset(
                f"file ends {n - len(data)} bytes short at offset {self.fp.tell()}"
            )
        return data

    def skip(self, n: int) -> None:
        end = self.fp.tell() + n
        if end > self.size:
            raise IncompleteDataset(
                f"element of {n} bytes runs {end - self.size} bytes past the end"
            )
        self.fp.seek(end)

    def tag_and_length(self) -> tuple[int, bytes | None, int]:
        group, element = struct.unpack(self.endian + "HH", self.read(4))
        tag = (group << 16) | element
        if tag in (ITEM, ITEM_END, SEQUENCE_END) or self.implicit:
            (length,) = struct.unpack(self.endian + "L", self.read(4))
            return tag, None, length
        vr = self.read(2)
        if not (vr.isalpha() and vr.isupper()):
            # Explicit VR declared but implicit VR found, as pydicom also tolerates: the four
            # bytes read as "VR + short length" are the implicit 4-byte length.
            (length,) = struct.unpack(self.endian + "L", vr + self.read(2))
            return tag, None, length
        if vr in LONG_VRS:
            (length,) = struct.unpack(self.endian + "xxL", self.read(6))
        else:
            (length,) = struct.unpack(self.endian + "H", self.read(2))
        return tag, vr, length

    def dataset(self, depth: int, until_item_end: bool, stop_at_pixels: bool = False) -> int:
        """Walk a data set; return the offset where it ends (or where pixel data starts)."""
        if depth > MAX_DEPTH:
            raise IncompleteDataset("sequences nested too deeply")
        while True:
            if not until_item_end and self.fp.tell() == self.size:
                return self.size
            start = self.fp.tell()
            tag, vr, length = self.tag_and_length()
            if tag in PIXEL_TAGS and depth == 0:
                self.pixel_data = True
                if stop_at_pixels:
                    return start
            if tag == ITEM_END:
                if until_item_end:
                    return self.fp.tell()
                raise IncompleteDataset("item delimiter outside an item")
            if length == UNDEFINED and vr == b"UN":
                # PS3.5 6.2.2: an undefined-length UN holds a sequence in implicit VR LE.
                _Walker(self.fp, self.size, implicit=True, little=True).items(depth + 1)
            elif length == UNDEFINED:
                self.items(depth + 1)
            else:
                self.skip(length)

    def items(self, depth: int) -> None:
        """An undefined-length sequence or encapsulated pixel data: items up to the delimiter."""
        while True:
            tag, _vr, length = self.tag_and_length()
            if tag == SEQUENCE_END:
                return
            if tag != ITEM:
                raise IncompleteDataset(f"expected an item, found tag {tag:08X}")
            if length == UNDEFINED:
                self.dataset(depth, until_item_end=True)
            else:
                self.skip(length)


class Part10Info(NamedTuple):
    transfer_syntax: str
    has_pixel_data: bool


def inspect(path: Path) -> Part10Info:
    """Raise :class:`IncompleteDataset` unless every element of the Part-10 file is whole.

    Returns the transfer syntax UID from the file meta group and whether the data set has a
    top-level pixel data element: a file cut exactly between two elements is structurally whole,
    but an image whose pixels are missing is the common shape of such a cut.
    """
    with path.open("rb") as fp:
        transfer_syntax, _end, pixels = _walk(fp, path.stat().st_size, stop_at_pixels=False)
    return Part10Info(transfer_syntax, pixels)


def check_complete(path: Path) -> str:
    """:func:`inspect`, returning only the transfer syntax UID."""
    return inspect(path).transfer_syntax


def header_length(fp: BinaryIO, size: int) -> int | None:
    """Bytes of a Part-10 file up to its pixel data, read from its first ``size`` bytes.

    Raises :class:`IncompleteDataset` when those bytes end before the header does (read more);
    returns None for a deflated file, whose header can only be found by inflating all of it.
    """
    transfer_syntax, end, _pixels = _walk(fp, size, stop_at_pixels=True)
    return None if transfer_syntax in DEFLATED_TRANSFER_SYNTAXES else end


def _walk(fp: BinaryIO, size: int, *, stop_at_pixels: bool) -> tuple[str, int, bool]:
    if size < 132 or fp.read(132)[128:] != b"DICM":
        raise IncompleteDataset("no DICOM preamble")
    meta = _Walker(fp, size, implicit=False, little=True)
    transfer_syntax = ""
    while fp.tell() < size:
        start = fp.tell()
        (group,) = struct.unpack("<H", meta.read(2))
        fp.seek(start)
        if group != 0x0002:
            break
        tag, _vr, length = meta.tag_and_length()
        if tag == 0x00020010:
            transfer_syntax = meta.read(length).rstrip(b"\x00 ").decode("ascii", "replace")
        else:
            meta.skip(length)
    if not transfer_syntax:
        raise IncompleteDataset("file meta has no transfer syntax")
    if transfer_syntax in DEFLATED_TRANSFER_SYNTAXES:
        if stop_at_pixels:
            return transfer_syntax, size, False
        with _inflate(fp) as inflated:
            inflated_size = inflated.seek(0, 2)
            inflated.seek(0)
            inner = _Walker(cast(BinaryIO, inflated), inflated_size, implicit=False, little=True)
            inner.dataset(0, until_item_end=False)
        return transfer_syntax, size, inner.pixel_data
    walker = _Walker(
        fp,
        size,
        implicit=transfer_syntax == IMPLICIT_LITTLE,
        little=transfer_syntax != EXPLICIT_BIG,
    )
    end = walker.dataset(0, until_item_end=False, stop_at_pixels=stop_at_pixels)
    return transfer_syntax, end, walker.pixel_data


def _inflate(fp: BinaryIO) -> tempfile.SpooledTemporaryFile[bytes]:
    # PS3.5 A.5: the data set is a raw deflate stream; a cut stream never reaches its end.
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(max_size=16 << 20)
    try:
        while chunk := fp.read(1 << 20):
            out.write(inflater.decompress(chunk))
            if inflater.eof:
                break
    except zlib.error as exc:
        out.close()
        raise IncompleteDataset(f"deflated data set is corrupt: {exc}") from exc
    if not inflater.eof:
        out.close()
        raise IncompleteDataset("deflated data set ends before its end marker")
    return out
