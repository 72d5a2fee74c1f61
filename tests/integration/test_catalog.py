"""PsycopgCatalog and the migrations against the real Postgres on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pydicom.data
import pytest
from psycopg.conninfo import make_conninfo
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from edge.common.catalog import (
    CatalogUnavailable,
    InstanceRecord,
    PsycopgCatalog,
    UnusableInstance,
    UpsertOutcome,
    create_database_if_missing,
    migrate,
    migration_files,
    record_from_dataset,
)
from edge.common.dicom import instance_key
from edge.common.events import InstanceStored
from tests.fixtures.pg import SERVER_URL, drop_database, new_database_url

# pydicom's bundled test files, read from the installed package: get_testdata_files() would also
# try to download the pydicom-data collection, which makes the test slow and network-bound.
BUNDLED_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


def make_record(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    sha256: str = "a" * 64,
    patient_id: str = "P-1",
    patient_name: str | None = "Doe^John",
    **attrs: Any,
) -> InstanceRecord:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = sop or generate_uid()
    ds.PatientID = patient_id
    if patient_name is not None:
        ds.PatientName = patient_name
    ds.Modality = "CT"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return record_from_dataset(
        ds,
        sha256=sha256,
        size=100,
        object_key=instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        calling_ae="TESTSCU",
        received_at=datetime.now(UTC),
    )


async def fetch(database_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(query, params)  # type: ignore[arg-type]
        return await cur.fetchall()


# --- migrations ---------------------------------------------------------------------------


async def test_migrating_a_migrated_database_applies_nothing(database_url: str) -> None:
    assert await migrate(database_url) == []
    versions = await fetch(database_url, "SELECT version FROM schema_migrations ORDER BY 1")
    assert [v for (v,) in versions] == [v for v, _ in migration_files()]
    assert "0001_catalog" in [v for (v,) in versions]


async def test_concurrent_migrations_apply_each_file_once() -> None:
    url = new_database_url("concurrent_migrate")
    assert await create_database_if_missing(url) is True
    try:
        first, second = await asyncio.gather(migrate(url), migrate(url))
        expected = [v for v, _ in migration_files()]
        assert sorted([first, second], key=len) == [[], expected]
        rows = await fetch(url, "SELECT count(*) FROM schema_migrations")
        assert rows == [(len(expected),)]
    finally:
        await drop_database(url)


async def test_create_database_quotes_the_name_and_is_idempotent() -> None:
    url = make_conninfo(SERVER_URL, dbname=f'edge test "{uuid.uuid4().hex[:8]}"; DROP x')
    try:
        assert await create_database_if_missing(url) is True
        assert await create_database_if_missing(url) is False
        assert await migrate(url) == [v for v, _ in migration_files()]
    finally:
        await drop_database(url)


async def test_trigram_index_exists_when_pg_trgm_is_available(database_url: str) -> None:
    available = await fetch(
        database_url, "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'"
    )
    indexes = await fetch(
        database_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'patient'"
    )
    names = {n for (n,) in indexes}
    assert "patient_name_norm_idx" in names
    assert ("patient_name_norm_trgm_idx" in names) == bool(available)


# --- upsert outcomes ----------------------------------------------------------------------


async def test_new_instance_is_inserted_with_its_hierarchy(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    rec = make_record(StudyDate="20240131", SeriesNumber=4, AccessionNumber="A1")
    assert await catalog.upsert_instance(rec) is UpsertOutcome.INSERTED
    got = await catalog.get_instance(rec.sop_instance_uid)
    assert got is not None
    assert got["study_instance_uid"] == rec.study.study_instance_uid
    assert got["series_instance_uid"] == rec.series.series_instance_uid
    assert (got["sha256"], got["size"], got["object_key"]) == (rec.sha256, 100, rec.object_key)
    assert got["header"] == json.loads(json.dumps(rec.header))
    rows = await fetch(
        database_url,
        "SELECT s.study_date, s.accession_number, r.series_number, p.patient_name_norm,"
        " s.first_received_at, s.announced_at"
        " FROM study s JOIN series r ON r.study_pk = s.pk JOIN patient p ON p.pk = s.patient_pk"
        " WHERE s.study_instance_uid = %s",
        rec.study.study_instance_uid,
    )
    (study_date, accession, series_number, name_norm, first_received, announced) = rows[0]
    assert str(study_date) == "2024-01-31"
    assert (accession, series_number, name_norm) == ("A1", 4, "DOE^JOHN")
    assert first_received == rec.received_at
    assert announced is None


async def test_same_bytes_again_are_unchanged_and_write_nothing(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    rec = make_record()
    assert await catalog.upsert_instance(rec) is UpsertOutcome.INSERTED
    timer = (
        "SELECT last_instance_at, updated_at, xmin::text FROM study WHERE study_instance_uid = %s"
    )
    instance = "SELECT updated_at, xmin::text FROM instance WHERE sop_instance_uid = %s"
    before = await fetch(database_url, timer, rec.study.study_instance_uid)
    before_i = await fetch(database_url, instance, rec.sop_instance_uid)
    assert await catalog.upsert_instance(rec) is UpsertOutcome.UNCHANGED
    assert await fetch(database_url, timer, rec.study.study_instance_uid) == before
    assert await fetch(database_url, instance, rec.sop_instance_uid) == before_i
    assert await catalog.count_instances(rec.study.study_instance_uid) == 1


async def test_same_uid_with_new_bytes_is_replaced_and_moves_the_timer(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    rec = make_record(sha256="a" * 64)
    assert await catalog.upsert_instance(rec) is UpsertOutcome.INSERTED
    timer = "SELECT last_instance_at FROM study WHERE study_instance_uid = %s"
    (before,) = (await fetch(database_url, timer, rec.study.study_instance_uid))[0]
    newer = make_record(
        study=rec.study.study_instance_uid,
        series=rec.series.series_instance_uid,
        sop=rec.sop_instance_uid,
        sha256="b" * 64,
        InstanceNumber=9,
    )
    assert await catalog.upsert_instance(newer) is UpsertOutcome.REPLACED
    got = await catalog.get_instance(rec.sop_instance_uid)
    assert got is not None
    assert (got["sha256"], got["instance_number"]) == ("b" * 64, 9)
    (after,) = (await fetch(database_url, timer, rec.study.study_instance_uid))[0]
    assert after > before
    assert await catalog.count_instances(rec.study.study_instance_uid) == 1


async def test_instance_after_announcement_flags_the_study_updated(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    rec = make_record()
    await catalog.upsert_instance(rec)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE study SET announced_at = now() WHERE study_instance_uid = %s",
            (rec.study.study_instance_uid,),
        )
    flag = "SELECT updated_since_announce FROM study WHERE study_instance_uid = %s"
    assert await fetch(database_url, flag, rec.study.study_instance_uid) == [(False,)]
    await catalog.upsert_instance(rec)  # unchanged: no flag
    assert await fetch(database_url, flag, rec.study.study_instance_uid) == [(False,)]
    more = make_record(study=rec.study.study_instance_uid, series=rec.series.series_instance_uid)
    assert await catalog.upsert_instance(more) is UpsertOutcome.INSERTED
    assert await fetch(database_url, flag, rec.study.study_instance_uid) == [(True,)]


async def test_later_instance_without_a_name_keeps_the_known_name(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    patient_id = f"P-{generate_uid()[-12:]}"
    first = make_record(patient_id=patient_id, patient_name="Roe^Jane")
    await catalog.upsert_instance(first)
    await catalog.upsert_instance(make_record(patient_id=patient_id, patient_name=None))
    await catalog.upsert_instance(make_record(patient_id=patient_id, patient_name="Roe^Jane^Q"))
    rows = await fetch(
        database_url, "SELECT patient_name FROM patient WHERE patient_id = %s", patient_id
    )
    assert rows == [("Roe^Jane^Q",)]


async def test_concurrent_instances_of_one_new_study_make_one_row_per_level(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    study, series, patient_id = generate_uid(), generate_uid(), f"P-{generate_uid()[-12:]}"
    records = [
        make_record(study=study, series=series, patient_id=patient_id, InstanceNumber=n)
        for n in range(50)
    ]
    outcomes = await asyncio.gather(*(catalog.upsert_instance(r) for r in records))
    assert outcomes == [UpsertOutcome.INSERTED] * 50
    assert await fetch(
        database_url, "SELECT count(*) FROM patient WHERE patient_id = %s", patient_id
    ) == [(1,)]
    assert await fetch(
        database_url, "SELECT count(*) FROM study WHERE study_instance_uid = %s", study
    ) == [(1,)]
    assert await fetch(
        database_url, "SELECT count(*) FROM series WHERE series_instance_uid = %s", series
    ) == [(1,)]
    assert await catalog.count_instances(study) == 50


async def test_concurrent_duplicates_of_one_instance_insert_it_once(
    catalog: PsycopgCatalog,
) -> None:
    rec = make_record()
    outcomes = await asyncio.gather(*(catalog.upsert_instance(rec) for _ in range(10)))
    assert sorted(outcomes) == sorted([UpsertOutcome.INSERTED] + [UpsertOutcome.UNCHANGED] * 9)


# --- transactions and the outbox ----------------------------------------------------------


def stored_event(rec: InstanceRecord) -> InstanceStored:
    return InstanceStored(
        study_uid=rec.study.study_instance_uid,
        series_uid=rec.series.series_instance_uid,
        sop_instance_uid=rec.sop_instance_uid,
        sop_class_uid=rec.sop_class_uid,
        transfer_syntax_uid=rec.transfer_syntax_uid,
        modality=rec.series.modality,
        object_key=rec.object_key,
        size=rec.size,
        sha256=rec.sha256,
        calling_ae=rec.calling_ae,
    )


async def test_outbox_row_commits_with_the_instance(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    rec = make_record()
    event = stored_event(rec)
    async with catalog.transaction() as tx:
        assert await tx.upsert_instance(rec) is UpsertOutcome.INSERTED
        pk = await tx.add_outbox(event, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    rows = await fetch(
        database_url,
        "SELECT event_type, subject, payload->>'sop_instance_uid', headers ? 'traceparent',"
        " event_id, sequence, published_at FROM outbox WHERE pk = %s",
        pk,
    )
    assert rows == [
        (
            "instance.stored",
            rec.study.study_instance_uid,
            rec.sop_instance_uid,
            True,
            event.id,
            None,
            None,
        )
    ]


async def test_failed_transaction_leaves_neither_instance_nor_outbox_row(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    rec = make_record()
    with pytest.raises(RuntimeError):
        async with catalog.transaction() as tx:
            await tx.upsert_instance(rec)
            await tx.add_outbox(stored_event(rec))
            raise RuntimeError("publish bookkeeping failed")
    assert await catalog.get_instance(rec.sop_instance_uid) is None
    assert await fetch(
        database_url, "SELECT count(*) FROM outbox WHERE subject = %s", rec.study.study_instance_uid
    ) == [(0,)]


# --- real-world headers -------------------------------------------------------------------


def pydicom_test_records() -> tuple[list[InstanceRecord], int]:
    """Records of every pydicom test file that reads and carries usable UIDs, and how many
    were rejected as unusable."""
    records, unusable = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(p for p in BUNDLED_TEST_FILES.rglob("*") if p.is_file()):
            try:
                ds = dcmread(path, stop_before_pixels=True)
                tsuid = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
            except Exception:
                continue  # not a DICOM file pydicom can read
            with open(path, "rb") as fh:
                data = fh.read()
            try:
                rec = record_from_dataset(
                    ds,
                    sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data),
                    object_key=f"test/{path.name}",
                    transfer_syntax_uid=tsuid,
                    calling_ae="PYDICOM",
                    received_at=datetime.now(UTC),
                )
            except UnusableInstance:
                unusable += 1
                continue
            records.append(rec)
    return records, unusable


async def test_pydicom_test_files_round_trip_through_the_catalog(
    catalog: PsycopgCatalog,
) -> None:
    records, unusable = pydicom_test_records()
    assert len(records) >= 40, (len(records), unusable)
    stored: dict[str, str] = {}  # some bundled files are byte-identical copies of others
    for rec in records:
        outcome = await catalog.upsert_instance(rec)
        previous = stored.get(rec.sop_instance_uid)
        expected = (
            UpsertOutcome.INSERTED
            if previous is None
            else UpsertOutcome.UNCHANGED
            if previous == rec.sha256
            else UpsertOutcome.REPLACED
        )
        assert outcome is expected, rec.object_key
        stored[rec.sop_instance_uid] = rec.sha256
        got = await catalog.get_instance(rec.sop_instance_uid)
        assert got is not None
        assert got["sha256"] == rec.sha256
        assert got["header"] == json.loads(json.dumps(rec.header))
    for uid, sha256 in stored.items():
        got = await catalog.get_instance(uid)
        assert got is not None and got["sha256"] == sha256
    assert await catalog.count_instances() >= len(stored)


# --- availability -------------------------------------------------------------------------


async def test_ping_answers_on_a_live_database(catalog: PsycopgCatalog) -> None:
    assert await catalog.ping() is True


async def test_unreachable_database_raises_catalog_unavailable_quickly() -> None:
    url = "postgresql://postgres@127.0.0.1:1/edge_nowhere"
    started = time.monotonic()
    with pytest.raises(CatalogUnavailable):
        await PsycopgCatalog.open(url, connect_timeout=1.0)
    with pytest.raises(CatalogUnavailable):
        await migrate(url)
    with pytest.raises(CatalogUnavailable):
        await create_database_if_missing(url)
    assert time.monotonic() - started < 5


async def test_closed_pool_surfaces_catalog_unavailable(database_url: str) -> None:
    catalog = await PsycopgCatalog.open(database_url, connect_timeout=1.0)
    await catalog.close()
    assert await catalog.ping() is False
    with pytest.raises(CatalogUnavailable):
        await catalog.count_studies()
