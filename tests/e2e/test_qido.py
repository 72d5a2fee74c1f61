"""QIDO-RS end to end: a small data set sent with DCMTK's storescu, searched with the
``dicomweb-client`` package on the listener's HTTP port. Every expectation is computed from the
data set built here (names with accents and in Japanese, dates over five years, several
modalities per study), never copied from an answer."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    MRImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

from edge.cli.devsuite import DevSuite
from tests.e2e.conftest import Client, http_client, web_session
from tests.unit.dicomfiles import add_pixels, make_dataset, write_part10

pytestmark = pytest.mark.e2e

INSTITUTION = "Edge QIDO Hospital"
SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage, "US": UltrasoundImageStorage}
SIZE = {"CT": 8, "MR": 16, "US": 12}


@dataclass(frozen=True)
class SeriesDef:
    modality: str
    number: int
    description: str
    instances: int
    uid: str = field(default_factory=generate_uid)
    sops: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class StudyDef:
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    accession: str
    charset: str | list[str]
    series: tuple[SeriesDef, ...]
    uid: str = field(default_factory=generate_uid)

    @property
    def modalities(self) -> list[str]:
        return sorted({s.modality for s in self.series})

    @property
    def instance_count(self) -> int:
        return sum(s.instances for s in self.series)


def _series(modality: str, number: int, description: str, count: int) -> SeriesDef:
    return SeriesDef(
        modality, number, description, count, sops=tuple(generate_uid() for _ in range(count))
    )


STUDIES = (
    StudyDef(
        "Müller^Jörg", "QIDO-1", "19700101", "M", "20190315", "101500", "ACC-A", "ISO_IR 100",
        (_series("CT", 1, "CHEST", 2), _series("MR", 2, "HEAD", 1)),
    ),
    StudyDef(
        "Yamada^Tarou=山田^太郎=やまだ^たろう", "QIDO-2", "19800202", "M", "20210620", "083000",
        "ACC-B", ["", "ISO 2022 IR 87"], (_series("MR", 1, "BRAIN", 2),),
    ),
    StudyDef(
        "Muller^Hans", "QIDO-3", "19650303", "M", "20230101", "120000", "ACC-C", "ISO_IR 192",
        (_series("CT", 1, "ABDOMEN", 1),),
    ),
    StudyDef(
        "Doe^Jane", "QIDO-4", "19900404", "F", "20180505", "090000", "ACC-D", "ISO_IR 192",
        (_series("CT", 1, "NECK", 1), _series("US", 2, "THYROID", 1), _series("MR", 3, "SPINE", 1)),
    ),
)  # fmt: skip
ALL_SERIES = [(study, series) for study in STUDIES for series in study.series]


def build_files(folder: Path) -> list[Path]:
    files = []
    for study in STUDIES:
        for series in study.series:
            for number, sop in enumerate(series.sops, start=1):
                ds = make_dataset(
                    SOPClassUID=SOP_CLASS[series.modality],
                    SOPInstanceUID=sop,
                    StudyInstanceUID=study.uid,
                    SeriesInstanceUID=series.uid,
                    SpecificCharacterSet=study.charset,
                    PatientName=study.patient_name,
                    PatientID=study.patient_id,
                    PatientBirthDate=study.birth_date,
                    PatientSex=study.sex,
                    StudyDate=study.study_date,
                    StudyTime=study.study_time,
                    AccessionNumber=study.accession,
                    StudyID=study.accession[-1],
                    ReferringPhysicianName="Weiß^Anna",
                    StudyDescription=f"Study {study.accession}",
                    InstitutionName=INSTITUTION,
                    Modality=series.modality,
                    SeriesNumber=series.number,
                    SeriesDescription=series.description,
                    InstanceNumber=number,
                )
                add_pixels(ds, SIZE[series.modality], SIZE[series.modality])
                files.append(write_part10(folder / f"{sop}.dcm", ds))
    return files


@pytest.fixture(scope="module")
def loaded(client: Client, tmp_path_factory: pytest.TempPathFactory) -> Client:
    files = build_files(tmp_path_factory.mktemp("qido"))
    sent = client.storescu(files)
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert client.wait_for_instances(len(files)) == len(files)
    return client


@pytest.fixture(scope="module")
def service(suite: DevSuite) -> str:
    return f"http://127.0.0.1:{suite.http_port}/dicom-web"


@pytest.fixture(scope="module")
def qido(loaded: Client, suite: DevSuite, service: str) -> DICOMwebClient:
    return DICOMwebClient(url=service, session=web_session(suite))


@pytest.fixture(scope="module")
def http(suite: DevSuite) -> Iterator[httpx.Client]:
    with http_client(suite) as client:
        yield client


# --- what the data set says each search should find -------------------------------------------


def values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return [r[tag]["Value"][0] for r in results]


def path_of(url: str) -> str:
    """The path of a Retrieve URL. Its authority is the request's Host header, and
    dicomweb-client sends that without the port."""
    return urlsplit(url).path


def study_uids(results: list[dict[str, Any]]) -> set[str]:
    return set(values(results, "0020000D"))


def where(test: Callable[[StudyDef], bool]) -> set[str]:
    return {s.uid for s in STUDIES if test(s)}


def name_groups(study: StudyDef) -> list[str]:
    return [g.upper() for g in study.patient_name.split("=") if g]


def as_date(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


def in_range(value: str, spec: str) -> bool:
    """DA single value or range matching (PS3.4 C.2.2.2.5), the plain way."""
    low, high = spec.split("-") if "-" in spec else (spec, spec)
    day = as_date(value)
    return (not low or as_date(low) <= day) and (not high or day <= as_date(high))


# --- studies ---------------------------------------------------------------------------------


def test_every_study_carries_the_default_attributes(qido: DICOMwebClient, service: str) -> None:
    results = {r["0020000D"]["Value"][0]: r for r in qido.search_for_studies()}
    assert set(results) == where(lambda s: True)
    for study in STUDIES:
        found = results[study.uid]
        ds = Dataset.from_json(found)
        # PS3.18 Table 10.6.3-3: the attributes of type R and U are always there.
        for keyword in (
            "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
            "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
            "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
        ):  # fmt: skip
            assert keyword in ds, keyword
        assert (ds.StudyDate, ds.StudyTime, ds.PatientID) == (
            study.study_date,
            study.study_time,
            study.patient_id,
        )
        assert sorted(found["00080061"]["Value"]) == study.modalities
        assert ds.NumberOfStudyRelatedSeries == len(study.series)
        assert ds.NumberOfStudyRelatedInstances == study.instance_count
        assert ds.InstanceAvailability == "ONLINE"
        assert path_of(ds.RetrieveURL) == f"/dicom-web/studies/{study.uid}"
        assert str(ds.ReferringPhysicianName) == "Weiß^Anna"
        groups = ("Alphabetic", "Ideographic", "Phonetic")
        expected = dict(zip(groups, study.patient_name.split("="), strict=False))
        assert found["00100010"]["Value"] == [expected]
        assert "00080052" not in found  # QueryRetrieveLevel is C-FIND's, not QIDO's


@pytest.mark.parametrize("pattern", ["Mül*", "mül*", "Mul*", "山田*", "*^J*", "Doe^Jane", "*"])
def test_patient_name_matches_wildcards_case_and_every_component_group(
    qido: DICOMwebClient, pattern: str
) -> None:
    results = qido.search_for_studies(search_filters={"PatientName": pattern})
    expected = where(lambda s: any(fnmatch.fnmatchcase(g, pattern.upper()) for g in name_groups(s)))
    assert expected and study_uids(results) == expected


@pytest.mark.parametrize(
    "spec", ["20190101-20211231", "-20181231", "20210101-", "20190315", "20200101-20201231"]
)
def test_study_date_single_values_and_ranges(qido: DICOMwebClient, spec: str) -> None:
    results = qido.search_for_studies(search_filters={"StudyDate": spec})
    assert study_uids(results) == where(lambda s: in_range(s.study_date, spec))


@pytest.mark.parametrize("modality", ["CT", "MR", "US", "XA"])
def test_modalities_in_study(qido: DICOMwebClient, modality: str) -> None:
    results = qido.search_for_studies(search_filters={"ModalitiesInStudy": modality})
    assert study_uids(results) == where(lambda s: modality in s.modalities)


def test_fuzzy_matching_finds_a_name_by_any_of_its_components(qido: DICOMwebClient) -> None:
    def starts_a_component(study: StudyDef, word: str) -> bool:
        return any(c.startswith(word) for g in name_groups(study) for c in g.split("^"))

    fuzzy = qido.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "jörg"})
    literal = qido.search_for_studies(fuzzymatching=False, search_filters={"PatientName": "jörg"})
    assert study_uids(fuzzy) == where(lambda s: starts_a_component(s, "JÖRG")) != set()
    assert literal == []


def test_includefield_adds_attributes_and_all_adds_every_study_attribute(
    qido: DICOMwebClient,
) -> None:
    study = STUDIES[0]
    match = {"PatientID": study.patient_id}
    plain = qido.search_for_studies(search_filters=match)[0]
    named = qido.search_for_studies(search_filters=match, fields=["InstitutionName", "Modality"])[0]
    everything = qido.search_for_studies(search_filters=match, fields=["all"])[0]
    assert "00080080" not in plain
    assert named["00080080"]["Value"] == [INSTITUTION]
    assert "00080060" not in named  # PS3.18 10.6.3.3.1: series attributes are not returned
    assert everything["00080080"]["Value"] == [INSTITUTION]
    assert everything["00081030"]["Value"] == [f"Study {study.accession}"]
    assert set(plain) <= set(everything)


def test_limit_and_offset_page_through_every_study_once(
    qido: DICOMwebClient, service: str, http: httpx.Client
) -> None:
    pages = [qido.search_for_studies(limit=3, offset=offset) for offset in (0, 3, 6)]
    assert [len(p) for p in pages] == [3, len(STUDIES) - 3, 0]
    seen = [uid for page in pages for uid in values(page, "0020000D")]
    assert sorted(seen) == sorted(s.uid for s in STUDIES)
    assert study_uids(qido.search_for_studies(limit=1, get_remaining=True)) == where(lambda s: True)
    # PS3.18 8.3.4.4.1: a page that leaves matches behind says so.
    first = http.get(f"{service}/studies", params={"limit": 3})
    last = http.get(f"{service}/studies", params={"limit": 3, "offset": 3})
    assert first.headers["warning"].startswith(f"299 {service}: There are additional results")
    assert "warning" not in last.headers
    assert values(first.json(), "00081190")[0].startswith(f"{service}/studies/")


def test_no_match_is_204_without_a_payload(
    loaded: Client, service: str, http: httpx.Client
) -> None:
    response = http.get(f"{service}/studies", params={"PatientID": "NOBODY"})
    assert (response.status_code, response.content) == (204, b"")


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"StudyDate": "notadate"}, "StudyDate: bad date"),
        ({"StudyDat": "20200101"}, "unknown attribute 'StudyDat'"),
        ({"limit": "0"}, "limit must be at least 1"),
        ({"offset": "-3"}, "offset must be an unsigned integer"),
        ({"Modality": "CT"}, "Modality is below the STUDY level"),
    ],
)
def test_a_bad_query_is_a_400_problem_with_the_reason(
    loaded: Client, service: str, http: httpx.Client, params: dict[str, str], reason: str
) -> None:
    response = http.get(f"{service}/studies", params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 400 and problem["title"]
    assert reason in problem["detail"]


# --- series and instances ---------------------------------------------------------------------


def test_series_of_a_study(qido: DICOMwebClient, service: str) -> None:
    study = STUDIES[3]
    results = {r["0020000E"]["Value"][0]: r for r in qido.search_for_series(study.uid)}
    assert set(results) == {s.uid for s in study.series}
    for series in study.series:
        ds = Dataset.from_json(results[series.uid])
        assert (ds.Modality, ds.SeriesNumber, ds.SeriesDescription) == (
            series.modality,
            series.number,
            series.description,
        )
        assert ds.NumberOfSeriesRelatedInstances == series.instances
        assert path_of(ds.RetrieveURL) == f"/dicom-web/studies/{study.uid}/series/{series.uid}"


def test_instances_of_a_series(qido: DICOMwebClient, service: str) -> None:
    study = STUDIES[0]
    series = study.series[0]
    results = qido.search_for_instances(study.uid, series.uid)
    assert sorted(values(results, "00080018")) == sorted(series.sops)
    for found in results:
        ds = Dataset.from_json(found)
        assert ds.SOPClassUID == SOP_CLASS[series.modality]
        assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (SIZE[series.modality],) * 2 + (8,)
        assert ds.InstanceNumber == series.sops.index(ds.SOPInstanceUID) + 1
        assert path_of(ds.RetrieveURL) == (
            f"/dicom-web/studies/{study.uid}/series/{series.uid}/instances/{ds.SOPInstanceUID}"
        )


@pytest.mark.parametrize("modality", ["MR", "US"])
def test_all_series_match_study_and_series_keys(qido: DICOMwebClient, modality: str) -> None:
    results = qido.search_for_series(search_filters={"Modality": modality})
    expected = {series.uid for _, series in ALL_SERIES if series.modality == modality}
    assert set(values(results, "0020000E")) == expected
    study_of = {series.uid: study for study, series in ALL_SERIES}
    for found in results:  # PS3.18 10.6.3.3.2: All Series carry the study's attributes too
        study = study_of[found["0020000E"]["Value"][0]]
        assert found["00100020"]["Value"] == [study.patient_id]
        assert found["0020000D"]["Value"] == [study.uid]
    by_patient = qido.search_for_series(search_filters={"PatientID": STUDIES[3].patient_id})
    assert set(values(by_patient, "0020000E")) == {s.uid for s in STUDIES[3].series}


def test_instances_of_a_study(qido: DICOMwebClient) -> None:
    study = STUDIES[3]
    results = qido.search_for_instances(study.uid)
    modality_of = {sop: s.modality for s in study.series for sop in s.sops}
    assert set(values(results, "00080018")) == set(modality_of)
    for found in results:  # PS3.18 10.6.3.3.3: a study's instances carry their series' keys
        assert found["00080060"]["Value"] == [modality_of[found["00080018"]["Value"][0]]]


def test_all_instances_match_keys_of_every_level(qido: DICOMwebClient) -> None:
    results = qido.search_for_instances(search_filters={"Modality": "CT", "StudyDate": "20190101-"})
    expected = {
        sop
        for study, series in ALL_SERIES
        if series.modality == "CT" and in_range(study.study_date, "20190101-")
        for sop in series.sops
    }
    assert expected and set(values(results, "00080018")) == expected
