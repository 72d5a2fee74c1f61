"""Content negotiation for WADO-RS and WADO-URI (PS3.18 8.7): which media type and transfer
syntax a request's Accept header (or query parameters) allows, decided without I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import UID

from edge.listener.multipart import parse_media_type, split_list

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
ANY = "*"  # transfer-syntax=*: as stored (PS3.18 8.7.3.5.2)
# PS3.18 8.7.3.5.2: without a transfer-syntax parameter, DICOM resources and uncompressed
# bulk data come in Explicit VR Little Endian.
DEFAULT_SYNTAX = EXPLICIT_LE
# What the listener can transcode to: uncompressed little endian (PS3.18 8.7.3.5.2 requires
# these), and the lossless compressed syntaxes below where an encoder is installed. Lossy
# re-compression is never offered: a request for it is 406.
TRANSCODE_TARGETS = frozenset({EXPLICIT_LE, IMPLICIT_LE})
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
LOSSLESS_ENCODINGS = (RLE_LOSSLESS, JPEG_LS_LOSSLESS, J2K_LOSSLESS)
NATIVE = frozenset({IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE})
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
OCTET_STREAM = "application/octet-stream"

# PS3.18 Table 8.7.3-4 (single-frame and multi-frame image media types by transfer syntax).
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
}
RENDERED_TYPES = ("image/jpeg", "image/png")


class NotAcceptable(ValueError):
    """Nothing the Accept header allows can be produced (406); the message says what can."""


@dataclass(frozen=True)
class MediaRange:
    type: str  # lower case, e.g. multipart/related, image/*, */*
    params: dict[str, str]
    q: float

    def matches(self, media_type: str) -> bool:
        if self.type == "*/*":
            return True
        if self.type.endswith("/*"):
            return media_type.split("/")[0] == self.type[:-2]
        return self.type == media_type


def accept_ranges(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, most preferred first (RFC 9110 12.5.1): by ``q``,
    then in the order given; ``q=0`` means "not this" and is dropped. No header: ``*/*``."""
    if not header or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
    ranges = []
    for index, item in enumerate(split_list(header)):
        media, params = parse_media_type(item)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append((-q, index, MediaRange(media, params, q)))
    return [r for _, _, r in sorted(ranges, key=lambda t: (t[0], t[1]))]


def _part_type(r: MediaRange) -> str:
    return parse_media_type(r.params.get("type", "*/*"))[0]


def dicom_syntaxes(header: str | None) -> list[str]:
    """The transfer syntaxes (or :data:`ANY`) acceptable for DICOM instances, in order of
    preference: ``multipart/related; type="application/dicom"[; transfer-syntax=...]``; ``*/*``
    and ``multipart/related`` without a type mean the default. Raises :class:`NotAcceptable`."""
    syntaxes: list[str] = []
    for r in accept_ranges(header):
        if r.type in ("*/*", "multipart/*") or (
            r.type == "multipart/related" and MediaRange(_part_type(r), {}, 1).matches(DICOM)
        ):
            syntax = r.params.get("transfer-syntax", DEFAULT_SYNTAX).strip() or DEFAULT_SYNTAX
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    if not syntaxes:
        raise NotAcceptable(f'instances are multipart/related; type="{DICOM}" only')
    return syntaxes


def can_decode(stored: str) -> bool:
    """Whether an object in ``stored`` can be rewritten as uncompressed little endian."""
    if stored in NATIVE:
        return True
    uid = UID(stored)
    if not uid.is_compressed:
        return False  # big endian: pydicom does not change a data set's endianness
    try:
        return bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


@cache
def can_encode(target: str) -> bool:
    """Whether pixel data can be compressed here into ``target``: a lossless syntax whose
    encoder is installed (pydicom's own RLE; JPEG 2000 through pylibjpeg-openjpeg; JPEG-LS
    through pyjpegls, when present)."""
    if target not in LOSSLESS_ENCODINGS:
        return False
    try:
        return bool(get_encoder(UID(target)).is_available)
    except (NotImplementedError, ValueError):
        return False


def choose_syntax(options: list[str], stored: str) -> str | None:
    """The transfer syntax to send an object stored in ``stored`` in: the first option that is
    ``*`` or ``stored`` itself, an uncompressed one it can be decoded to, or a lossless
    compressed one it can be (decoded and) encoded to; None if none."""
    for option in options:
        if option in (ANY, stored):
            return stored
        if (option in TRANSCODE_TARGETS or can_encode(option)) and can_decode(stored):
            return option
    return None


@dataclass(frozen=True)
class FrameChoice:
    """How frames (or pixel bulk data) go out: as stored (``decode`` False) in ``media_type``,
    or decoded to uncompressed little endian bytes as application/octet-stream."""

    media_type: str
    transfer_syntax: str
    decode: bool


def frame_choice(header: str | None, stored: str) -> FrameChoice:
    """PS3.18 8.7.3.5.4 / 8.7.4: frames of an object stored in ``stored``.

    ``type="application/octet-stream"`` without a syntax (or with Explicit VR Little Endian)
    asks for uncompressed bytes; with ``transfer-syntax=*`` (or ``type="*/*"``, ``image/*``,
    the stored syntax's own media type) the frames go as stored.
    """
    native = stored in NATIVE or stored == EXPLICIT_BE
    stored_media = OCTET_STREAM if native else FRAME_MEDIA_TYPES.get(stored, OCTET_STREAM)
    as_stored = FrameChoice(stored_media, EXPLICIT_LE if native else stored, False)
    uncompressed = FrameChoice(OCTET_STREAM, EXPLICIT_LE, not native)
    for r in accept_ranges(header):
        if r.type == "*/*":
            return as_stored
        if r.type not in ("multipart/related", "multipart/*"):
            continue
        part = MediaRange(_part_type(r), {}, 1)
        syntax = r.params.get("transfer-syntax", "").strip()
        if part.type == OCTET_STREAM:
            if syntax == ANY:
                return FrameChoice(OCTET_STREAM, as_stored.transfer_syntax, False)
            if syntax in ("", EXPLICIT_LE) and (native or can_decode(stored)):
                return uncompressed
            if syntax == stored:
                return FrameChoice(OCTET_STREAM, stored, False)
            continue
        if part.matches(stored_media) and syntax in ("", ANY, as_stored.transfer_syntax):
            return as_stored
    raise NotAcceptable(
        f'frames of this instance are multipart/related; type="{stored_media}"'
        + ("" if native else f' or type="{OCTET_STREAM}" (decoded)')
    )


def metadata_type(header: str | None) -> str:
    """:data:`DICOM_JSON` (the default) or :data:`DICOM_XML` (PS3.18 10.4.1.1.4: XML metadata is
    ``multipart/related; type="application/dicom+xml"``, one part per instance)."""
    for r in accept_ranges(header):
        if r.type in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return DICOM_JSON
        if r.type in ("multipart/related", "multipart/*") and MediaRange(
            _part_type(r), {}, 1
        ).matches(DICOM_XML):
            return DICOM_XML
    raise NotAcceptable(f'metadata is {DICOM_JSON} or multipart/related; type="{DICOM_XML}"')


def rendered_parts_type(header: str | None) -> str:
    """The media type of each part of a rendered study or series (PS3.18 10.4.1.1.7):
    ``multipart/related; type="image/jpeg"`` (the default) or ``type="image/png"``; a bare
    ``image/jpeg`` or ``image/png`` is taken to mean the same."""
    for r in accept_ranges(header):
        wanted = MediaRange(_part_type(r), {}, 1) if r.type.startswith("multipart/") else r
        for media in RENDERED_TYPES:
            if wanted.matches(media):
                return media
    raise NotAcceptable(
        'rendered studies and series are multipart/related; type="image/jpeg" or "image/png"'
    )


def rendered_type(header: str | None) -> str:
    """image/jpeg (the default) or image/png (PS3.18 8.7.4, rendered media types)."""
    for r in accept_ranges(header):
        for media in RENDERED_TYPES:
            if r.matches(media):
                return media
    raise NotAcceptable("rendered images are image/jpeg or image/png")
