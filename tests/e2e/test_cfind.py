"""C-FIND through the running suite: DCMTK findscu and pynetdicom as SCUs, the listener
forwarding to the query service, the catalog filled by C-STORE."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from edge.cli.devsuite import DevSuite, dcmtk, dcmtk_env
from edge.common.dimse import NODELAY_HANDLER
from tests.e2e.conftest import Client, start_suite
from tests.unit.dicomfiles import add_pixels, make_dataset, write_part10

pytestmark = pytest.mark.e2e

FIND_AE = "FINDSCU"
NO_FIND_AE = "STOREONLY"
MAX_RESULTS = 3

# (PatientID, PatientName, charset, StudyDate, modalities of its series)
PATIENTS = [
    ("CF-1", "Smith^John", "ISO_IR 100", "20190105", ["CT", "SR"]),
    ("CF-2", "Smithers^Ann", "ISO_IR 100", "20210611", ["MR"]),
    ("CF-3", "Müller^Jörg", "ISO_IR 100", "20230301", ["CT"]),
    ("CF-4", "Yamada^Tarou=山田^太郎", "ISO_IR 192", "20240229", ["MR", "PR"]),
]


@pytest.fixture(scope="module")
def find_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevSuite, dict]]:
    suite = start_suite(
        tmp_path_factory.mktemp("suite"), extra_env={"EDGE_FIND_MAX_RESULTS": str(MAX_RESULTS)}
    )
    try:
        suite.edge(
            "ae", "add", FIND_AE, "--host", "127.0.0.1", "--port", "11120", "--allow", "find"
        )
        suite.edge(
            "ae", "add", NO_FIND_AE, "--host", "127.0.0.1", "--port", "11121", "--allow", "store"
        )
        folder = tmp_path_factory.mktemp("data")
        files, studies = [], {}
        for pid, name, charset, day, modalities in PATIENTS:
            study = generate_uid()
            studies[pid] = study
            for n, modality in enumerate(modalities, start=1):
                ds = add_pixels(
                    make_dataset(
                        PatientID=pid,
                        PatientName=name,
                        SpecificCharacterSet=charset,
                        StudyInstanceUID=study,
                        StudyDate=day,
                        StudyTime="101500",
                        AccessionNumber=f"A{pid}",
                        Modality=modality,
                        SeriesNumber=n,
                        InstanceNumber=1,
                        InstitutionName="Edge Hospital",
                    ),
                    8,
                    8,
                )
                if modality == "MR":
                    ds.SOPClassUID = MRImageStorage
                files.append(write_part10(folder / f"{ds.SOPInstanceUID}.dcm", ds))
        client = Client(suite)
        sent = client.storescu(files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert client.wait_for_instances(len(files)) == len(files)
        yield suite, studies
    finally:
        suite.stop()


def c_find(
    suite: DevSuite, identifier: Dataset, *, model: str = "STUDY", aet: str = FIND_AE
) -> tuple[list[Dataset], int, str]:
    """(pending identifiers, final status, final error comment) of one C-FIND."""
    sop_class = (
        StudyRootQueryRetrieveInformationModelFind
        if model == "STUDY"
        else PatientRootQueryRetrieveInformationModelFind
    )
    ae = AE(ae_title=aet)
    ae.add_requested_context(sop_class)
    assoc = ae.associate(
        "127.0.0.1", suite.dicom_port, ae_title=suite.ae_title, evt_handlers=[NODELAY_HANDLER]
    )
    assert assoc.is_established
    found: list[Dataset] = []
    final, comment = -1, ""
    try:
        for status, result in assoc.send_c_find(identifier, sop_class):
            if status.Status in (0xFF00, 0xFF01):
                found.append(result)
            else:
                final, comment = int(status.Status), str(status.get("ErrorComment", ""))
    finally:
        assoc.release()
    return found, final, comment


def study_query(**keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def findscu(suite: DevSuite, out: Path, *keys: str) -> list[Dataset]:
    """DCMTK findscu (Study Root) with ``-k`` keys; the responses it extracted (``-X``)."""
    out.mkdir(exist_ok=True)
    args = [arg for key in keys for arg in ("-k", key)]
    result = subprocess.run(
        [dcmtk("findscu"), "-S", "-aet", FIND_AE, "-aec", suite.ae_title, *args, "-X"]
        + ["--output-directory", str(out), "127.0.0.1", str(suite.dicom_port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*"))]


def test_findscu_wildcard_on_patient_name_finds_both_smiths(
    find_suite: tuple[DevSuite, dict], tmp_path: Path
) -> None:
    suite, studies = find_suite
    responses = findscu(
        suite,
        tmp_path / "responses",
        "QueryRetrieveLevel=STUDY",
        "PatientName=SMITH*",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
    )
    got = {str(r.StudyInstanceUID): r for r in responses}
    assert set(got) == {studies["CF-1"], studies["CF-2"]}
    assert list(got[studies["CF-1"]].ModalitiesInStudy) == ["CT", "SR"]
    assert int(got[studies["CF-1"]].NumberOfStudyRelatedInstances) == 2


def test_findscu_date_range_across_years(find_suite: tuple[DevSuite, dict], tmp_path: Path) -> None:
    suite, studies = find_suite
    responses = findscu(
        suite,
        tmp_path / "responses",
        "QueryRetrieveLevel=STUDY",
        "StudyDate=20200101-20231231",
        "StudyInstanceUID",
    )
    assert {str(r.StudyInstanceUID) for r in responses} == {studies["CF-2"], studies["CF-3"]}


def test_patient_root_series_level_needs_the_keys_above(
    find_suite: tuple[DevSuite, dict],
) -> None:
    suite, studies = find_suite
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.PatientID = "CF-4"
    query.StudyInstanceUID = studies["CF-4"]
    query.SeriesInstanceUID = ""
    query.Modality = ""
    found, final, _ = c_find(suite, query, model="PATIENT")
    assert final == 0x0000
    assert sorted(str(f.Modality) for f in found) == ["MR", "PR"]

    del query.StudyInstanceUID
    found, final, comment = c_find(suite, query, model="PATIENT")
    assert (found, final) == ([], 0xA900)
    assert "StudyInstanceUID" in comment


def test_names_come_back_in_a_character_set_the_requester_reads(
    find_suite: tuple[DevSuite, dict],
) -> None:
    suite, _ = find_suite
    latin = study_query(PatientName="MÜLLER*", SpecificCharacterSet="ISO_IR 100")
    [muller], final, _ = c_find(suite, latin)
    assert final == 0x0000
    assert muller.SpecificCharacterSet == "ISO_IR 100"
    assert str(muller.PatientName) == "Müller^Jörg"

    ideographic = study_query(PatientName="山田*", SpecificCharacterSet="ISO_IR 192")
    [yamada], final, _ = c_find(suite, ideographic)
    assert final == 0x0000
    assert yamada.SpecificCharacterSet == "ISO_IR 192"
    assert yamada.PatientName.ideographic == "山田^太郎"


def test_more_matches_than_the_cap_end_with_a_refusal_that_says_why(
    find_suite: tuple[DevSuite, dict],
) -> None:
    suite, _ = find_suite
    assert len(PATIENTS) > MAX_RESULTS
    found, final, comment = c_find(suite, study_query())
    assert len(found) == MAX_RESULTS
    assert final == 0xA700
    assert f"more than {MAX_RESULTS}" in comment


def test_an_ae_without_find_permission_is_refused(find_suite: tuple[DevSuite, dict]) -> None:
    suite, _ = find_suite
    found, final, comment = c_find(suite, study_query(), aet=NO_FIND_AE)
    assert (found, final) == ([], 0x0124)
    assert NO_FIND_AE in comment
