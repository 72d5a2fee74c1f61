"""``multipart/related`` (RFC 2387, RFC 2046 5.1) as DICOMweb uses it (PS3.18 8.6.1.2): a
streaming reader that spools each part of a request body to a file, never the whole body in
memory, and the pieces of a multipart response.

Plain functions and one async generator; no HTTP framework here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

CRLF = b"\r\n"
MAX_PART_HEADER = 16 << 10  # bytes of header lines one part may carry
MAX_BOUNDARY = 70  # RFC 2046 5.1.1


class MultipartError(ValueError):
    """A body that is not the multipart message its Content-Type announces."""


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; name=value; name="quoted value"`` -> (lower-case type, parameters with
    lower-case names). A parameter without ``=`` is dropped; quotes around a value go."""
    head, *params = _split(value, ";")
    parameters: dict[str, str] = {}
    for param in params:
        name, sep, raw = param.partition("=")
        if not sep:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"')
        parameters[name.strip().lower()] = raw
    return head.strip().lower(), parameters


def _split(value: str, separator: str) -> list[str]:
    """Split at ``separator`` outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def split_list(value: str) -> list[str]:
    """An HTTP list header (``Accept``) split at commas outside quotes, empty members dropped."""
    return [item.strip() for item in _split(value, ",") if item.strip()]


def boundary_of(parameters: dict[str, str]) -> bytes:
    boundary = parameters.get("boundary", "")
    if not boundary or len(boundary) > MAX_BOUNDARY or not boundary.isascii():
        raise MultipartError("the Content-Type has no usable boundary parameter")
    return boundary.encode("ascii")


@dataclass
class Part:
    """One body part, spooled: its header fields (lower-case names) and the file holding it."""

    headers: dict[str, str]
    path: Path
    size: int

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def _headers(block: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.split(CRLF):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise MultipartError("a part header line has no colon")
        fields[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return fields


async def read_parts(
    chunks: AsyncIterator[bytes],
    boundary: bytes,
    *,
    spool_dir: str | None = None,
    max_part_size: int | None = None,
) -> AsyncIterator[Part]:
    """The parts of a multipart body, each spooled to a file that lives until the caller asks
    for the next part (or closes the generator).

    Memory holds at most one chunk plus a boundary's length. Raises :class:`MultipartError` for
    a body that does not start with the boundary, a part without a header end, a part larger
    than ``max_part_size`` or a body that ends before its close delimiter.
    """
    dash = b"--" + boundary
    delimiter = CRLF + dash
    buffer = bytearray(CRLF)  # so that a body starting with the boundary finds a delimiter
    stream = chunks.__aiter__()
    ended = False

    async def more() -> bool:
        nonlocal ended
        if ended:
            return False
        try:
            buffer.extend(await stream.__anext__())
        except StopAsyncIteration:
            ended = True
            return False
        return True

    # Preamble: anything up to the first delimiter (RFC 2046 5.1.1) is ignored.
    while (at := buffer.find(delimiter)) < 0:
        del buffer[: max(0, len(buffer) - len(delimiter))]
        if not await more():
            raise MultipartError("the body does not contain the boundary")
    del buffer[: at + len(delimiter)]
    while True:
        # After a delimiter: "--" closes the body; else transport padding, then CRLF.
        while len(buffer) < 2 and await more():
            pass
        if buffer[:2] == b"--":
            return
        while (eol := buffer.find(CRLF)) < 0:
            if len(buffer) > MAX_PART_HEADER or not await more():
                raise MultipartError("a boundary line does not end")
        if buffer[:eol].strip(b" \t"):
            raise MultipartError("text after a boundary")
        del buffer[: eol + 2]
        # Header fields up to an empty line (a part may have none: the empty line comes first).
        while True:
            if buffer[:2] == CRLF:
                block, header_end = b"", 2
                break
            at = buffer.find(CRLF + CRLF)
            if at >= 0:
                block, header_end = bytes(buffer[:at]), at + 4
                break
            if len(buffer) > MAX_PART_HEADER:
                raise MultipartError("a part's header is too long")
            if not await more():
                raise MultipartError("the body ends inside a part's header")
        headers = _headers(block)
        del buffer[:header_end]
        fd, name = tempfile.mkstemp(prefix="stow-", suffix=".dcm", dir=spool_dir)
        path = Path(name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                while (at := buffer.find(delimiter)) < 0:
                    keep = len(delimiter) - 1  # a delimiter may straddle two chunks
                    if len(buffer) > keep:
                        out.write(buffer[: len(buffer) - keep])
                        size += len(buffer) - keep
                        del buffer[: len(buffer) - keep]
                    if max_part_size is not None and size > max_part_size:
                        raise MultipartError(f"a part exceeds {max_part_size} bytes")
                    if not await more():
                        raise MultipartError("the body ends before its close delimiter")
                out.write(buffer[:at])
                size += at
            del buffer[: at + len(delimiter)]
            yield Part(headers, path, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def new_boundary() -> str:
    return uuid.uuid4().hex


def part_head(boundary: str, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    """What goes before one part's bytes: the delimiter line and the part's header fields."""
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def closing(boundary: str) -> bytes:
    """The close delimiter, after the last part's bytes."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def related(boundary: str, part_type: str) -> str:
    """The Content-Type of a multipart/related response whose parts are ``part_type``."""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def encode(parts: list[tuple[str, bytes]], boundary: str) -> bytes:
    """A whole multipart body from (content type, bytes) pairs: small responses and tests."""
    body = bytearray()
    for index, (content_type, data) in enumerate(parts):
        if index:
            body += CRLF
        body += part_head(boundary, content_type) + data
    return bytes(body + closing(boundary))
