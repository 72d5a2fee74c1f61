"""Bad input gets the right status or rejection, and nothing reaches S3 or the catalog."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import generate_uid

from bench.generate import generate_ct_study
from edge.common.dicom import Status
from tests.e2e.conftest import Client
from tests.e2e.rawscu import send_raw

pytestmark = pytest.mark.e2e


def one_instance(tmp_path: Path, name: str) -> Path:
    [path] = generate_ct_study(tmp_path / name, series=1, per_series=1, rows=64, cols=64)
    return path


def rewrite(path: Path, *, meta_sop_uid: str | None = None, **attributes: object) -> Path:
    """Rewrite ``path`` with changed data set attributes (None deletes) or file meta UID."""
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    meta = FileMetaDataset(ds.file_meta)
    if meta_sop_uid is not None:
        meta.MediaStorageSOPInstanceUID = meta_sop_uid
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=False)
    return path


@pytest.fixture
def unchanged(client: Client):  # type: ignore[no-untyped-def]
    """Asserts after the test that neither the catalog nor the bucket gained anything."""
    before = (client.instance_count(), client.object_count())
    yield
    assert (client.instance_count(), client.object_count()) == before


@pytest.mark.usefixtures("unchanged")
def test_truncated_data_set_is_refused_with_C000(client: Client, tmp_path: Path) -> None:
    path = one_instance(tmp_path, "cut")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])  # ends inside the pixel data
    assert send_raw(path, port=client.suite.dicom_port) == Status.CANNOT_UNDERSTAND


@pytest.mark.usefixtures("unchanged")
def test_missing_sop_instance_uid_is_refused_with_C000(client: Client, tmp_path: Path) -> None:
    path = one_instance(tmp_path, "nouid")
    meta_uid = str(pydicom.dcmread(path).SOPInstanceUID)
    rewrite(path, meta_sop_uid=meta_uid, SOPInstanceUID=None)
    assert send_raw(path, port=client.suite.dicom_port) == Status.CANNOT_UNDERSTAND


@pytest.mark.usefixtures("unchanged")
def test_missing_study_uid_is_refused_with_C000(client: Client, tmp_path: Path) -> None:
    path = rewrite(one_instance(tmp_path, "nostudy"), StudyInstanceUID=None)
    assert send_raw(path, port=client.suite.dicom_port) == Status.CANNOT_UNDERSTAND


@pytest.mark.usefixtures("unchanged")
def test_uid_mismatch_between_command_and_data_set_is_refused_with_A900(
    client: Client, tmp_path: Path
) -> None:
    path = rewrite(one_instance(tmp_path, "mismatch"), meta_sop_uid=generate_uid())
    assert send_raw(path, port=client.suite.dicom_port) == Status.DATASET_DOES_NOT_MATCH


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "bad_uid", ["../../etc/passwd", "1.2.840/../../x", "1.2.abc", "1." + "2" * 70]
)
def test_path_like_or_malformed_study_uid_is_refused_and_nothing_written(
    client: Client, tmp_path: Path, bad_uid: str
) -> None:
    path = rewrite(one_instance(tmp_path, "baduid"), StudyInstanceUID=bad_uid)
    # DCMTK sends it as it is: the refusal must come from us.
    result = client.storescu([path], "-xe")
    assert result.returncode != 0
    assert "Received Store Response (Error: CannotUnderstand)" in result.stdout + result.stderr
    assert send_raw(path, port=client.suite.dicom_port) == Status.INVALID_UID


@pytest.mark.usefixtures("unchanged")
def test_unregistered_calling_ae_is_rejected_at_association(client: Client, tmp_path: Path) -> None:
    result = client.storescu([one_instance(tmp_path, "stranger")], "-xe", aet="STRANGER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr


@pytest.mark.usefixtures("unchanged")
def test_wrong_called_ae_is_rejected(client: Client, tmp_path: Path) -> None:
    path = one_instance(tmp_path, "called")
    assert send_raw(path, port=client.suite.dicom_port, called="NOT-EDGE") is None
    echo = client.dcmtk("echoscu")  # the right called AE still works
    assert echo.returncode == 0, echo.stderr


@pytest.mark.usefixtures("unchanged")
def test_registered_ae_calling_from_another_address_is_rejected(
    client: Client, tmp_path: Path
) -> None:
    client.suite.edge(
        "ae", "add", "ELSEWHERE", "--host", "192.0.2.10", "--port", "104", "--allow", "store"
    )
    result = client.storescu([one_instance(tmp_path, "elsewhere")], "-xe", aet="ELSEWHERE")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr


@pytest.mark.usefixtures("unchanged")
def test_ae_without_store_permission_is_refused_with_0124(client: Client, tmp_path: Path) -> None:
    client.suite.edge(
        "ae", "add", "ECHOONLY", "--host", "127.0.0.1", "--port", "104", "--allow", "echo"
    )
    path = one_instance(tmp_path, "echoonly")
    assert send_raw(path, port=client.suite.dicom_port, calling="ECHOONLY") == Status.NOT_AUTHORIZED


def test_removing_an_ae_takes_effect_at_once(client: Client, tmp_path: Path) -> None:
    client.suite.edge(
        "ae", "add", "SHORTLIVED", "--host", "127.0.0.1", "--port", "104", "--allow", "echo,store"
    )
    assert client.dcmtk("echoscu", aet="SHORTLIVED").returncode == 0
    client.suite.edge("ae", "remove", "SHORTLIVED")
    # ae.changed drops the listener's cached admission; no waiting for its TTL.
    result = client.dcmtk("echoscu", aet="SHORTLIVED")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
