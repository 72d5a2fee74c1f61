"""What the query engine knows of each attribute: its tag, VR, level, and where its value lives.

Three kinds of attribute:

- **typed**: a column of the catalog (indexed where it is a key), e.g. PatientID, StudyDate;
- **computed**: an aggregate over the levels below, e.g. ModalitiesInStudy,
  NumberOfStudyRelatedInstances (PS3.4 C.3.4);
- anything else: read from the stored DICOM JSON header of a representative instance of the
  matched entity (the first instance catalogued), for return keys and for matching alike.

SQL fragments here are fixed text; values never enter them (the engine binds parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword


class Level(Enum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3

    @property
    def alias(self) -> str:
        return _ALIASES[self]


_ALIASES = {Level.PATIENT: "p", Level.STUDY: "s", Level.SERIES: "r", Level.IMAGE: "i"}


class Model(Enum):
    """Query/Retrieve Information Model (PS3.4 C.6)."""

    PATIENT_ROOT = "PATIENT"
    STUDY_ROOT = "STUDY"

    def levels(self) -> tuple[Level, ...]:
        if self is Model.PATIENT_ROOT:
            return (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
        return (Level.STUDY, Level.SERIES, Level.IMAGE)


@dataclass(frozen=True)
class Attr:
    keyword: str
    tag: int
    vr: str
    level: Level
    column: str | None = None  # typed: the SQL expression of its value
    # PN only: the normalised first component group and all groups (matching forms).
    norm: str | None = None
    groups: str | None = None
    # TM only: the parsed time column, for range matching.
    time: str | None = None
    computed: str | None = None  # an aggregate: the SQL expression of its value
    # Computed attributes that can be matched: ``EXISTS (...)`` around ``{cond}``, a condition
    # on ``match_column`` (the value of one series or instance).
    match_exists: str | None = None
    match_column: str | None = None

    @property
    def key(self) -> str:
        return f"{self.tag:08X}"


def _attr(keyword: str, level: Level, **kw: str) -> Attr:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return Attr(keyword, int(tag), dictionary_VR(tag), level, **kw)


P, S, R, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

_STUDY_SERIES = "FROM series x WHERE x.study_pk = s.pk"
_STUDY_INSTANCES = "FROM series x JOIN instance y ON y.series_pk = x.pk WHERE x.study_pk = s.pk"
_PATIENT_STUDIES = "FROM study x WHERE x.patient_pk = p.pk"

ATTRIBUTES: tuple[Attr, ...] = (
    # Patient (PS3.4 C.6.1.1.2)
    _attr(
        "PatientName",
        P,
        column="p.patient_name",
        norm="p.patient_name_norm",
        groups="p.patient_name_groups",
    ),
    _attr("PatientID", P, column="p.patient_id"),
    _attr("IssuerOfPatientID", P, column="p.issuer_of_patient_id"),
    _attr("PatientBirthDate", P, column="p.patient_birth_date"),
    _attr("PatientSex", P, column="p.patient_sex"),
    _attr("NumberOfPatientRelatedStudies", P, computed=f"(SELECT count(*) {_PATIENT_STUDIES})"),
    _attr(
        "NumberOfPatientRelatedSeries",
        P,
        computed="(SELECT count(*) FROM study x JOIN series y ON y.study_pk = x.pk"
        " WHERE x.patient_pk = p.pk)",
    ),
    _attr(
        "NumberOfPatientRelatedInstances",
        P,
        computed="(SELECT count(*) FROM study x JOIN series y ON y.study_pk = x.pk"
        " JOIN instance z ON z.series_pk = y.pk WHERE x.patient_pk = p.pk)",
    ),
    # Study (PS3.4 C.6.1.1.3, C.6.2.1.2)
    _attr("StudyInstanceUID", S, column="s.study_instance_uid"),
    _attr("StudyDate", S, column="s.study_date"),
    _attr("StudyTime", S, column="s.study_time", time="s.study_time_t"),
    _attr("AccessionNumber", S, column="s.accession_number"),
    _attr("StudyID", S, column="s.study_id"),
    _attr(
        "ReferringPhysicianName",
        S,
        column="s.referring_physician_name",
        norm="s.referring_physician_name_norm",
        groups="s.referring_physician_name_groups",
    ),
    _attr("StudyDescription", S, column="s.study_description"),
    _attr(
        "ModalitiesInStudy",
        S,
        computed="(SELECT array_agg(DISTINCT x.modality ORDER BY x.modality)"
        f" {_STUDY_SERIES} AND x.modality IS NOT NULL)",
        match_exists=f"EXISTS (SELECT 1 {_STUDY_SERIES} AND ({{cond}}))",
        match_column="x.modality",
    ),
    _attr(
        "SOPClassesInStudy",
        S,
        computed=f"(SELECT array_agg(DISTINCT y.sop_class_uid ORDER BY y.sop_class_uid)"
        f" {_STUDY_INSTANCES})",
        match_exists=f"EXISTS (SELECT 1 {_STUDY_INSTANCES} AND ({{cond}}))",
        match_column="y.sop_class_uid",
    ),
    _attr("NumberOfStudyRelatedSeries", S, computed=f"(SELECT count(*) {_STUDY_SERIES})"),
    _attr("NumberOfStudyRelatedInstances", S, computed=f"(SELECT count(*) {_STUDY_INSTANCES})"),
    # Series (PS3.4 C.6.1.1.4)
    _attr("SeriesInstanceUID", R, column="r.series_instance_uid"),
    _attr("Modality", R, column="r.modality"),
    _attr("SeriesNumber", R, column="r.series_number"),
    _attr("SeriesDescription", R, column="r.series_description"),
    _attr("BodyPartExamined", R, column="r.body_part_examined"),
    _attr("SeriesDate", R, column="r.series_date"),
    _attr("SeriesTime", R, column="r.series_time", time="r.series_time_t"),
    _attr(
        "NumberOfSeriesRelatedInstances",
        R,
        computed="(SELECT count(*) FROM instance x WHERE x.series_pk = r.pk)",
    ),
    # Composite object instance (PS3.4 C.6.1.1.5)
    _attr("SOPInstanceUID", IM, column="i.sop_instance_uid"),
    _attr("SOPClassUID", IM, column="i.sop_class_uid"),
    _attr("InstanceNumber", IM, column="i.instance_number"),
)

BY_TAG: dict[int, Attr] = {a.tag: a for a in ATTRIBUTES}
BY_KEYWORD: dict[str, Attr] = {a.keyword: a for a in ATTRIBUTES}

# The unique key of each level (PS3.4 C.6.1.1.1).
UNIQUE_KEY: dict[Level, Attr] = {
    P: BY_KEYWORD["PatientID"],
    S: BY_KEYWORD["StudyInstanceUID"],
    R: BY_KEYWORD["SeriesInstanceUID"],
    IM: BY_KEYWORD["SOPInstanceUID"],
}

# Keys of the request that are not attributes of an entity: never matched, never looked up.
QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
TIMEZONE_OFFSET = 0x00080201
CONTROL_KEYS = frozenset(
    {QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, RETRIEVE_AE_TITLE, INSTANCE_AVAILABILITY}
)


def header_attr(tag: int, vr: str | None, level: Level) -> Attr:
    """An attribute the catalog has no column for: read from the representative header."""
    try:
        keyword = keyword_for_tag(tag) or f"{tag:08X}"
        known_vr = dictionary_VR(tag)
    except KeyError:  # private or unknown tag: the request's VR, if it gave one
        keyword, known_vr = f"{tag:08X}", vr or "UN"
    return Attr(keyword, tag, vr or known_vr, level)
