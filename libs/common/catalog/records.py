"""What the catalog stores about one instance, read from its header.

The dataset comes from ``dcmread(..., stop_before_pixels=True)``; real data is untidy (wrong VRs,
bad dates, odd character sets), so every attribute but the three UIDs is read leniently: a value
that cannot be understood becomes ``None``, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from edge.common.catalog.dicomjson import clean_text, header_json
from edge.common.dicom import InvalidUID, validate_uid

_INT32_MAX = 2**31 - 1
# PS3.5 6.2 DA is YYYYMMDD; ACR-NEMA's YYYY.MM.DD still turns up in old archives.
_DA_RE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")


class UnusableInstance(ValueError):
    """The header lacks what the catalog needs to file the instance (a conformant Study, Series or
    SOP Instance UID, a SOP Class UID). Bad content: do not retry."""


@dataclass(frozen=True, slots=True)
class PatientAttrs:
    """Patient level (PS3.4 C.6.1.1.2): Patient ID is the unique key, with its issuer."""

    patient_id: str
    issuer_of_patient_id: str
    patient_name: str | None
    patient_name_norm: str | None
    patient_birth_date: date | None
    patient_sex: str | None
    # Identifies the patient row. Patient ID (LO) cannot contain a backslash, so the separator is
    # unambiguous. Without a Patient ID there is nothing to merge on: the study gets a patient of
    # its own rather than joining every other anonymous study.
    identity_key: str


@dataclass(frozen=True, slots=True)
class StudyAttrs:
    """Study level (PS3.4 C.6.1.1.3 / C.6.2.1.2)."""

    study_instance_uid: str
    study_date: date | None
    study_time: str | None
    accession_number: str | None
    study_id: str | None
    referring_physician_name: str | None
    referring_physician_name_norm: str | None
    study_description: str | None


@dataclass(frozen=True, slots=True)
class SeriesAttrs:
    """Series level (PS3.4 C.6.1.1.4)."""

    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    body_part_examined: str | None
    series_date: date | None
    series_time: str | None


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One received instance: its place in the hierarchy, its object and its header."""

    patient: PatientAttrs
    study: StudyAttrs
    series: SeriesAttrs
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    sha256: str
    size: int
    object_key: str
    calling_ae: str
    received_at: datetime
    # DICOM JSON (PS3.18 F.2) without bulk data; compared by identity only, never hashed.
    header: Mapping[str, Any] = field(compare=False, hash=False)


def _value(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # a value pydicom cannot convert is, for the catalog, no value
        return None


def _first(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return value[0] if len(value) else None
    return value


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _first(_value(ds, keyword))
    if value is None or isinstance(value, bytes | Dataset):
        return None
    text = clean_text(str(value)).strip()
    return text or None


def parse_da(value: Any) -> date | None:
    """A DA value as a date; anything unparseable (or a range, or empty) is ``None``."""
    value = _first(value)
    if isinstance(value, date):
        return date(value.year, value.month, value.day)
    if not isinstance(value, str):
        return None
    m = _DA_RE.match(value.strip())
    if m is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _first(_value(ds, keyword))
    if value is None or isinstance(value, bytes):
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    if not number.is_integer() or abs(number) > _INT32_MAX:
        return None
    return int(number)


def normalise_person_name(raw: str | None) -> str | None:
    """The matching form of a PN: first value, first non-empty component group, each component
    trimmed, trailing empty components dropped, upper-cased. ``^`` is kept, so that wildcard
    matching (PS3.4 C.2.2.2.4) can span components: ``DOE^J*`` matches ``Doe^John``."""
    if not raw:
        return None
    first_value = raw.split("\\", 1)[0]
    for group in first_value.split("="):
        components = [c.strip() for c in group.split("^")]
        while components and not components[-1]:
            components.pop()
        if components:
            return "^".join(components).upper()
    return None


def _person_name(ds: Dataset, keyword: str) -> tuple[str | None, str | None]:
    value = _value(ds, keyword)
    if value is None:
        return None, None
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    raw = clean_text("\\".join(str(v) for v in values)).strip() or None
    return raw, normalise_person_name(raw)


def _uid(ds: Dataset, keyword: str) -> str:
    value = _value(ds, keyword)
    if isinstance(value, str):
        value = value.strip(" \x00")
    if value is None or value == "":
        raise UnusableInstance(f"{keyword} is missing")
    try:
        return validate_uid(value, keyword)
    except InvalidUID as exc:
        raise UnusableInstance(str(exc)) from exc


def _sop_class_uid(ds: Dataset) -> str:
    value = _text(ds, "SOPClassUID")
    if value is None:
        meta = getattr(ds, "file_meta", None)
        value = _text(meta, "MediaStorageSOPClassUID") if meta is not None else None
    if value is None:
        raise UnusableInstance("SOPClassUID missing")
    return value


def _patient(ds: Dataset, study_uid: str) -> PatientAttrs:
    patient_id = _text(ds, "PatientID") or ""
    issuer = _text(ds, "IssuerOfPatientID") or ""
    name, name_norm = _person_name(ds, "PatientName")
    identity = f"{patient_id}\\{issuer}" if patient_id else f"\\study\\{study_uid}"
    return PatientAttrs(
        patient_id=patient_id,
        issuer_of_patient_id=issuer,
        patient_name=name,
        patient_name_norm=name_norm,
        patient_birth_date=parse_da(_value(ds, "PatientBirthDate")),
        patient_sex=_text(ds, "PatientSex"),
        identity_key=identity,
    )


def record_from_dataset(
    ds: Dataset,
    *,
    sha256: str,
    size: int,
    object_key: str,
    transfer_syntax_uid: str,
    calling_ae: str,
    received_at: datetime,
) -> InstanceRecord:
    """Read what the catalog stores from a header (``dcmread(..., stop_before_pixels=True)``).

    Raises :class:`UnusableInstance` when Study, Series or SOP Instance UID is missing or not a
    conformant UID, or the SOP Class UID is missing; every other oddity degrades to ``None``.
    """
    study_uid = _uid(ds, "StudyInstanceUID")
    series_uid = _uid(ds, "SeriesInstanceUID")
    sop_uid = _uid(ds, "SOPInstanceUID")
    referring, referring_norm = _person_name(ds, "ReferringPhysicianName")
    return InstanceRecord(
        patient=_patient(ds, study_uid),
        study=StudyAttrs(
            study_instance_uid=study_uid,
            study_date=parse_da(_value(ds, "StudyDate")),
            study_time=_text(ds, "StudyTime"),
            accession_number=_text(ds, "AccessionNumber"),
            study_id=_text(ds, "StudyID"),
            referring_physician_name=referring,
            referring_physician_name_norm=referring_norm,
            study_description=_text(ds, "StudyDescription"),
        ),
        series=SeriesAttrs(
            series_instance_uid=series_uid,
            modality=_text(ds, "Modality"),
            series_number=_int(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription"),
            body_part_examined=_text(ds, "BodyPartExamined"),
            series_date=parse_da(_value(ds, "SeriesDate")),
            series_time=_text(ds, "SeriesTime"),
        ),
        sop_instance_uid=sop_uid,
        sop_class_uid=_sop_class_uid(ds),
        instance_number=_int(ds, "InstanceNumber"),
        transfer_syntax_uid=transfer_syntax_uid,
        sha256=sha256,
        size=size,
        object_key=object_key,
        calling_ae=calling_ae,
        received_at=received_at,
        header=header_json(ds),
    )
