"""The query engine's conformance table (issue 4), against the real Postgres: one case per
matching rule x level x information model (PS3.4 C.2.2.2, C.4.1.2.1, C.6), run through
``find`` over a catalog filled with a generated data set whose attributes are known.

Each case's expectation is a predicate over the Python-side data set (``query_dataset``), so the
expected matches are computed from the generated attributes, not written down by hand.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import BasicTextSRStorage, CTImageStorage, MRImageStorage

from edge.common.catalog import PsycopgCatalog
from edge.common.findwire import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    encode_identifier,
)
from edge.query.attributes import UNIQUE_KEY, Level, Model
from edge.query.engine import FindRequest, Wire, find
from edge.query.matching import NOT_MATCHING_SOP_CLASS, UNABLE_TO_PROCESS, QueryError
from edge.query.service import QueryHandler
from tests.integration.query_dataset import (
    BACKSLASH_COMMENT,
    OFFSET_DATETIME,
    Entity,
    Patient,
    Series,
    Study,
    generate,
    in_range,
    instance_dataset,
    moment,
    over_the_wire,
    pn,
    pn_fuzzy,
    records,
    time_in,
    wild,
)

D = generate()
PR, SR = Model.PATIENT_ROOT, Model.STUDY_ROOT
PAT, STU, SER, IMG = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE
NUL = "A\x00B"
OVER_LONG = "A" * 2000


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def loaded(database_url: str) -> str:
    """The module's catalog, filled with the generated data set."""
    async with await PsycopgCatalog.open(database_url, min_size=1, max_size=2) as catalog:
        for record in records(D):
            await catalog.upsert_instance(record)
    return database_url


@pytest.fixture(scope="module")
async def conn(loaded: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(loaded, autocommit=True) as connection:
        yield connection


# --- building requests and reading results --------------------------------------------------


def _scope_entity(level: Level, handle: str) -> Entity:
    """What the unique keys above ``level`` select: a patient for STUDY (Patient Root), a study
    for SERIES, a series for IMAGE."""
    if level is STU:
        return D.patient(handle)
    if level is SER:
        return D.study(handle)
    return D.one_series(handle)


def _unique_value(above: Level, scope: Entity) -> str:
    if above is PAT:
        return scope.patient.id
    if above is STU:
        assert not isinstance(scope, Patient)
        return scope.study.uid
    assert isinstance(scope, Series)
    return scope.uid


def identifier(
    model: Model,
    level: Level,
    keys: dict[str, Any],
    scope: str | None = None,
    charset: str | list[str] | None = None,
) -> dict[str, Any]:
    """The request identifier as the listener hands it over: a dataset (decoded from
    ``charset`` when given) as DICOM JSON. Sequence keys are given as lists of dicts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ACR-NEMA dates and other values meant to be odd
        return _identifier(model, level, keys, scope, charset)


def _identifier(
    model: Model,
    level: Level,
    keys: dict[str, Any],
    scope: str | None,
    charset: str | list[str] | None,
) -> dict[str, Any]:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level.name
    if scope is not None:
        entity = _scope_entity(level, scope)
        for above in model.levels():
            if above.value >= level.value:
                break
            setattr(ds, UNIQUE_KEY[above].keyword, _unique_value(above, entity))
    for keyword, value in keys.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = []
            for spec in value:
                item = Dataset()
                for sub, sub_value in spec.items():
                    setattr(item, sub, sub_value)
                items.append(item)
            setattr(ds, keyword, Sequence(items))
        else:
            setattr(ds, keyword, value)
    if charset is not None:
        ds = over_the_wire(ds)
    return ds.to_json_dict()


def _entities(level: Level) -> list[Any]:
    entities: dict[Level, list[Any]] = {
        PAT: D.patients,
        STU: D.studies,
        SER: D.series,
        IMG: D.instances,
    }
    return entities[level]


def _key(level: Level, entity: Any) -> str:
    return str(entity.id if level is PAT else entity.uid)


def _under(entity: Any, scope: Entity) -> bool:
    if isinstance(scope, Patient):
        return bool(entity.patient is scope)
    if isinstance(scope, Study):
        return bool(entity.study is scope)
    return bool(entity.series is scope)


def matched_keys(level: Level, matches: list[dict[str, Any]]) -> set[str]:
    key = UNIQUE_KEY[level].key
    return {str((m[key].get("Value") or [""])[0]) for m in matches}


async def run(
    conn: psycopg.AsyncConnection[Any],
    model: Model,
    level: Level,
    ident: dict[str, Any],
    *,
    fuzzy: bool = False,
    case_sensitive: bool = False,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    request = FindRequest(model, level, ident, limit=limit, fuzzy=fuzzy)
    page = await find(conn, request, case_sensitive_names=case_sensitive)
    assert page.next_after is None
    await same_on_the_wire(conn, request, page.matches, case_sensitive)
    return page.matches


async def same_on_the_wire(
    conn: psycopg.AsyncConnection[Any],
    request: FindRequest,
    matches: list[dict[str, Any]],
    case_sensitive: bool,
) -> None:
    """C-FIND asks for its identifiers encoded (``wire``): every one must be what the shared
    encoder makes of the DICOM JSON match (in the same character set), or that match itself
    where the encoder does not cover it."""
    requested = [str(c) for c in (request.identifier.get("00080005") or {}).get("Value") or []]
    for syntax in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN):
        wire = Wire(syntax, tuple(requested))
        page = await find(conn, request, case_sensitive_names=case_sensitive, wire=wire)
        assert len(page.matches) == len(matches)
        for encoded, match in zip(page.matches, matches, strict=True):
            expected = encode_identifier(dict(match), requested, syntax)
            assert encoded == (match if expected is None else expected)


# --- the matching table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    rule: str
    model: Model
    level: Level
    keys: dict[str, Any]
    expect: Callable[[Any], bool]
    scope: str | None = None  # patient ID (STUDY), study handle (SERIES), series (IMAGE)
    charset: str | list[str] | None = None
    fuzzy: bool = False
    case_sensitive: bool = False
    # What the case keeps of its scope: "some" (a non-empty proper subset), "none" or "all".
    covers: str = "some"
    name: str | None = None

    def param(self) -> Any:
        label = self.name or ",".join(f"{k}={v}" for k, v in self.keys.items())
        return pytest.param(
            self,
            id=f"{self.rule}-{self.model.value}-{self.level.name}-{label}",
        )


def C(rule: str, model: Model, level: Level, keys: dict[str, Any], expect: Any, **kw: Any) -> Any:
    if expect is _ANY:
        kw.setdefault("covers", "all")
    return Case(rule, model, level, keys, expect, **kw).param()


def _pid(pid: str) -> Callable[[Any], bool]:
    return lambda e: bool(e.patient.id == pid)


def _codes(e: Any, **want: str) -> bool:
    """Some Procedure Code Sequence item of the entity's study matches every key given."""
    names = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
    return any(
        all(wild(dict(zip(names, item, strict=True))[k], v) for k, v in want.items() if v)
        for item in e.study.procedure_codes
    )


def _requests(e: Any, **want: str) -> bool:
    names = ("RequestedProcedureID", "ScheduledProcedureStepID", "AccessionNumber")
    return any(
        all(wild(dict(zip(names, item, strict=True))[k], v) for k, v in want.items() if v)
        for item in e.study.requests
    )


def _pn_cs(stored: str, query: str) -> bool:
    """Case-sensitive PN: the alphabetic group, trailing components may be missing."""
    s = [c.strip() for c in stored.split("=")[0].split("^")]
    q = [c.strip() for c in query.split("^")]
    while s and not s[-1]:
        s.pop()
    return s[: len(q)] == q


A1, C2 = D.study("A1"), D.study("C2")
A1_CT, A1_SR, A2_PR = D.one_series("A1-1"), D.one_series("A1-2"), D.one_series("A2-99")
U1_OT = D.one_series("U1-1")
_ANY = lambda e: True  # noqa: E731
_NONE = lambda e: False  # noqa: E731

CASES = [
    # Single value matching (PS3.4 C.2.2.2.1)
    C("single", PR, PAT, {"PatientID": "P-OBRIEN"}, _pid("P-OBRIEN")),
    C("single", PR, PAT, {"PatientSex": "F"}, lambda p: p.sex == "F"),
    C("single", PR, PAT, {"PatientBirthDate": "19600101"}, lambda p: p.birth_date == "19600101"),
    C("single", PR, STU, {"AccessionNumber": "ACC-3002"}, lambda s: s.accession == "ACC-3002",
      scope="P-OBRIEN"),
    C("single", PR, STU, {"AccessionNumber": "ACC-3002"}, lambda s: s.accession == "ACC-3002",
      scope="P-MUELLER", covers="none", name="other-patient"),
    C("single", SR, STU, {"PatientID": "P-MUELLER"}, _pid("P-MUELLER")),
    C("single", SR, STU, {"StudyDescription": "DX CHEST"}, lambda s: s.description == "DX CHEST"),
    C("single", SR, SER, {"PatientID": "P-MUELLER"}, _pid("P-MUELLER"), scope="A1", covers="all"),
    C("single", SR, SER, {"PatientID": "P-OBRIEN"}, _pid("P-OBRIEN"), scope="A1", covers="none"),
    C("single", SR, SER, {"Modality": "PR"}, lambda r: r.modality == "PR", scope="A2"),
    C("single", PR, SER, {"Modality": "MR"}, lambda r: r.modality == "MR", scope="A2"),
    C("single", SR, SER, {"SeriesNumber": "99"}, lambda r: r.number == 99, scope="A2"),
    C("single", SR, IMG, {"PatientID": "P-MUELLER"}, _pid("P-MUELLER"), scope="A1-1",
      covers="all"),
    C("single", SR, IMG, {"InstanceNumber": "2"}, lambda i: i.number == 2, scope="A1-1"),
    C("single", PR, IMG, {"InstanceNumber": "3"}, lambda i: i.number == 3, scope="A1-1"),
    C("single", SR, IMG, {"SOPClassUID": CTImageStorage}, lambda i: i.sop_class == CTImageStorage,
      scope="A1-1", covers="all"),
    # List of UID matching (C.2.2.2.2), and lists of other values
    C("uid-list", SR, STU, {"StudyInstanceUID": [A1.uid, C2.uid]}, lambda s: s in (A1, C2),
      name="A1,C2"),
    C("uid-list", PR, STU, {"StudyInstanceUID": [A1.uid, C2.uid]}, lambda s: s in (A1, C2),
      scope="P-MUELLER", name="A1,C2"),
    C("uid-list", SR, SER, {"SeriesInstanceUID": [A1_SR.uid, A2_PR.uid]},
      lambda r: r in (A1_SR, A2_PR), scope="A1", name="A1-2,A2-99"),
    C("uid-list", PR, SER, {"SeriesInstanceUID": [A1_CT.uid, A2_PR.uid]},
      lambda r: r in (A1_CT, A2_PR), scope="A2", name="A1-1,A2-99"),
    C("uid-list", SR, IMG, {"SOPInstanceUID": [A1_CT.instances[0].uid, A1_CT.instances[2].uid]},
      lambda i: i.number in (1, 3), scope="A1-1", name="1,3"),
    C("uid-list", PR, IMG, {"SOPInstanceUID": [A1_CT.instances[1].uid, A1_SR.instances[0].uid]},
      lambda i: i.number == 2, scope="A1-1", name="2,other-series"),
    C("uid-list", SR, IMG, {"SOPClassUID": [CTImageStorage, MRImageStorage]},
      lambda i: i.sop_class in (CTImageStorage, MRImageStorage), scope="A1-1", name="CT,MR",
      covers="all"),
    C("value-list", PR, PAT, {"PatientID": "P-MUELLER\\P-OBRIEN"},
      lambda p: p.id in ("P-MUELLER", "P-OBRIEN")),
    C("value-list", PR, PAT, {"PatientName": "müller\\o'brien"},
      lambda p: pn(p.name, "müller") or pn(p.name, "o'brien")),
    C("value-list", SR, STU, {"AccessionNumber": "ACC-1001\\ACC-3001"},
      lambda s: s.accession in ("ACC-1001", "ACC-3001")),
    C("value-list", SR, SER, {"Modality": "CT\\MR"}, lambda r: r.modality in ("CT", "MR"),
      scope="A1"),
    C("value-list", PR, PAT, {"PatientID": "P-OBRIEN\\"}, _pid("P-OBRIEN")),
    # Universal matching (C.2.2.2.3)
    C("universal", PR, PAT, {"PatientName": ""}, _ANY),
    C("universal", PR, PAT, {"PatientID": "*"}, _ANY),
    C("universal", SR, STU, {"PatientName": ""}, _ANY),
    C("universal", SR, STU, {"StudyDescription": "*"}, _ANY),
    C("universal", PR, STU, {"StudyDate": ""}, _ANY, scope="P-MUELLER"),
    C("universal", SR, SER, {"Modality": ""}, _ANY, scope="A1"),
    C("universal", PR, SER, {"SeriesNumber": ""}, _ANY, scope="A2"),
    C("universal", SR, IMG, {"InstanceNumber": ""}, _ANY, scope="A1-1"),
    C("universal", PR, IMG, {"SOPClassUID": ""}, _ANY, scope="A2-1"),
    # Wild card matching (C.2.2.2.4)
    C("wildcard", PR, PAT, {"PatientName": "M?LLER*"}, lambda p: pn(p.name, "M?LLER*")),
    C("wildcard", PR, PAT, {"PatientName": "smith*"}, lambda p: pn(p.name, "smith*")),
    C("wildcard", SR, STU, {"PatientName": "*brien*"}, lambda s: pn(s.patient.name, "*brien*")),
    C("wildcard", SR, STU, {"PatientName": "山*"}, lambda s: pn(s.patient.name, "山*")),
    C("wildcard", SR, STU, {"AccessionNumber": "ACC-10*"}, lambda s: wild(s.accession, "ACC-10*")),
    C("wildcard", SR, STU, {"StudyDescription": "CT*"}, lambda s: wild(s.description, "CT*")),
    C("wildcard", SR, STU, {"StudyDescription": "?R *"}, lambda s: wild(s.description, "?R *")),
    C("wildcard", PR, STU, {"StudyDescription": "*KNEE"}, lambda s: wild(s.description, "*KNEE"),
      scope="P-MUELLER"),
    C("wildcard", SR, SER, {"SeriesDescription": "AXIAL*"},
      lambda r: wild(r.description, "AXIAL*"), scope="A1"),
    C("wildcard", PR, SER, {"SeriesDescription": "AXIAL ?mm"},
      lambda r: wild(r.description, "AXIAL ?mm"), scope="B2"),
    C("wildcard", SR, IMG, {"ImageComments": "*phase"}, lambda i: wild(i.comments, "*phase"),
      scope="A1-1"),
    C("wildcard", SR, STU, {"InstitutionName": "Klinikum K?ln"},
      lambda s: wild(s.institution, "Klinikum K?ln")),
    C("wildcard", SR, STU, {"InstitutionName": "東京*"}, lambda s: wild(s.institution, "東京*")),
    C("wildcard", PR, PAT, {"InstitutionName": "*Clinic"},
      lambda p: wild(p.studies[0].institution, "*Clinic")),
    # %, _ and \ in values match themselves
    C("literal", PR, PAT, {"PatientName": "100%_PURE"}, lambda p: pn(p.name, "100%_PURE")),
    C("literal", PR, PAT, {"PatientName": "100%_PURE*"}, lambda p: pn(p.name, "100%_PURE*")),
    C("literal", PR, PAT, {"PatientID": "ID_100%"}, _pid("ID_100%")),
    C("literal", PR, PAT, {"PatientID": "ID_1*"}, lambda p: wild(p.id, "ID_1*")),
    C("literal", PR, PAT, {"PatientID": "*%*"}, lambda p: wild(p.id, "*%*")),
    C("literal", SR, STU, {"PatientID": "ID_100%"}, _pid("ID_100%")),
    C("literal", SR, STU, {"AccessionNumber": "ACC_50%"}, lambda s: s.accession == "ACC_50%"),
    C("literal", SR, STU, {"InstitutionName": "*100% _test_"},
      lambda s: wild(s.institution, "*100% _test_")),
    C("literal", SR, STU, {"InstitutionName": "Lab 100_ %test%"}, _NONE, covers="none"),
    C("literal", SR, IMG, {"ImageComments": BACKSLASH_COMMENT},
      lambda i: i.comments == BACKSLASH_COMMENT, scope="U1-1", name="LT-with-backslashes"),
    C("literal", SR, IMG, {"ImageComments": "C:\\temp\\*"},
      lambda i: wild(i.comments, "C:\\temp\\*"), scope="U1-1", name="LT-backslash-wildcard"),
    # Range matching (C.2.2.2.5): DA
    C("DA-range", SR, STU, {"StudyDate": "20190101-20201231"},
      lambda s: in_range(s.date, "20190101", "20201231")),
    C("DA-range", PR, STU, {"StudyDate": "20190101-20201231"},
      lambda s: in_range(s.date, "20190101", "20201231"), scope="P-MUELLER"),
    C("DA-range", SR, STU, {"StudyDate": "-20181231"}, lambda s: in_range(s.date, "", "20181231")),
    C("DA-range", SR, STU, {"StudyDate": "20220101-"}, lambda s: in_range(s.date, "20220101", "")),
    C("DA-single", SR, STU, {"StudyDate": "20200101"}, lambda s: s.date == "20200101"),
    C("DA-single", SR, STU, {"StudyDate": "2019.03.15"}, lambda s: s.date == "20190315",
      name="ACR-NEMA"),
    C("DA-range", PR, PAT, {"PatientBirthDate": "19500101-19800101"},
      lambda p: in_range(p.birth_date or None, "19500101", "19800101")),
    C("DA-range", SR, SER, {"SeriesDate": "20220101-"}, lambda r: in_range(r.date, "20220101", ""),
      scope="A2"),
    C("DA-range", PR, SER, {"SeriesDate": "-20211231"}, lambda r: in_range(r.date, "", "20211231"),
      scope="A2"),
    C("DA-header", SR, IMG, {"AcquisitionDate": "20190315"}, lambda i: i.study.date == "20190315",
      scope="A1-1", covers="all"),
    C("DA-header", SR, STU, {"AcquisitionDate": "20200101-20200131"},
      lambda s: in_range(s.date, "20200101", "20200131")),
    C("DA-header", SR, STU, {"ContentDate": "20190101-20191231"},
      lambda s: in_range(s.representative.content_date, "20190101", "20191231"),
      name="one-stored-value-invalid"),
    # Range matching: TM
    C("TM-range", SR, STU, {"StudyTime": "0800-1200"}, lambda s: time_in(s.time, "0800", "1200")),
    C("TM-range", SR, STU, {"StudyTime": "-0100"}, lambda s: time_in(s.time, "", "0100")),
    C("TM-range", SR, STU, {"StudyTime": "2300-"}, lambda s: time_in(s.time, "2300", "")),
    C("TM-single", SR, STU, {"StudyTime": "10"}, lambda s: time_in(s.time, "10", "10")),
    C("TM-single", SR, STU, {"StudyTime": "144510"}, lambda s: time_in(s.time, "144510", "144510")),
    C("TM-single", SR, STU, {"StudyTime": "14:45:10"},
      lambda s: time_in(s.time, "144510", "144510"), name="ACR-NEMA"),
    C("TM-range", PR, STU, {"StudyTime": "0900-"}, lambda s: time_in(s.time, "0900", ""),
      scope="P-YAMADA"),
    C("TM-range", SR, SER, {"SeriesTime": "-0600"}, lambda r: time_in(r.time, "", "0600"),
      scope="A2"),
    C("TM-header", SR, IMG, {"AcquisitionTime": "083100-083200"},
      lambda i: time_in(i.acquisition_datetime[8:14], "083100", "083200"), scope="A1-1"),
    C("TM-header", SR, STU, {"AcquisitionTime": "-0100"},
      lambda s: time_in(s.representative.acquisition_datetime[8:14], "", "0100")),
    # Range matching: StudyDate and StudyTime combined (C.2.2.2.5.1)
    C("DA+TM", SR, STU, {"StudyDate": "20211231-20220101", "StudyTime": "2300-0100"},
      lambda s: in_range(moment(s.date, s.time), "20211231230000", "20220101015959")),
    C("DA+TM", SR, STU, {"StudyDate": "20191231-20200101", "StudyTime": "2300-0100"},
      lambda s: in_range(moment(s.date, s.time), "20191231230000", "20200101015959")),
    C("DA+TM", SR, STU, {"StudyDate": "20200101", "StudyTime": "0000-0100"},
      lambda s: in_range(moment(s.date, s.time), "20200101000000", "20200101015959")),
    C("DA+TM", SR, STU, {"StudyDate": "20200101-", "StudyTime": "0900-"},
      lambda s: in_range(moment(s.date, s.time), "20200101090000", "")),
    C("DA+TM", SR, STU, {"StudyDate": "-20190315", "StudyTime": "-0800"},
      lambda s: in_range(moment(s.date, s.time), "", "20190315080059")),
    C("DA+TM", PR, STU, {"StudyDate": "20200101", "StudyTime": "0900-1100"},
      lambda s: in_range(moment(s.date, s.time), "20200101090000", "20200101115959"),
      scope="P-YAMADA"),
    C("DA+TM", SR, SER, {"StudyDate": "20191231-20200101", "StudyTime": "2300-0100"},
      lambda r: in_range(moment(r.study.date, r.study.time), "20191231230000", "20200101015959"),
      scope="B1", covers="all"),
    # Range matching: DT, on a header attribute
    C("DT-range", SR, IMG, {"AcquisitionDateTime": "20190315083100-20190315083200"},
      lambda i: in_range(i.acquisition_datetime, "20190315083100", "20190315083200"),
      scope="A1-1"),
    C("DT-range", PR, IMG, {"AcquisitionDateTime": "20190315083200-"},
      lambda i: in_range(i.acquisition_datetime, "20190315083200", ""), scope="A1-1"),
    C("DT-range", SR, IMG, {"AcquisitionDateTime": "-201903150831"},
      lambda i: in_range(i.acquisition_datetime, "", "20190315083199"), scope="A1-1"),
    C("DT-range", SR, STU, {"AcquisitionDateTime": "2020-2021"},
      lambda s: in_range(
          s.representative.acquisition_datetime[:14], "20200000000000", "20219999999999")),
    C("DT-single", SR, IMG, {"AcquisitionDateTime": OFFSET_DATETIME},
      lambda i: i.acquisition_datetime == OFFSET_DATETIME, scope="U1-1", name="UTC-offset"),
    # Sequence matching (C.2.2.2.6)
    C("sequence", SR, STU, {"ProcedureCodeSequence": [{"CodeValue": "CTTHX"}]},
      lambda s: _codes(s, CodeValue="CTTHX")),
    C("sequence", SR, STU,
      {"ProcedureCodeSequence": [{"CodeValue": "CTTHX", "CodingSchemeDesignator": "99LOCAL"}]},
      lambda s: _codes(s, CodeValue="CTTHX", CodingSchemeDesignator="99LOCAL")),
    C("sequence", SR, STU,
      {"ProcedureCodeSequence": [{"CodeValue": "CTTHX", "CodingSchemeDesignator": "SCT"}]},
      lambda s: _codes(s, CodeValue="CTTHX", CodingSchemeDesignator="SCT"), covers="none"),
    C("sequence", PR, STU, {"ProcedureCodeSequence": [{"CodingSchemeDesignator": "99LOCAL"}]},
      lambda s: _codes(s, CodingSchemeDesignator="99LOCAL"), scope="P-OBRIEN"),
    C("sequence", SR, STU, {"ProcedureCodeSequence": [{"CodeValue": "", "CodeMeaning": ""}]},
      _ANY, name="empty-item-keys"),
    C("sequence", SR, STU, {"RequestAttributesSequence": [{"RequestedProcedureID": "RP-1002"}]},
      lambda s: _requests(s, RequestedProcedureID="RP-1002")),
    C("sequence", SR, STU,
      {"RequestAttributesSequence": [
          {"RequestedProcedureID": "RP-1002", "ScheduledProcedureStepID": "SPS-2001"}]},
      lambda s: _requests(s, RequestedProcedureID="RP-1002", ScheduledProcedureStepID="SPS-2001"),
      name="same-item"),
    C("sequence", SR, STU,
      {"RequestAttributesSequence": [
          {"RequestedProcedureID": "RP-1001", "ScheduledProcedureStepID": "SPS-2001"}]},
      lambda s: _requests(s, RequestedProcedureID="RP-1001", ScheduledProcedureStepID="SPS-2001"),
      covers="none", name="keys-from-two-items"),
    C("sequence", SR, STU, {"RequestAttributesSequence": [{"AccessionNumber": "ACC-3001"}]},
      lambda s: _requests(s, AccessionNumber="ACC-3001")),
    C("sequence", SR, SER,
      {"RequestAttributesSequence": [{"ScheduledProcedureStepID": "SPS-3001"}]},
      lambda r: _requests(r, ScheduledProcedureStepID="SPS-3001"), scope="A2",
      covers="all"),
    C("sequence", SR, STU, {"ProcedureCodeSequence": [{"CodeValue": "CT*"}]},
      lambda s: _codes(s, CodeValue="CT*"), name="wildcard-in-item"),
    # PN: case-insensitive by default, case-sensitive by setting
    C("PN-case", PR, PAT, {"PatientName": "müller^jörg"}, lambda p: pn(p.name, "müller^jörg")),
    C("PN-case", SR, STU, {"PatientName": "o'brien^sean"}, lambda s: pn(s.patient.name, "o'brien")),
    C("PN-case", SR, STU, {"ReferringPhysicianName": "weiß^anna"},
      lambda s: s.referring is not None and pn(s.referring, "weiß^anna")),
    C("PN-case-sensitive", SR, STU, {"PatientName": "MÜLLER^JÖRG"},
      lambda s: _pn_cs(s.patient.name, "MÜLLER^JÖRG"), case_sensitive=True, covers="none"),
    C("PN-case-sensitive", SR, STU, {"PatientName": "Müller^Jörg"},
      lambda s: _pn_cs(s.patient.name, "Müller^Jörg"), case_sensitive=True),
    C("PN-case-sensitive", PR, PAT, {"PatientName": "Smith^John"},
      lambda p: _pn_cs(p.name, "Smith^John"), case_sensitive=True),
    C("PN-case-sensitive", SR, STU, {"PatientName": "Yamada^Tarou"},
      lambda s: _pn_cs(s.patient.name, "Yamada^Tarou"), case_sensitive=True),
    # PN: components missing from the query
    C("PN-missing", PR, PAT, {"PatientName": "MÜLLER"}, lambda p: pn(p.name, "MÜLLER")),
    C("PN-missing", PR, PAT, {"PatientName": "MULLER"}, lambda p: pn(p.name, "MULLER"),
      covers="none", name="no-accent-folding"),
    C("PN-missing", PR, PAT, {"PatientName": "SMITH"}, lambda p: pn(p.name, "SMITH")),
    C("PN-missing", SR, STU, {"PatientName": "smith^john"},
      lambda s: pn(s.patient.name, "smith^john")),
    C("PN-missing", SR, STU, {"PatientName": "O'BRIEN"}, lambda s: pn(s.patient.name, "O'BRIEN")),
    C("PN-missing", SR, STU, {"ReferringPhysicianName": "WEISS"},
      lambda s: s.referring is not None and pn(s.referring, "WEISS")),
    C("PN-header", SR, STU, {"OperatorsName": "SCHMIDT^KARL"},
      lambda s: pn(s.representative.operators or "", "SCHMIDT^KARL")),
    C("PN-header", SR, SER, {"OperatorsName": "schmidt"},
      lambda r: pn(r.representative.operators or "", "schmidt"), scope="A1"),
    C("PN-header", SR, SER, {"PerformingPhysicianName": "Weiß^Anna"},
      lambda r: pn(r.representative.performing or "", "Weiß^Anna"), scope="A1"),
    # PN: ideographic and phonetic groups
    C("PN-groups", PR, PAT, {"PatientName": "山田^太郎"}, lambda p: pn(p.name, "山田^太郎")),
    C("PN-groups", PR, STU, {"PatientName": "山田^太郎"}, lambda s: pn(s.patient.name, "山田^太郎"),
      scope="P-YAMADA", covers="all"),
    C("PN-groups", SR, STU, {"PatientName": "山田"}, lambda s: pn(s.patient.name, "山田")),
    C("PN-groups", SR, STU, {"PatientName": "やまだ^たろう"},
      lambda s: pn(s.patient.name, "やまだ^たろう")),
    C("PN-groups", SR, STU, {"PatientName": "=山田^太郎"},
      lambda s: pn(s.patient.name, "=山田^太郎")),
    C("PN-groups", PR, PAT, {"PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう"},
      lambda p: pn(p.name, "Yamada^Tarou")),
    C("PN-groups", SR, STU, {"PatientName": "山"}, lambda s: pn(s.patient.name, "山"),
      covers="none", name="part-of-a-component"),
    # Specific Character Set of the request
    C("charset", PR, PAT, {"PatientName": "Müller^Jörg"}, lambda p: pn(p.name, "Müller^Jörg"),
      charset="ISO_IR 100", name="Müller-ISO_IR-100"),
    C("charset", SR, STU, {"PatientName": "Müller^Jörg"},
      lambda s: pn(s.patient.name, "Müller^Jörg"), charset="ISO_IR 192", name="Müller-ISO_IR-192"),
    C("charset", SR, STU, {"PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう"},
      lambda s: pn(s.patient.name, "Yamada^Tarou"), charset=["", "ISO 2022 IR 87"],
      name="Yamada-ISO-2022-IR-87"),
    C("charset", SR, STU, {"PatientName": "=山田^太郎"}, lambda s: pn(s.patient.name, "山田^太郎"),
      charset="ISO_IR 192", name="山田-ISO_IR-192"),
    C("charset", SR, STU, {"InstitutionName": "Klinikum Köln"},
      lambda s: s.institution == "Klinikum Köln", charset="ISO_IR 100", name="Köln-ISO_IR-100"),
    C("charset", SR, STU, {"InstitutionName": "東京病院"}, lambda s: s.institution == "東京病院",
      charset=["", "ISO 2022 IR 87"], name="東京病院-ISO-2022-IR-87"),
    # PN fuzzy matching (an SCP option: every word starts some component)
    C("PN-fuzzy", SR, STU, {"PatientName": "jör"}, lambda s: pn_fuzzy(s.patient.name, "jör"),
      fuzzy=True),
    C("PN-fuzzy", PR, PAT, {"PatientName": "sea"}, lambda p: pn_fuzzy(p.name, "sea"), fuzzy=True),
    C("PN-fuzzy", PR, PAT, {"PatientName": "jo"}, lambda p: pn_fuzzy(p.name, "jo"), fuzzy=True),
    C("PN-fuzzy", SR, STU, {"PatientName": "tar yam"},
      lambda s: pn_fuzzy(s.patient.name, "tar yam"), fuzzy=True),
    C("PN-fuzzy", SR, STU, {"PatientName": "山田"}, lambda s: pn_fuzzy(s.patient.name, "山田"),
      fuzzy=True),
    # Computed attributes as matching keys
    C("computed", SR, STU, {"ModalitiesInStudy": "SR"}, lambda s: "SR" in s.modalities),
    C("computed", SR, STU, {"ModalitiesInStudy": "CT\\MR"},
      lambda s: bool({"CT", "MR"} & set(s.modalities))),
    C("computed", SR, STU, {"ModalitiesInStudy": "?R"},
      lambda s: any(wild(m, "?R") for m in s.modalities)),
    C("computed", PR, STU, {"ModalitiesInStudy": "PR"}, lambda s: "PR" in s.modalities,
      scope="P-MUELLER"),
    C("computed", SR, SER, {"ModalitiesInStudy": "CT"}, lambda r: "CT" in r.study.modalities,
      scope="A1", covers="all"),
    C("computed", SR, STU, {"SOPClassesInStudy": BasicTextSRStorage},
      lambda s: BasicTextSRStorage in s.sop_classes, name="BasicTextSR"),
    C("computed", SR, STU, {"NumberOfStudyRelatedInstances": "2"},
      lambda s: len(s.instances) == 2),
    C("computed", SR, STU, {"ModalitiesInStudy": "X?\\US"},
      lambda s: any(wild(m, "X?") or m == "US" for m in s.modalities), name="list-with-wildcard"),
    # Injection attempts: matched literally
    C("injection", PR, PAT, {"PatientID": "' OR 1=1 --"}, _NONE, covers="none"),
    C("injection", SR, STU, {"PatientName": "' OR 1=1 --"}, _NONE, covers="none"),
    C("injection", SR, STU, {"StudyDescription": "x' OR 1=1 --"},
      lambda s: s.description == "x' OR 1=1 --"),
    C("injection", SR, STU, {"StudyDescription": "*' OR 1=1 --"},
      lambda s: wild(s.description, "*' OR 1=1 --")),
    C("injection", SR, STU, {"StudyInstanceUID": "' OR 1=1 --"}, _NONE, covers="none"),
    C("injection", SR, STU, {"InstitutionName": "') OR true --"}, _NONE, covers="none"),
    C("injection", SR, STU, {"ProcedureCodeSequence": [{"CodeValue": '" || true || "'}]}, _NONE,
      covers="none", name="jsonpath"),
    C("injection", PR, PAT, {"PatientID": "%"}, _NONE, covers="none"),
    C("injection", PR, PAT, {"PatientID": "_"}, _NONE, covers="none"),
    C("injection", PR, PAT, {"PatientName": "%"}, _NONE, covers="none"),
    C("injection", SR, STU, {"PatientName": "_*"}, _NONE, covers="none"),
    C("injection", SR, STU, {"StudyDescription": "A" * 100}, _NONE, covers="none",
      name="over-VR-length"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
async def test_matching(conn: psycopg.AsyncConnection[Any], case: Case) -> None:
    ident = identifier(case.model, case.level, case.keys, case.scope, case.charset)
    candidates = _entities(case.level)
    if case.scope is not None:
        scope = _scope_entity(case.level, case.scope)
        candidates = [e for e in candidates if _under(e, scope)]
    expected = {_key(case.level, e) for e in candidates if case.expect(e)}
    everything = {_key(case.level, e) for e in candidates}
    covers = "none" if not expected else "all" if expected == everything else "some"
    assert covers == case.covers, "the case does not test what it says against this data set"

    matches = await run(
        conn,
        case.model,
        case.level,
        ident,
        fuzzy=case.fuzzy,
        case_sensitive=case.case_sensitive,
    )

    assert matched_keys(case.level, matches) == expected
    assert all(m["00080052"] == {"vr": "CS", "Value": [case.level.name]} for m in matches)


# --- hierarchical rules and values the engine refuses --------------------------------------


def _raw(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def E(
    name: str,
    model: Model,
    level: Level,
    keys: dict[str, Any],
    status: int,
    fragment: str,
    *,
    scope: str | None = None,
    raw: dict[str, Any] | None = None,
) -> Any:
    """A request the engine must refuse with ``status`` and an Error Comment naming the
    problem. ``raw`` elements are added as DICOM JSON (values pydicom would not build)."""
    ident = identifier(model, level, keys, scope)
    ident.update(raw or {})
    return pytest.param(
        model,
        level,
        ident,
        status,
        fragment,
        id=f"{model.value}-{level.name}-{name}",
    )


_A1_UID = A1.uid
ERRORS = [
    # Unique keys of the levels above (PS3.4 C.4.1.2.1): present, single valued, no wildcard
    E("no-StudyInstanceUID", SR, SER, {"Modality": "CT"}, NOT_MATCHING_SOP_CLASS,
      "StudyInstanceUID"),
    E("no-SeriesInstanceUID", SR, IMG, {"StudyInstanceUID": _A1_UID}, NOT_MATCHING_SOP_CLASS,
      "SeriesInstanceUID"),
    E("no-PatientID", PR, STU, {"StudyDate": "20190315"}, NOT_MATCHING_SOP_CLASS, "PatientID"),
    E("no-PatientID", PR, IMG, {"StudyInstanceUID": _A1_UID, "SeriesInstanceUID": A1_CT.uid},
      NOT_MATCHING_SOP_CLASS, "PatientID"),
    E("StudyInstanceUID-list", SR, SER, {"StudyInstanceUID": [_A1_UID, C2.uid]},
      NOT_MATCHING_SOP_CLASS, "single value"),
    E("StudyInstanceUID-wildcard", SR, SER, {"StudyInstanceUID": "1.2.*"},
      NOT_MATCHING_SOP_CLASS, "single value"),
    E("PatientID-wildcard", PR, STU, {"PatientID": "P-M*"}, NOT_MATCHING_SOP_CLASS, "PatientID"),
    # The identifier must fit the model and the level
    E("level-not-in-model", SR, PAT, {"PatientID": "P-MUELLER"}, NOT_MATCHING_SOP_CLASS,
      "not in this model"),
    E("series-key-with-value", SR, STU, {"Modality": "CT"}, NOT_MATCHING_SOP_CLASS,
      "Modality"),
    E("image-key-with-value", SR, SER, {"SOPInstanceUID": "1.2.3"}, NOT_MATCHING_SOP_CLASS,
      "SOPInstanceUID", scope="A1"),
    E("study-key-at-patient-level", PR, PAT, {"StudyDescription": "CT*"},
      NOT_MATCHING_SOP_CLASS, "StudyDescription"),
    E("bad-key", SR, STU, {}, NOT_MATCHING_SOP_CLASS, "bad key", raw={"ZZ": _raw("LO", "x")}),
    E("negative-key", SR, STU, {}, NOT_MATCHING_SOP_CLASS, "bad key",
      raw={"-1": _raw("LO", "x")}),
    E("bad-item-key", SR, STU, {}, UNABLE_TO_PROCESS, "bad item key",
      raw={"00081032": _raw("SQ", {"bad": _raw("SH", "x")})}),
    # Values the engine cannot use
    E("bad-date", SR, STU, {"StudyDate": "20191301"}, UNABLE_TO_PROCESS, "StudyDate"),
    E("bad-date-injection", SR, STU, {"StudyDate": "20190101' OR '1'='1"}, UNABLE_TO_PROCESS,
      "StudyDate"),
    E("bad-range", SR, STU, {"StudyDate": "2019-2020-2021"}, UNABLE_TO_PROCESS, "range"),
    E("range-without-bounds", SR, STU, {"StudyDate": "-"}, UNABLE_TO_PROCESS, "range"),
    E("bad-time", SR, STU, {"StudyTime": "2500"}, UNABLE_TO_PROCESS, "StudyTime"),
    E("bad-time-combined", SR, STU, {"StudyDate": "20200101", "StudyTime": "1099"},
      UNABLE_TO_PROCESS, "StudyTime"),
    E("bad-date-combined", SR, STU, {"StudyDate": "2020010", "StudyTime": "10"},
      UNABLE_TO_PROCESS, "StudyDate"),
    E("bad-number", SR, SER, {}, UNABLE_TO_PROCESS, "SeriesNumber", scope="A1",
      raw={"00200011": _raw("IS", "abc")}),
    E("bad-date-time", SR, IMG, {"AcquisitionDateTime": "2019x"}, UNABLE_TO_PROCESS,
      "AcquisitionDateTime", scope="A1-1"),
    # NUL and over-long values: a clear error, wherever the value goes
    *(
        E(f"{what}-{keyword}", model, level, {}, UNABLE_TO_PROCESS, comment, scope=scope,
          raw={key: _raw(vr, value)})
        for what, value, comment in (("NUL", NUL, "NUL"), ("over-long", OVER_LONG, "longer"))
        for keyword, key, vr, model, level, scope in (
            ("PatientID", "00100020", "LO", PR, PAT, None),
            ("PatientName", "00100010", "PN", SR, STU, None),
            ("StudyInstanceUID", "0020000D", "UI", SR, STU, None),
            ("StudyDate", "00080020", "DA", SR, STU, None),
            ("StudyTime", "00080030", "TM", SR, STU, None),
            ("ModalitiesInStudy", "00080061", "CS", SR, STU, None),
            ("InstitutionName", "00080080", "LO", SR, STU, None),
            ("SeriesInstanceUID", "0020000E", "UI", SR, SER, "A1"),
            ("AcquisitionDateTime", "0008002A", "DT", SR, IMG, "A1-1"),
        )
    ),
    E("NUL-in-sequence-item", SR, STU, {}, UNABLE_TO_PROCESS, "NUL",
      raw={"00081032": _raw("SQ", {"00080100": _raw("SH", NUL)})}),
    E("over-long-in-sequence-item", SR, STU, {}, UNABLE_TO_PROCESS, "longer",
      raw={"00081032": _raw("SQ", {"00080100": _raw("SH", OVER_LONG)})}),
    E("NUL-in-PN-with-wildcard", SR, STU, {}, UNABLE_TO_PROCESS, "NUL",
      raw={"00100010": _raw("PN", {"Alphabetic": "M*\x00"})}),
]  # fmt: skip


@pytest.mark.parametrize(("model", "level", "ident", "status", "fragment"), ERRORS)
async def test_refused(
    conn: psycopg.AsyncConnection[Any],
    model: Model,
    level: Level,
    ident: dict[str, Any],
    status: int,
    fragment: str,
) -> None:
    with pytest.raises(QueryError) as refused:
        await run(conn, model, level, ident)
    assert (hex(refused.value.status), fragment) == (hex(status), fragment)
    assert fragment in refused.value.comment
    assert len(refused.value.comment) <= 64  # Error Comment is LO (PS3.7 C.4.1.1.3)


@pytest.mark.parametrize(
    "payload",
    [
        {"identifier": {}, "limit": 10},  # no level, in neither the payload nor the identifier
        {"model": "WORKLIST", "level": "STUDY", "identifier": {}, "limit": 10},
        {"model": "STUDY", "level": "FRAME", "identifier": {}, "limit": 10},
        {"model": "STUDY", "level": "STUDY", "identifier": [], "limit": 10},
        {"model": "STUDY", "level": "STUDY", "identifier": {}, "limit": "ten"},
    ],
    ids=["no-level", "bad-model", "bad-level", "identifier-not-object", "bad-limit"],
)
def test_malformed_request_is_refused_as_not_matching_the_model(payload: dict[str, Any]) -> None:
    with pytest.raises(QueryError) as refused:
        FindRequest.from_payload(payload)
    assert refused.value.status == NOT_MATCHING_SOP_CLASS
    assert refused.value.comment.startswith("bad query request")


def test_level_is_read_from_the_identifier_when_the_payload_has_none() -> None:
    request = FindRequest.from_payload(
        {"model": "PATIENT", "identifier": identifier(PR, SER, {}, "A1"), "limit": 5}
    )
    assert (request.model, request.level) == (PR, SER)


# --- return keys ------------------------------------------------------------------------------


def element(keyword: str, value: Any) -> dict[str, Any]:
    """What pydicom makes of ``value`` as DICOM JSON: the oracle for returned elements."""
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setattr(ds, keyword, value)
    result: dict[str, Any] = ds.to_json_dict()[f"{ds[keyword].tag:08X}"]
    return result


def header_element(entity: Any, keyword: str) -> dict[str, Any]:
    """An attribute of the entity's representative instance, as the header stores it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untidy instance's ContentDate
        ds = instance_dataset(entity.representative)
    result: dict[str, Any] = ds.to_json_dict()[f"{ds[keyword].tag:08X}"]
    return result


def by_keyword(match: dict[str, Any]) -> dict[str, Any]:
    return {keyword_for_tag(int(key, 16)) or key: value for key, value in match.items()}


def _study_returns(s: Study) -> dict[str, Any]:
    p = s.patient
    return {
        "PatientName": element("PatientName", p.name),
        "PatientID": element("PatientID", p.id),
        "PatientBirthDate": element("PatientBirthDate", p.birth_date),
        "StudyInstanceUID": element("StudyInstanceUID", s.uid),
        "StudyDate": element("StudyDate", s.date),
        "StudyTime": element("StudyTime", s.time),
        "AccessionNumber": element("AccessionNumber", s.accession),
        "StudyDescription": element("StudyDescription", s.description),
        "ReferringPhysicianName": element("ReferringPhysicianName", s.referring),
        "ModalitiesInStudy": element("ModalitiesInStudy", s.modalities),
        "SOPClassesInStudy": element("SOPClassesInStudy", s.sop_classes),
        "NumberOfStudyRelatedSeries": element("NumberOfStudyRelatedSeries", len(s.series)),
        "NumberOfStudyRelatedInstances": element("NumberOfStudyRelatedInstances", len(s.instances)),
        "NumberOfPatientRelatedStudies": element("NumberOfPatientRelatedStudies", len(p.studies)),
        "InstitutionName": header_element(s, "InstitutionName"),
        "QueryRetrieveLevel": element("QueryRetrieveLevel", "STUDY"),
    }


async def test_study_level_returns_typed_computed_and_header_attributes(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    keys = {k: "" for k in _study_returns(A1) if k not in ("QueryRetrieveLevel",)}
    matches = await run(conn, SR, STU, identifier(SR, STU, keys))

    got = {m["0020000D"]["Value"][0]: by_keyword(m) for m in matches}
    assert set(got) == {s.uid for s in D.studies}
    for s in D.studies:
        assert got[s.uid] == _study_returns(s), s.handle


async def test_study_level_returns_sequences_from_the_header(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    keys = {"ProcedureCodeSequence": "", "RequestAttributesSequence": ""}
    matches = await run(conn, SR, STU, identifier(SR, STU, keys))

    for m in matches:
        s = next(s for s in D.studies if s.uid == m["0020000D"]["Value"][0])
        for keyword, tag in (("ProcedureCodeSequence", "00081032"),
                             ("RequestAttributesSequence", "00400275")):  # fmt: skip
            want = header_element(s, keyword) if getattr(s, _SEQ[keyword]) else {"vr": "SQ"}
            assert m[tag] == want, (s.handle, keyword)


_SEQ = {"ProcedureCodeSequence": "procedure_codes", "RequestAttributesSequence": "requests"}


async def test_patient_level_returns_patient_related_counts(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    keys = {
        "PatientName": "",
        "PatientSex": "",
        "NumberOfPatientRelatedStudies": "",
        "NumberOfPatientRelatedSeries": "",
        "NumberOfPatientRelatedInstances": "",
        "InstitutionName": "",
        "StudyDate": "",  # a study key, empty: allowed, not returned
    }
    matches = await run(conn, PR, PAT, identifier(PR, PAT, keys))

    got = {(m["00100020"].get("Value") or [""])[0]: by_keyword(m) for m in matches}
    assert got == {
        p.id: {
            "PatientID": element("PatientID", p.id),
            "PatientName": element("PatientName", p.name),
            "PatientSex": element("PatientSex", p.sex),
            "NumberOfPatientRelatedStudies": element(
                "NumberOfPatientRelatedStudies", len(p.studies)
            ),
            "NumberOfPatientRelatedSeries": element(
                "NumberOfPatientRelatedSeries", sum(len(s.series) for s in p.studies)
            ),
            "NumberOfPatientRelatedInstances": element(
                "NumberOfPatientRelatedInstances", sum(len(s.instances) for s in p.studies)
            ),
            "InstitutionName": header_element(p.studies[0], "InstitutionName"),
            "QueryRetrieveLevel": element("QueryRetrieveLevel", "PATIENT"),
        }
        for p in D.patients
    }


@pytest.mark.parametrize("model", [SR, PR])
async def test_series_level_returns_series_and_study_attributes(
    conn: psycopg.AsyncConnection[Any], model: Model
) -> None:
    keys = {
        "Modality": "",
        "SeriesNumber": "",
        "SeriesDescription": "",
        "SeriesDate": "",
        "SeriesTime": "",
        "NumberOfSeriesRelatedInstances": "",
        "NumberOfStudyRelatedInstances": "",
        "InstitutionName": "",
        "SOPInstanceUID": "",  # an image key, empty: allowed, not returned
    }
    for study in D.studies:
        if model is PR and not study.patient.id:
            continue  # without a Patient ID the study cannot be reached in Patient Root
        matches = await run(conn, model, SER, identifier(model, SER, keys, study.handle))

        got = {m["0020000E"]["Value"][0]: by_keyword(m) for m in matches}
        above = {"StudyInstanceUID": element("StudyInstanceUID", study.uid)}
        if model is PR:
            above["PatientID"] = element("PatientID", study.patient.id)
        assert got == {
            r.uid: {
                **above,
                "SeriesInstanceUID": element("SeriesInstanceUID", r.uid),
                "Modality": element("Modality", r.modality),
                "SeriesNumber": element("SeriesNumber", r.number),
                "SeriesDescription": element("SeriesDescription", r.description),
                "SeriesDate": element("SeriesDate", r.date),
                "SeriesTime": element("SeriesTime", r.time),
                "NumberOfSeriesRelatedInstances": element(
                    "NumberOfSeriesRelatedInstances", len(r.instances)
                ),
                "NumberOfStudyRelatedInstances": element(
                    "NumberOfStudyRelatedInstances", len(study.instances)
                ),
                "InstitutionName": header_element(r, "InstitutionName"),
                "QueryRetrieveLevel": element("QueryRetrieveLevel", "SERIES"),
            }
            for r in study.series
        }, study.handle


async def test_image_level_returns_instance_and_header_attributes(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    keys = {
        "InstanceNumber": "",
        "SOPClassUID": "",
        "AcquisitionDateTime": "",
        "ImageComments": "",
        "Modality": "",
    }
    for series in (A1_CT, A2_PR, U1_OT):
        matches = await run(conn, SR, IMG, identifier(SR, IMG, keys, series.handle))

        got = {m["00080018"]["Value"][0]: by_keyword(m) for m in matches}
        assert got == {
            i.uid: {
                "StudyInstanceUID": element("StudyInstanceUID", i.study.uid),
                "SeriesInstanceUID": element("SeriesInstanceUID", series.uid),
                "Modality": element("Modality", series.modality),
                "SOPInstanceUID": element("SOPInstanceUID", i.uid),
                "InstanceNumber": element("InstanceNumber", i.number),
                "SOPClassUID": element("SOPClassUID", i.sop_class),
                "AcquisitionDateTime": element("AcquisitionDateTime", i.acquisition_datetime),
                "ImageComments": element("ImageComments", i.comments),
                "QueryRetrieveLevel": element("QueryRetrieveLevel", "IMAGE"),
            }
            for i in series.instances
        }, series.handle


@pytest.mark.parametrize(
    ("patient_id", "charset"),
    [
        ("P-MUELLER", "ISO_IR 100"),
        ("P-MUELLER", "ISO_IR 192"),
        ("P-YAMADA", "ISO_IR 192"),
        ("P-YAMADA", ["", "ISO 2022 IR 87"]),
    ],
    ids=["Müller-ISO_IR-100", "Müller-ISO_IR-192", "Yamada-ISO_IR-192", "Yamada-ISO-2022-IR-87"],
)
async def test_response_encodes_in_the_requested_character_set(
    conn: psycopg.AsyncConnection[Any], patient_id: str, charset: str | list[str]
) -> None:
    """The SCP encodes the engine's DICOM JSON in the request's Specific Character Set: names
    and header text survive the round trip unchanged."""
    patient = D.patient(patient_id)
    ident = identifier(
        SR, STU, {"PatientID": patient_id, "PatientName": "", "InstitutionName": ""}, None, charset
    )
    matches = await run(conn, SR, STU, ident)
    assert len(matches) == len(patient.studies)

    for match in matches:
        response = Dataset.from_json(match)
        response.SpecificCharacterSet = charset
        decoded = over_the_wire(response)
        assert str(decoded.PatientName) == patient.name
        assert decoded.InstitutionName == patient.studies[0].institution


async def test_include_all_returns_the_representative_header_without_lower_levels(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    ident = identifier(SR, SER, {}, "A1")
    page = await find(conn, FindRequest(SR, SER, ident, limit=10, include_all=True))

    for match in page.matches:
        assert match["00080080"] == header_element(A1, "InstitutionName")
        assert "00080018" not in match and "00200013" not in match  # image-level keys


# --- paging and the result cap ----------------------------------------------------------------


async def _pages(
    conn: psycopg.AsyncConnection[Any], ident: dict[str, Any], *, limit: int, keyset: bool
) -> list[list[str]]:
    pages: list[list[str]] = []
    after: int | None = None
    while True:
        request = FindRequest(
            SR, STU, ident, limit=limit, after=after, offset=0 if keyset else len(pages) * limit
        )
        page = await find(conn, request)
        pages.append([m["0020000D"]["Value"][0] for m in page.matches])
        if keyset:
            if page.next_after is None:
                return pages
            after = page.next_after
        elif not page.matches or page.next_after is None:
            return pages


@pytest.mark.parametrize("keyset", [True, False], ids=["after", "offset"])
@pytest.mark.parametrize(
    ("keys", "expect"),
    [
        ({}, lambda s: True),
        ({"StudyDate": "20190101-"}, lambda s: in_range(s.date, "20190101", "")),
    ],
    ids=["all", "DA-range"],
)
async def test_paging_visits_every_match_once_in_catalog_order(
    conn: psycopg.AsyncConnection[Any],
    keys: dict[str, Any],
    expect: Callable[[Study], bool],
    keyset: bool,
) -> None:
    ident = identifier(SR, STU, keys)
    whole = [m["0020000D"]["Value"][0] for m in await run(conn, SR, STU, ident)]

    pages = await _pages(conn, ident, limit=3, keyset=keyset)

    assert [uid for page in pages for uid in page] == whole
    assert set(whole) == {s.uid for s in D.studies if expect(s)}
    assert all(len(page) == 3 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 3


@pytest.fixture(scope="module")
async def pool(loaded: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(
        loaded, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    ) as connections:
        yield connections


def _payload(keys: dict[str, Any], limit: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "STUDY",
        "level": "STUDY",
        "identifier": identifier(SR, STU, keys),
        "limit": limit,
        **extra,
    }


async def test_handler_caps_one_page_at_max_results(pool: AsyncConnectionPool[Any]) -> None:
    handler = QueryHandler(pool, max_results=5, case_sensitive_names=False)

    reply = await handler(_payload({}, limit=100))

    assert len(reply["matches"]) == 5 < len(D.studies)
    assert (reply["capped"], reply["next"]) == (True, None)


async def test_handler_cap_counts_what_earlier_pages_returned(
    pool: AsyncConnectionPool[Any],
) -> None:
    handler = QueryHandler(pool, max_results=5, case_sensitive_names=False)

    first = await handler(_payload({}, limit=3))
    second = await handler(_payload({}, limit=3, after=first["next"], returned=3))
    past = await handler(_payload({}, limit=3, offset=5))

    assert (len(first["matches"]), first["capped"]) == (3, False) and first["next"] is not None
    assert (len(second["matches"]), second["capped"], second["next"]) == (2, True, None)
    uids = [m["0020000D"]["Value"][0] for m in first["matches"] + second["matches"]]
    assert len(set(uids)) == 5
    # QIDO pages with offset: the cap is per response (PS3.18 maxResults), so offset 5 goes on.
    assert (len(past["matches"]), past["capped"]) == (3, False)
    assert not {m["0020000D"]["Value"][0] for m in past["matches"]} & set(uids[:5])


async def test_handler_does_not_cap_a_result_that_fits(pool: AsyncConnectionPool[Any]) -> None:
    handler = QueryHandler(pool, max_results=len(D.studies), case_sensitive_names=False)

    everything = await handler(_payload({}, limit=100))
    some = await handler(_payload({"PatientID": "P-MUELLER"}, limit=100))

    assert (len(everything["matches"]), everything["capped"]) == (len(D.studies), False)
    assert (len(some["matches"]), some["capped"], some["next"]) == (2, False, None)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (_payload({}, limit=0), UNABLE_TO_PROCESS),
        (_payload({"PatientID": "P\x00"}, limit=10), UNABLE_TO_PROCESS),
        ({**_payload({}, limit=10), "level": "PATIENT"}, NOT_MATCHING_SOP_CLASS),
        (_payload({"Modality": "CT"}, limit=10), NOT_MATCHING_SOP_CLASS),
    ],
    ids=["limit-0", "NUL", "level-not-in-model", "key-below-level"],
)
async def test_handler_answers_refusals_with_status_and_comment(
    pool: AsyncConnectionPool[Any], payload: dict[str, Any], status: int
) -> None:
    handler = QueryHandler(pool, max_results=10, case_sensitive_names=False)

    reply = await handler(payload)

    assert set(reply) == {"error"}
    assert reply["error"]["status"] == status and reply["error"]["comment"]


async def test_handler_answers_even_when_stored_data_is_untidy(
    pool: AsyncConnectionPool[Any],
) -> None:
    handler = QueryHandler(pool, max_results=10, case_sensitive_names=False)

    reply = await handler(_payload({"ContentDate": "20190101-20191231"}, limit=10))

    assert "matches" in reply or "error" in reply


async def test_case_sensitive_setting_reaches_the_engine(pool: AsyncConnectionPool[Any]) -> None:
    sensitive = QueryHandler(pool, max_results=10, case_sensitive_names=True)
    insensitive = QueryHandler(pool, max_results=10, case_sensitive_names=False)
    payload = _payload({"PatientName": "müller^jörg"}, limit=10)

    assert (await sensitive(payload))["matches"] == []
    assert len((await insensitive(payload))["matches"]) == len(D.patient("P-MUELLER").studies)
