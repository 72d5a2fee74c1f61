"""The query conformance table (tests/integration/test_query_conformance.py) again, end to end:
the same generated data set sent by C-STORE to a running suite, and every case that C-FIND can
express (not fuzzy matching, which is QIDO's, nor the case-sensitive setting) asked through
pynetdicom as an SCU; the matches must be the ones the oracle expects."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from edge.cli.devsuite import DevSuite
from edge.common.dimse import NODELAY_HANDLER
from edge.query.attributes import Model
from tests.e2e.conftest import Client, start_suite
from tests.integration.query_dataset import instance_dataset
from tests.integration.test_query_conformance import (
    CASES,
    Case,
    D,
    _entities,
    _key,
    _scope_entity,
    _under,
    identifier,
)
from tests.unit.dicomfiles import write_part10

# The table sends values meant to be odd (ACR-NEMA dates, wildcards in CS, injection attempts).
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::UserWarning")]

FIND_AE = "CONFORMSCU"
SOP_CLASS = {
    Model.PATIENT_ROOT: PatientRootQueryRetrieveInformationModelFind,
    Model.STUDY_ROOT: StudyRootQueryRetrieveInformationModelFind,
}
DIMSE_CASES = [
    param for param in CASES if not param.values[0].fuzzy and not param.values[0].case_sensitive
]


@pytest.fixture(scope="module")
def loaded_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSuite]:
    suite = start_suite(tmp_path_factory.mktemp("suite"))
    try:
        suite.edge(
            "ae", "add", FIND_AE, "--host", "127.0.0.1", "--port", "11122", "--allow", "find"
        )
        folder = tmp_path_factory.mktemp("conformance-data")
        files: list[Path] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the untidy values are meant to be untidy
            for i in D.instances:
                files.append(write_part10(folder / f"{i.uid}.dcm", instance_dataset(i)))
        client = Client(suite)
        sent = client.storescu(files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert client.wait_for_instances(len(files)) == len(files)
        yield suite
    finally:
        suite.stop()


@pytest.fixture(scope="module")
def association(loaded_suite: DevSuite) -> Iterator[Association]:
    ae = AE(ae_title=FIND_AE)
    for sop_class in SOP_CLASS.values():
        ae.add_requested_context(sop_class)
    assoc = ae.associate(
        "127.0.0.1",
        loaded_suite.dicom_port,
        ae_title=loaded_suite.ae_title,
        evt_handlers=[NODELAY_HANDLER],
    )
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def request_dataset(case: Case) -> Dataset:
    ident = identifier(case.model, case.level, case.keys, case.scope, case.charset)
    ds = Dataset.from_json(ident)
    if "SpecificCharacterSet" not in ds and not str(ident).isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"  # values a default repertoire cannot carry
    return ds


@pytest.mark.parametrize("case", DIMSE_CASES)
def test_c_find_matches_what_the_engine_table_expects(association: Association, case: Case) -> None:
    candidates = _entities(case.level)
    if case.scope is not None:
        scope = _scope_entity(case.level, case.scope)
        candidates = [e for e in candidates if _under(e, scope)]
    expected = {_key(case.level, e) for e in candidates if case.expect(e)}

    found: set[str] = set()
    final: Any = None
    for status, result in association.send_c_find(request_dataset(case), SOP_CLASS[case.model]):
        if status.Status == 0xFF00:
            keyword = {
                "PATIENT": "PatientID",
                "STUDY": "StudyInstanceUID",
                "SERIES": "SeriesInstanceUID",
                "IMAGE": "SOPInstanceUID",
            }[case.level.name]
            found.add(str(result.get(keyword, "")))
        else:
            final = int(status.Status)
    assert final == 0x0000
    assert found == expected
