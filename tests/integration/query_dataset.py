"""A generated data set with known attributes for the query conformance tests, and the
Python-side oracle that says what a query over it should match.

Each instance is written in its patient's character set (ISO_IR 100, ISO 2022 IR 87,
ISO_IR 192) and read back, as a header arriving over the network would be, before it is
catalogued. Representative-header attributes (those without a catalog column) are the same on
every instance of a study unless a test needs them to differ.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    XRayAngiographicImageStorage,
    generate_uid,
)

from edge.common.catalog import InstanceRecord, record_from_dataset
from edge.common.dicom import instance_key

SOP_CLASS = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "SR": BasicTextSRStorage,
    "PR": GrayscaleSoftcopyPresentationStateStorage,
    "US": UltrasoundImageStorage,
    "XA": XRayAngiographicImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "OT": SecondaryCaptureImageStorage,
}


def uid(*parts: str) -> str:
    """A UID that is the same on every run, so a failing case can be replayed by hand."""
    return str(generate_uid(entropy_srcs=["edge-query-conformance", *parts]))


# --- the model ------------------------------------------------------------------------------


@dataclass(eq=False)
class Patient:
    id: str
    name: str
    charset: str | list[str]
    birth_date: str
    sex: str
    studies: list[Study] = field(default_factory=list)

    @property
    def patient(self) -> Patient:
        return self


@dataclass(eq=False)
class Study:
    handle: str
    patient: Patient
    date: str | None
    time: str | None
    accession: str
    description: str
    institution: str
    referring: str | None = None
    procedure_codes: list[tuple[str, str, str]] = field(default_factory=list)
    # (RequestedProcedureID, ScheduledProcedureStepID, AccessionNumber) per item
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)

    @property
    def uid(self) -> str:
        return uid("study", self.handle)

    @property
    def study(self) -> Study:
        return self

    @property
    def modalities(self) -> list[str]:
        return sorted({r.modality for r in self.series})

    @property
    def sop_classes(self) -> list[str]:
        return sorted({SOP_CLASS[r.modality] for r in self.series})

    @property
    def instances(self) -> list[Instance]:
        return [i for r in self.series for i in r.instances]

    @property
    def representative(self) -> Instance:
        """The first instance catalogued: where header-only attributes are read from."""
        return self.series[0].instances[0]


@dataclass(eq=False)
class Series:
    handle: str
    study: Study
    modality: str
    number: int
    description: str
    date: str | None
    time: str | None
    instances: list[Instance] = field(default_factory=list)

    @property
    def uid(self) -> str:
        return uid("series", self.handle)

    @property
    def patient(self) -> Patient:
        return self.study.patient

    @property
    def representative(self) -> Instance:
        return self.instances[0]


@dataclass(eq=False)
class Instance:
    series: Series
    number: int
    acquisition_datetime: str
    content_date: str | None
    comments: str | None
    performing: str | None
    operators: str | None

    @property
    def uid(self) -> str:
        return uid("instance", self.series.handle, str(self.number))

    @property
    def study(self) -> Study:
        return self.series.study

    @property
    def patient(self) -> Patient:
        return self.series.study.patient

    @property
    def representative(self) -> Instance:
        return self

    @property
    def sop_class(self) -> str:
        return SOP_CLASS[self.series.modality]


Entity = Patient | Study | Series | Instance


@dataclass
class DataSet:
    patients: list[Patient]

    @property
    def studies(self) -> list[Study]:
        return [s for p in self.patients for s in p.studies]

    @property
    def series(self) -> list[Series]:
        return [r for s in self.studies for r in s.series]

    @property
    def instances(self) -> list[Instance]:
        return [i for r in self.series for i in r.instances]

    def patient(self, patient_id: str) -> Patient:
        return next(p for p in self.patients if p.id == patient_id)

    def study(self, handle: str) -> Study:
        return next(s for s in self.studies if s.handle == handle)

    def one_series(self, handle: str) -> Series:
        return next(r for r in self.series if r.handle == handle)


# --- the generated data ---------------------------------------------------------------------

_PATIENTS = (
    ("P-MUELLER", "Müller^Jörg", "ISO_IR 100", "19600101", "M"),
    ("P-YAMADA", "Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"], "19751224", "M"),
    ("P-OBRIEN", "O'Brien^Sean", "ISO_IR 192", "19821105", "M"),
    ("ID_100%", "100%_PURE^TEST", "ISO_IR 192", "19920229", "O"),
    # Would match "ID_100%" and "100%_PURE" if % and _ were SQL wildcards.
    ("IDX100AB", "100ABCPURE^DECOY", "ISO_IR 192", "19910101", "F"),
    ("P-SMITH", "Smith^John^^^", "ISO_IR 192", "19450704", "M"),
    ("P-SMITHSON", "Smithson^Jane", "ISO_IR 192", "19470808", "F"),
    # Real data is untidy: no Patient ID, an impossible ContentDate, a DT with a UTC offset.
    ("", "Untidy^Record", "ISO_IR 192", "", ""),
)

# handle, patient, date, time, accession, description, institution, referring,
# procedure codes, request attributes, series (modality, number, description, instances[,
# series date, series time])
_STUDIES: tuple[tuple[Any, ...], ...] = (
    (
        "A1", "P-MUELLER", "20190315", "083000", "ACC-1001", "CT THORAX", "Klinikum Köln",
        "Weiß^Anna", [("CTTHX", "99LOCAL", "CT Thorax")],
        [("RP-1001", "SPS-1001", "ACC-1001"), ("RP-1002", "SPS-2001", "ACC-1001")],
        [("CT", 1, "AXIAL 5mm", 3), ("SR", 2, "REPORT", 1)],
    ),
    (
        "A2", "P-MUELLER", "20211231", "233000", "ACC-1002", "MR KNEE", "Klinikum Köln",
        None, [("MRKNE", "99LOCAL", "MR Knee")], [("RP-2001", "SPS-3001", "ACC-1002")],
        [("MR", 1, "SAG T1", 2), ("PR", 99, "PRESENTATION", 1, "20220101", "001000")],
    ),
    (
        "B1", "P-YAMADA", "20200101", "001500", "ACC-2001", "MR BRAIN", "東京病院",
        "Suzuki^Ichiro", [], [], [("MR", 1, "AXIAL FLAIR", 2)],
    ),
    (
        "B2", "P-YAMADA", "20200101", "100000", "ACC-2002", "CT HEAD", "東京病院",
        None, [], [], [("CT", 1, "AXIAL 2mm", 1), ("SR", 2, "REPORT", 1)],
    ),
    (
        "C1", "P-OBRIEN", "20220630", "120000", "ACC-3001", "CT ABDOMEN", "St. James's Hospital",
        "Weiß^Anna", [("CTABD", "99LOCAL", "CT Abdomen")], [("RP-3001", "SPS-4001", "ACC-3001")],
        [("CT", 1, "AXIAL 5mm", 2)],
    ),
    (
        "C2", "P-OBRIEN", "20230228", None, "ACC-3002", "US LIVER", "St. James's Hospital",
        None, [], [], [("US", 1, "LIVER", 1)],
    ),
    (
        "D1", "ID_100%", "20180704", "144510.5", "ACC_50%", "x' OR 1=1 --", "Lab 100% _test_",
        None, [], [], [("CT", 1, "LOW DOSE", 1), ("SR", 2, "REPORT", 1)],
    ),
    (
        "E1", "IDX100AB", "20240115", "090000", "ACCX50YZ", "XA CORONARY", "Decoy Clinic",
        None, [], [], [("XA", 1, "CORONARY", 2)],
    ),
    (
        "F1", "P-SMITH", "20170101", "070000", "ACC-5001", "DX CHEST", "Klinikum Köln",
        None, [], [], [("DX", 1, "PA", 1)],
    ),
    (
        "G1", "P-SMITHSON", "20170102", "070000", "ACC-6001", "DX CHEST", "Klinikum Köln",
        None, [], [], [("DX", 1, "PA", 1)],
    ),
    (
        "U1", "", "20200615", "1015", "ACC-9001", "UNTIDY", "Klinikum Köln",
        None, [], [], [("OT", 1, "SCAN", 2)],
    ),
)  # fmt: skip

_COMMENTS = ("arterial phase", "venous phase", "delayed")
BAD_CONTENT_DATE = "20201399"
BACKSLASH_COMMENT = "C:\\temp\\100%_x"
OFFSET_DATETIME = "20200615101500-0500"


def _acquisition(study_date: str | None, study_time: str | None, number: int) -> str:
    start = datetime.strptime(f"{study_date}{(study_time or '000000')[:6]}", "%Y%m%d%H%M%S")
    return (start + timedelta(minutes=number)).strftime("%Y%m%d%H%M%S")


def _instance(series: Series, n: int) -> Instance:
    study, modality = series.study, series.modality
    untidy = study.handle == "U1"
    comments = None
    if study.handle == "A1" and modality == "CT":
        comments = _COMMENTS[n - 1]
    elif untidy and n == 2:
        comments = BACKSLASH_COMMENT
    return Instance(
        series,
        n,
        OFFSET_DATETIME if untidy and n == 1 else _acquisition(study.date, study.time, n),
        BAD_CONTENT_DATE if untidy and n == 1 else study.date,
        comments,
        performing="Weiß^Anna" if study.handle == "A1" and modality == "CT" else None,
        operators="Schmidt^Karl" if modality == "CT" and study.handle in ("A1", "C1") else None,
    )


def generate() -> DataSet:
    patients = {p[0]: Patient(*p) for p in _PATIENTS}
    for spec in _STUDIES:
        handle, pid, date, time, acc, desc, inst, ref, codes, requests, series_specs = spec
        study = Study(handle, patients[pid], date, time, acc, desc, inst, ref, codes, requests)
        patients[pid].studies.append(study)
        for modality, number, sdesc, count, *when in series_specs:
            sdate, stime = when or (date, time)
            series = Series(f"{handle}-{number}", study, modality, number, sdesc, sdate, stime)
            study.series.append(series)
            series.instances += [_instance(series, n) for n in range(1, count + 1)]
    return DataSet(list(patients.values()))


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _request_item(rp: str, sps: str, accession: str) -> Dataset:
    item = Dataset()
    item.RequestedProcedureID, item.ScheduledProcedureStepID, item.AccessionNumber = (
        rp,
        sps,
        accession,
    )
    return item


def instance_dataset(i: Instance) -> Dataset:
    r, s, p = i.series, i.study, i.patient
    ds = Dataset()
    ds.SpecificCharacterSet = p.charset
    ds.SOPClassUID, ds.SOPInstanceUID = i.sop_class, i.uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = s.uid, r.uid
    if p.id:
        ds.PatientID = p.id
    ds.PatientName = p.name
    ds.PatientBirthDate, ds.PatientSex = p.birth_date, p.sex
    if s.date:
        ds.StudyDate = ds.AcquisitionDate = s.date
    if s.time:
        ds.StudyTime = s.time
    ds.AccessionNumber, ds.StudyDescription = s.accession, s.description
    ds.StudyID = s.handle
    ds.InstitutionName = s.institution
    if s.referring:
        ds.ReferringPhysicianName = s.referring
    if s.procedure_codes:
        ds.ProcedureCodeSequence = Sequence([_code_item(*c) for c in s.procedure_codes])
    if s.requests:
        ds.RequestAttributesSequence = Sequence([_request_item(*q) for q in s.requests])
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = r.modality, r.number, r.description
    if r.date:
        ds.SeriesDate = r.date
    if r.time:
        ds.SeriesTime = r.time
    ds.InstanceNumber = i.number
    ds.AcquisitionDateTime = i.acquisition_datetime
    ds.AcquisitionTime = i.acquisition_datetime[8:14]
    if i.content_date:
        ds.ContentDate = i.content_date
    if i.comments:
        ds.ImageComments = i.comments
    if i.performing:
        ds.PerformingPhysicianName = i.performing
    if i.operators:
        ds.OperatorsName = i.operators
    return ds


def over_the_wire(ds: Dataset) -> Dataset:
    """``ds`` encoded in its Specific Character Set and decoded again."""
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    return dcmread(io.BytesIO(buffer.getvalue()), force=True)


def records(data: DataSet) -> Iterator[InstanceRecord]:
    for i in data.instances:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the untidy values are meant to be untidy
            ds = over_the_wire(instance_dataset(i))
        yield record_from_dataset(
            ds,
            sha256=f"{i.number:064d}",
            size=100,
            object_key=instance_key(i.study.uid, i.series.uid, i.uid),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            calling_ae="CONFORMANCE",
            received_at=datetime.now(UTC),
        )


# --- the oracle: what the issue says each rule matches --------------------------------------


def components(group: str) -> list[str]:
    comps = [c.strip().upper() for c in group.split("^")]
    while comps and not comps[-1]:
        comps.pop()
    return comps


def _wild(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.S)


def wild(value: str | None, pattern: str) -> bool:
    """PS3.4 C.2.2.2.4: ``*`` any sequence, ``?`` one character, everything else literal."""
    return value is not None and _wild(pattern).fullmatch(value) is not None


def pn(stored: str, query: str) -> bool:
    """PN matching: case-insensitive, any component group, components missing at the end of the
    query match anything; with wildcards, the whole normalised group must match."""
    query_groups = [g for g in query.split("=") if g.strip("^ ")]
    q = components(query_groups[0])
    for group in stored.split("="):
        s = components(group)
        if not s:
            continue
        if "*" in query or "?" in query:
            if wild("^".join(s), "^".join(q)):
                return True
        elif s[: len(q)] == q:
            return True
    return False


def pn_fuzzy(stored: str, query: str) -> bool:
    """Fuzzy: every word of the query starts some component of one group."""
    words = [w for w in re.split(r"[\^ =]+", query.upper()) if w]
    for group in stored.split("="):
        comps = [c for c in re.split(r"[\^ ]+", group.upper()) if c]
        if comps and all(any(c.startswith(w) for c in comps) for w in words):
            return True
    return False


def in_range(value: str | None, low: str, high: str) -> bool:
    """An inclusive range of fixed-width DA/DT text; an empty bound is open."""
    if value is None:
        return False
    return (not low or value >= low) and (not high or value <= high)


def seconds(tm: str | None) -> float | None:
    if not tm:
        return None
    whole, _, frac = tm.partition(".")
    whole = whole.ljust(6, "0")
    return int(whole[:2]) * 3600 + int(whole[2:4]) * 60 + int(whole[4:6]) + float(f"0.{frac or 0}")


def time_in(tm: str | None, low: str, high: str) -> bool:
    """TM range: a partial bound covers its whole hour or minute."""
    t = seconds(tm)
    if t is None:
        return False
    lo = seconds(low) if low else 0.0
    hi = seconds(high) if high else 86400.0
    assert lo is not None and hi is not None
    hi += {2: 3600, 4: 60}.get(len(high), 1) if high and "." not in high else 0
    return lo <= t < hi if high else lo <= t


def moment(date: str | None, time: str | None) -> str | None:
    """A study's date and time as YYYYMMDDHHMMSS text (no time: midnight)."""
    if date is None:
        return None
    return date + (time or "000000")[:6].ljust(6, "0")
