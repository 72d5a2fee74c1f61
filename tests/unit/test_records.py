"""record_from_dataset on hand-built headers: what the catalog keeps and what it refuses."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest
from dicomfiles import make_dataset
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from edge.common.catalog import (
    InMemoryCatalog,
    UnusableInstance,
    UpsertOutcome,
    normalise_person_name,
    record_from_dataset,
)
from edge.common.events import InstanceStored

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

RECEIVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def set_raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> None:
    """Put a value as a file would deliver it: unvalidated bytes, converted on first access."""
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def record(ds: Dataset, sha256: str = "a" * 64) -> Any:
    return record_from_dataset(
        ds,
        sha256=sha256,
        size=1234,
        object_key="studies/1/series/2/instances/3.dcm",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        calling_ae="MODALITY",
        received_at=RECEIVED,
    )


def test_record_carries_each_level_and_the_object() -> None:
    ds = make_dataset(
        StudyDate="20240131",
        StudyTime="101500",
        AccessionNumber="ACC1",
        SeriesNumber=3,
        InstanceNumber=7,
        PatientBirthDate="19800229",
        PatientSex="M",
    )
    rec = record(ds)
    assert rec.study.study_instance_uid == ds.StudyInstanceUID
    assert rec.series.series_instance_uid == ds.SeriesInstanceUID
    assert rec.sop_instance_uid == ds.SOPInstanceUID
    assert rec.sop_class_uid == CTImageStorage
    assert rec.study.study_date == date(2024, 1, 31)
    assert rec.study.study_time == "101500"
    assert rec.study.accession_number == "ACC1"
    assert rec.series.series_number == 3
    assert rec.series.modality == "CT"
    assert rec.instance_number == 7
    assert rec.patient.patient_birth_date == date(1980, 2, 29)
    assert rec.patient.patient_sex == "M"
    assert rec.patient.identity_key == "P-1\\"
    assert (rec.sha256, rec.size, rec.calling_ae) == ("a" * 64, 1234, "MODALITY")
    assert rec.header["0020000D"] == {"vr": "UI", "Value": [ds.StudyInstanceUID]}


@pytest.mark.parametrize("raw", [b"20231340", b"19810229", b"abcdefgh", b"2023", b"20230101-"])
def test_bad_dates_become_none_and_never_raise(raw: bytes) -> None:
    ds = make_dataset()
    set_raw(ds, "StudyDate", "DA", raw)
    set_raw(ds, "PatientBirthDate", "DA", raw)
    set_raw(ds, "SeriesDate", "DA", raw)
    rec = record(ds)
    assert rec.study.study_date is None
    assert rec.patient.patient_birth_date is None
    assert rec.series.series_date is None


def test_acr_nema_dotted_date_is_read() -> None:
    ds = make_dataset()
    set_raw(ds, "StudyDate", "DA", b"1995.03.07")
    assert record(ds).study.study_date == date(1995, 3, 7)


def test_wrong_vr_numbers_become_none_and_leave_the_header() -> None:
    ds = make_dataset()
    set_raw(ds, "SeriesNumber", "IS", b"abc ")
    set_raw(ds, "InstanceNumber", "IS", b"99999999999 ")
    rec = record(ds)
    assert rec.series.series_number is None
    assert rec.instance_number is None
    assert "00200011" not in rec.header


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_missing_uid_is_unusable(keyword: str) -> None:
    ds = make_dataset()
    delattr(ds, keyword)
    with pytest.raises(UnusableInstance, match=keyword):
        record(ds)


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "1.2.3/../4", "1.2.3 4", "1." + "2" * 70, "1.2.x", "1..2"]
)
@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_non_conformant_uid_is_unusable(keyword: str, bad: str) -> None:
    ds = make_dataset()
    set_raw(ds, keyword, "UI", bad.encode())
    with pytest.raises(UnusableInstance, match=keyword):
        record(ds)


def test_missing_sop_class_is_unusable() -> None:
    ds = make_dataset()
    del ds.SOPClassUID
    with pytest.raises(UnusableInstance, match="SOPClassUID"):
        record(ds)


def test_unusable_instance_is_a_value_error() -> None:
    assert issubclass(UnusableInstance, ValueError)


def test_bulk_data_becomes_a_uri_and_is_not_inlined() -> None:
    ds = make_dataset()
    ds.add_new(0x00420011, "OB", b"\x01" * 4000)  # Encapsulated Document
    ds.add_new(0x00091010, "OB", b"\x02" * 16)  # small private binary: stays inline
    ds.add_new(0x7FE00010, "OB", b"\x03" * 8)  # Pixel Data, however small
    header = record(ds).header
    assert header["00420011"] == {"vr": "OB", "BulkDataURI": "bulkdata/00420011"}
    assert "InlineBinary" in header["00091010"]
    assert "7FE00010" not in header
    assert len(json.dumps(header)) < 2000


def test_pixel_data_in_nested_icon_is_dropped() -> None:
    icon = Dataset()
    icon.Rows = 2
    icon.add_new(0x7FE00010, "OB", b"\x00" * 4)
    ds = make_dataset(IconImageSequence=[icon])
    item = record(ds).header["00880200"]["Value"][0]
    assert "7FE00010" not in item
    assert item["00280010"]["Value"] == [2]


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Doe^John", "DOE^JOHN"),
        ("doe^john^^^", "DOE^JOHN"),
        (" Doe ^ John ", "DOE^JOHN"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "YAMADA^TAROU"),
        ("=山田^太郎", "山田^太郎"),
        ("Doe^John\\Roe^Jane", "DOE^JOHN"),
        ("^^^^", None),
        ("", None),
        (None, None),
    ],
)
def test_person_name_normalisation(raw: str | None, norm: str | None) -> None:
    assert normalise_person_name(raw) == norm


def test_person_name_keeps_raw_and_normalised_forms() -> None:
    ds = make_dataset(PatientName="van der Berg^Anna^^Dr", ReferringPhysicianName="Who^Doctor")
    rec = record(ds)
    assert rec.patient.patient_name == "van der Berg^Anna^^Dr"
    assert rec.patient.patient_name_norm == "VAN DER BERG^ANNA^^DR"
    assert rec.study.referring_physician_name_norm == "WHO^DOCTOR"


def test_empty_patient_name_and_id_give_a_patient_per_study() -> None:
    ds = make_dataset()
    set_raw(ds, "PatientName", "PN", b"")
    set_raw(ds, "PatientID", "LO", b"")
    rec = record(ds)
    assert rec.patient.patient_name is None
    assert rec.patient.patient_name_norm is None
    assert rec.patient.identity_key == f"\\study\\{ds.StudyInstanceUID}"


def test_non_ascii_names_are_decoded_by_character_set() -> None:
    ds = make_dataset()
    set_raw(ds, "SpecificCharacterSet", "CS", b"ISO_IR 100")
    set_raw(ds, "PatientName", "PN", "Müller^Jörg".encode("latin-1"))
    rec = record(ds)
    assert rec.patient.patient_name == "Müller^Jörg"
    assert rec.patient.patient_name_norm == "MÜLLER^JÖRG"
    assert rec.header["00100010"]["Value"] == [{"Alphabetic": "Müller^Jörg"}]


def test_nul_characters_never_reach_the_header_or_columns() -> None:
    ds = make_dataset()
    set_raw(ds, "StudyDescription", "LO", b"head\x00neck")
    set_raw(ds, "PatientName", "PN", b"Doe\x00^John")
    rec = record(ds)
    assert "\x00" not in json.dumps(rec.header, ensure_ascii=False)
    assert "\\u0000" not in json.dumps(rec.header)
    assert rec.study.study_description == "headneck"
    assert rec.patient.patient_name_norm == "DOE^JOHN"


def test_non_finite_floats_do_not_break_json() -> None:
    ds = make_dataset()
    ds.add_new(0x00181318, "DS", "NaN")  # dB/dt: real data has carried NaN here
    ds.add_new(0x00189327, "FD", float("inf"))  # Table Position
    json.dumps(record(ds).header, allow_nan=False)


async def test_in_memory_catalog_reports_inserted_unchanged_replaced() -> None:
    catalog = InMemoryCatalog()
    ds = make_dataset()
    assert await catalog.upsert_instance(record(ds, "a" * 64)) is UpsertOutcome.INSERTED
    assert await catalog.upsert_instance(record(ds, "a" * 64)) is UpsertOutcome.UNCHANGED
    assert await catalog.upsert_instance(record(ds, "b" * 64)) is UpsertOutcome.REPLACED
    got = await catalog.get_instance(ds.SOPInstanceUID)
    assert got is not None and got["sha256"] == "b" * 64
    assert await catalog.count_instances(ds.StudyInstanceUID) == 1
    assert await catalog.count_studies() == 1


async def test_in_memory_transaction_rolls_back_with_its_outbox_row() -> None:
    catalog = InMemoryCatalog()
    ds = make_dataset()
    with pytest.raises(RuntimeError):
        async with catalog.transaction() as tx:
            await tx.upsert_instance(record(ds))
            await tx.add_outbox(stored_event(ds.StudyInstanceUID))
            raise RuntimeError("handler failed after writing")
    assert await catalog.count_instances() == 0
    assert catalog.outbox == []


def stored_event(study_uid: str) -> InstanceStored:
    return InstanceStored(
        study_uid=study_uid,
        series_uid="1.2.3",
        sop_instance_uid="1.2.3.4",
        sop_class_uid=CTImageStorage,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        object_key="studies/1/series/1.2.3/instances/1.2.3.4.dcm",
        size=1,
        sha256="a" * 64,
        calling_ae="TEST",
    )


def test_bad_value_in_a_sequence_loses_that_value_only() -> None:
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    set_raw(item, "ReferencedSOPInstanceUID", "UI", b"1.2.abc")
    ds = make_dataset(ReferencedImageSequence=[item])
    got = record(ds).header["00081140"]["Value"][0]
    assert got == {"00081150": {"vr": "UI", "Value": [CTImageStorage]}}
