"""multipart/related: the streaming reader spools parts whatever the chunking; the builder's
output reads back."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.listener.multipart import (
    MultipartError,
    boundary_of,
    encode,
    parse_media_type,
    read_parts,
    split_list,
)

BOUNDARY = "b0undary-1"


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def spooled(folder: Path) -> list[Path]:
    return list(folder.iterdir())


async def collect(data: bytes, size: int, tmp_path: Path, **kw: object) -> list[tuple[dict, bytes]]:
    parts = []
    reader = read_parts(chunked(data, size), BOUNDARY.encode(), spool_dir=str(tmp_path), **kw)  # type: ignore[arg-type]
    async for part in reader:
        assert part.size == part.path.stat().st_size
        parts.append((part.headers, part.path.read_bytes()))
    return parts


def test_media_type_parameters_are_unquoted_and_named_in_lower_case() -> None:
    media, params = parse_media_type(
        'Multipart/Related; type="application/dicom"; Boundary="a;b"; transfer-syntax=*'
    )
    assert media == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "a;b", "transfer-syntax": "*"}
    assert boundary_of(params) == b"a;b"
    with pytest.raises(MultipartError):
        boundary_of({})
    assert split_list('a/b; q=0.5, c/d; x="1,2" ,, e/f') == ["a/b; q=0.5", 'c/d; x="1,2"', "e/f"]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
async def test_parts_are_whole_at_any_chunking(tmp_path: Path, chunk: int) -> None:
    first = os.urandom(3000) + b"\r\n--" + BOUNDARY[:-1].encode()  # a near-boundary inside
    second = b""
    third = b"\r\n\r\n--"
    body = b"preamble\r\n" + encode(
        [("application/dicom", first), ("application/dicom", second), ("text/plain", third)],
        BOUNDARY,
    )
    parts = await collect(body, chunk, tmp_path)
    assert [data for _, data in parts] == [first, second, third]
    assert [h["content-type"] for h, _ in parts] == [
        "application/dicom",
        "application/dicom",
        "text/plain",
    ]
    assert spooled(tmp_path) == []  # every spool file is gone


async def test_dicomweb_clients_leading_crlf_and_a_part_without_headers(tmp_path: Path) -> None:
    body = f"\r\n--{BOUNDARY}\r\n\r\nabc\r\n--{BOUNDARY}  \r\nX-A: 1\r\n\r\nxyz\r\n--{BOUNDARY}--"
    parts = await collect(body.encode(), 5, tmp_path)
    assert parts == [({}, b"abc"), ({"x-a": "1"}, b"xyz")]


@pytest.mark.parametrize(
    "body",
    [
        b"no boundary anywhere",
        f"--{BOUNDARY}\r\nContent-Type: a/b\r\n\r\ncut".encode(),
        f"--{BOUNDARY}\r\nContent-Type: a/b".encode(),
        f"--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}junk\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
    ],
    ids=["no-boundary", "no-close", "header-cut", "bad-header", "text-after-boundary"],
)
async def test_malformed_bodies_raise_and_leave_no_spool_file(tmp_path: Path, body: bytes) -> None:
    with pytest.raises(MultipartError):
        await collect(body, 4, tmp_path)
    assert spooled(tmp_path) == []


async def test_a_part_over_the_limit_is_refused(tmp_path: Path) -> None:
    body = encode([("application/dicom", b"x" * 5000)], BOUNDARY)
    with pytest.raises(MultipartError, match="exceeds"):
        await collect(body, 100, tmp_path, max_part_size=1000)
    assert spooled(tmp_path) == []
