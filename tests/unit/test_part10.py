"""check_complete and header_length on every bundled Part-10 file and on cut copies of them."""

from __future__ import annotations

import io
import warnings
import zlib
from pathlib import Path

import pydicom
import pytest
from dicomfiles import (
    KNOWN_TRUNCATED,
    TEST_FILES,
    add_pixels,
    bundled,
    bundled_part10_files,
    make_dataset,
    pixel_data_offset,
    write_part10,
)

from edge.common.dicom import DEFLATED_EXPLICIT_LITTLE
from edge.common.part10 import IncompleteDataset, check_complete, header_length

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# PS3.10 7.1: (0002,0010) Transfer Syntax UID is required in the file meta; pydicom guesses one.
META_WITHOUT_TRANSFER_SYNTAX = "meta_missing_tsyntax.dcm"
EXCLUDED = KNOWN_TRUNCATED | {META_WITHOUT_TRANSFER_SYNTAX}


def _readable(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pydicom.dcmread(path)
    except Exception:
        return False
    return True


COMPLETE = [p for p in bundled_part10_files() if p.name not in EXCLUDED and _readable(p)]
IDS = [str(p.relative_to(TEST_FILES)) for p in COMPLETE]
# One file of each layout is enough for the exhaustive cuts; the rest get a few cuts each.
TOP_LEVEL = [p for p in COMPLETE if p.parent == TEST_FILES]


def test_the_bundled_files_cover_every_layout_we_rely_on() -> None:
    names = {p.name for p in COMPLETE}
    assert len(COMPLETE) > 60
    assert {"image_dfl.dcm", "MR_small_bigendian.dcm", "JPEG-lossy.dcm", "UN_sequence.dcm"} <= names


@pytest.mark.parametrize("path", COMPLETE, ids=IDS)
def test_complete_bundled_file_passes_and_returns_its_transfer_syntax(path: Path) -> None:
    expected = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID

    assert check_complete(path) == expected


@pytest.mark.parametrize("name", sorted(KNOWN_TRUNCATED))
def test_known_truncated_bundled_file_is_incomplete(name: str) -> None:
    with pytest.raises(IncompleteDataset):
        check_complete(bundled(name))


def test_file_meta_without_transfer_syntax_is_incomplete() -> None:
    with pytest.raises(IncompleteDataset, match="transfer syntax"):
        check_complete(bundled(META_WITHOUT_TRANSFER_SYNTAX))


def _cuts(data: bytes, path: Path) -> list[int]:
    """Lengths that end inside an element: never on a top-level element boundary."""
    size = len(data)
    cuts = {133, 140}  # inside the first file meta element
    if check_complete(path) == DEFLATED_EXPLICIT_LITTLE:
        # The file may carry bytes after the end of the deflate stream (image_dfl.dcm has a gzip
        # trailer); cut inside the stream itself.
        meta_end = _meta_end(data)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflater.decompress(data[meta_end:])
        stream_end = size - len(inflater.unused_data)
        cuts |= {stream_end - 1, (meta_end + stream_end) // 2}
    else:
        cuts.add(size - 1)  # inside the last element, whatever it is
        end = header_length(io.BytesIO(data), size)
        assert end is not None
        if end < size:
            cuts |= {end + 2, end + 10, (end + size) // 2}  # pixel data tag, length, value
    return sorted(c for c in cuts if 132 < c < size)


def _meta_end(data: bytes) -> int:
    # (0002,0000) group length UL: the meta group ends that many bytes after its 12-byte element.
    assert data[132:136] == b"\x02\x00\x00\x00"
    return 144 + int.from_bytes(data[140:144], "little")


@pytest.mark.parametrize("path", TOP_LEVEL, ids=[p.name for p in TOP_LEVEL])
def test_bundled_file_cut_short_is_incomplete(path: Path, tmp_path: Path) -> None:
    data = path.read_bytes()
    for cut in _cuts(data, path):
        short = tmp_path / f"cut{cut}.dcm"
        short.write_bytes(data[:cut])
        with pytest.raises(IncompleteDataset):
            check_complete(short)
            pytest.fail(f"{path.name} cut to {cut} of {len(data)} bytes passed")


def test_file_cut_inside_a_nested_sequence_item_is_incomplete(tmp_path: Path) -> None:
    path = bundled("nested_priv_SQ.dcm")
    data = path.read_bytes()
    # Every cut strictly inside the outer sequence (not at a top-level boundary) must fail.
    for cut in range(236, 333):
        short = tmp_path / "short.dcm"
        short.write_bytes(data[:cut])
        with pytest.raises(IncompleteDataset):
            check_complete(short)


def test_file_without_preamble_is_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICX" + b"\x00" * 64)

    with pytest.raises(IncompleteDataset, match="preamble"):
        check_complete(path)


def test_corrupt_deflate_stream_is_incomplete(tmp_path: Path) -> None:
    data = bytearray(bundled("image_dfl.dcm").read_bytes())
    meta_end = _meta_end(bytes(data))
    data[meta_end : meta_end + 8] = b"\xff" * 8
    path = tmp_path / "bad.dcm"
    path.write_bytes(bytes(data))

    with pytest.raises(IncompleteDataset):
        check_complete(path)


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "JPEG-lossy.dcm"]
)
def test_header_length_is_the_offset_of_the_pixel_data_element(name: str) -> None:
    data = bundled(name).read_bytes()

    end = header_length(io.BytesIO(data), len(data))

    assert end is not None
    tag = data[end : end + 4]
    assert tag in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # little or big endian (7FE0,0010)
    header = pydicom.dcmread(io.BytesIO(data[:end]))
    assert "PixelData" not in header
    assert header.SOPInstanceUID == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID


def test_header_length_of_a_built_file_matches_the_pixel_data_bytes(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "ct.dcm", add_pixels(make_dataset(), 32, 32))
    data = path.read_bytes()

    assert header_length(io.BytesIO(data), len(data)) == pixel_data_offset(data)


def test_header_length_needs_only_the_bytes_before_the_pixel_data(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "ct.dcm", add_pixels(make_dataset(), 256, 256))
    data = path.read_bytes()
    offset = pixel_data_offset(data)
    prefix = data[: offset + 12]  # the pixel data element header, none of its value

    assert header_length(io.BytesIO(prefix), len(prefix)) == offset


def test_header_length_of_a_file_without_pixel_data_is_its_size() -> None:
    data = bundled("rtplan.dcm").read_bytes()

    assert header_length(io.BytesIO(data), len(data)) == len(data)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "rtplan.dcm"])
def test_header_length_of_a_prefix_cut_inside_the_header_raises(name: str) -> None:
    data = bundled(name).read_bytes()
    end = header_length(io.BytesIO(data), len(data))
    assert end is not None
    for cut in (133, end // 2 + 1, end - 1):
        prefix = data[:cut]
        try:
            result = header_length(io.BytesIO(prefix), cut)
        except IncompleteDataset:
            continue
        # A cut on an element boundary is indistinguishable from the end of a data set: the
        # answer must then be "everything you gave me", never an offset inside the prefix.
        assert result == cut, f"{name} cut to {cut}: header_length said {result}"


def test_header_length_of_a_prefix_cut_inside_an_element_raises() -> None:
    data = bundled("CT_small.dcm").read_bytes()
    end = header_length(io.BytesIO(data), len(data))
    assert end is not None

    with pytest.raises(IncompleteDataset):
        header_length(io.BytesIO(data[: end - 1]), end - 1)


def test_header_length_of_a_deflated_file_is_none() -> None:
    data = bundled("image_dfl.dcm").read_bytes()

    assert header_length(io.BytesIO(data[:1000]), 1000) is None
