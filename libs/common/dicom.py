"""DICOM helpers: UID validation, object keys and named status codes (PS3.4, PS3.7)."""

from __future__ import annotations

import re
from enum import IntEnum

# PS3.5 9.1: UIDs are dot-separated numeric components of at most 64 characters. Components
# without leading zeros are required by the standard, but real modalities break that rule, so we
# accept them: the check exists to keep keys and paths safe, not to police vendors.
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID_LENGTH = 64


class InvalidUID(ValueError):
    """A UID that is not of the form PS3.5 9.1 allows (and so may never become an object key)."""


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a conformant UID string: digits and dots, at most 64 characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and _UID_RE.fullmatch(value) is not None
    )


def validate_uid(value: object, name: str = "UID") -> str:
    """Return ``value`` if it is a conformant UID, else raise :class:`InvalidUID`."""
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise InvalidUID(f"{name} is not a conformant UID: {shown}")
    return str(value)


def instance_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The object key of an instance; every part is validated, so no key can escape its prefix."""
    return (
        f"studies/{validate_uid(study_uid, 'StudyInstanceUID')}"
        f"/series/{validate_uid(series_uid, 'SeriesInstanceUID')}"
        f"/instances/{validate_uid(sop_uid, 'SOPInstanceUID')}.dcm"
    )


def study_prefix(study_uid: str) -> str:
    """The key prefix under which every object of a study lives."""
    return f"studies/{validate_uid(study_uid, 'StudyInstanceUID')}/"


class Status(IntEnum):
    """DIMSE status codes we answer with (PS3.7 Annex C, PS3.4 B.2.3 for the Storage Service)."""

    SUCCESS = 0x0000
    # PS3.7 C.5.21: Refused: not authorized (policy refusal).
    NOT_AUTHORIZED = 0x0124
    # PS3.4 B.2.3: Refused: out of resources (retryable: S3 or broker failed or was too slow).
    OUT_OF_RESOURCES = 0xA700
    # PS3.4 B.2.3: Error: data set does not match SOP class (UID mismatch command vs dataset).
    DATASET_DOES_NOT_MATCH = 0xA900
    # PS3.4 B.2.3: Error: cannot understand (content unparsable or required UIDs missing).
    CANNOT_UNDERSTAND = 0xC000
    # Content that parses but carries a non-conformant UID, so it may never become a key.
    INVALID_UID = 0xC001
    # Instance larger than the configured maximum.
    TOO_LARGE = 0xC002
    # PS3.7 C.5.2: Processing failure (an error of our own, not retryable by the peer).
    PROCESSING_FAILURE = 0x0110


# PS3.5 A.5, A.7: the transfer syntaxes whose data set is deflated after the file meta group.
DEFLATED_EXPLICIT_LITTLE = "1.2.840.10008.1.2.1.99"
DEFLATED_TRANSFER_SYNTAXES = frozenset(
    {
        DEFLATED_EXPLICIT_LITTLE,
        "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
        "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K Referenced Deflate
    }
)
