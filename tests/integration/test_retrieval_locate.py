"""retrieval.locate against the real Postgres: WADO-style and Q/R-style requests, order, paging,
headers, and errors answered rather than raised."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from edge.common.catalog import PsycopgCatalog, record_from_dataset
from edge.common.dicom import instance_key
from edge.retrieval.service import LocateHandler
from tests.unit.dicomfiles import make_dataset

PATIENT = "LOC-1"
STUDY = generate_uid()
OTHER_STUDY = generate_uid()
SERIES = [generate_uid(), generate_uid()]
# Series 0: instances numbered 3, 1, 2 (catalogued in that order); series 1: 1, unnumbered.
LAYOUT = [(SERIES[0], 3), (SERIES[0], 1), (SERIES[0], 2), (SERIES[1], None), (SERIES[1], 1)]


def _record(study: str, series: str, number: int | None, patient: str = PATIENT) -> Any:
    ds = make_dataset(StudyInstanceUID=study, SeriesInstanceUID=series, PatientID=patient)
    if number is not None:
        ds.InstanceNumber = number
    sop = str(ds.SOPInstanceUID)
    return record_from_dataset(
        ds,
        sha256=f"{number or 0:064x}",
        size=1000 + (number or 0),
        object_key=instance_key(study, series, sop),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        calling_ae="TEST",
        received_at=datetime.now(UTC),
    )


@pytest.fixture(scope="module")
async def handler(database_url: str) -> AsyncIterator[tuple[LocateHandler, list[Any]]]:
    records = [_record(STUDY, series, number) for series, number in LAYOUT]
    records.append(_record(OTHER_STUDY, generate_uid(), 1, patient="LOC-2"))
    async with await PsycopgCatalog.open(database_url, min_size=1, max_size=2) as catalog:
        for record in records:
            await catalog.upsert_instance(record)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    try:
        yield LocateHandler(pool, default_limit=100, max_limit=1000), records
    finally:
        await pool.close()


def _qr(level: str, model: str = "STUDY", **keys: Any) -> dict[str, Any]:
    tags = {
        "PatientID": ("00100020", "LO"),
        "StudyInstanceUID": ("0020000D", "UI"),
        "SeriesInstanceUID": ("0020000E", "UI"),
        "SOPInstanceUID": ("00080018", "UI"),
        "PatientName": ("00100010", "PN"),
    }
    identifier = {"00080052": {"vr": "CS", "Value": [level]}}
    for keyword, value in keys.items():
        tag, vr = tags[keyword]
        values = value if isinstance(value, list) else [value]
        identifier[tag] = {"vr": vr, "Value": values} if value is not None else {"vr": vr}
    return {"level": level, "model": model, "identifier": identifier}


def _sops(reply: dict[str, Any]) -> list[str]:
    return [i["sop"] for i in reply["instances"]]


async def test_study_comes_back_ordered_by_series_then_instance_number(handler: Any) -> None:
    locate, records = handler
    reply = await locate({"study": STUDY, "series": None, "sop": None, "with_header": False})
    r = records
    assert _sops(reply) == [
        r[1].sop_instance_uid,
        r[2].sop_instance_uid,
        r[0].sop_instance_uid,
        r[4].sop_instance_uid,
        r[3].sop_instance_uid,
    ]
    assert reply["next"] is None
    first = reply["instances"][0]
    assert first["study"] == STUDY and first["series"] == SERIES[0]
    assert first["object_key"] == r[1].object_key and first["sha256"] == r[1].sha256
    assert first["size"] == r[1].size and first["number"] == 1
    assert first["transfer_syntax"] == ExplicitVRLittleEndian
    assert first["sop_class"] == r[1].sop_class_uid
    assert "header" not in first


async def test_instance_with_header_carries_its_dicom_json(handler: Any) -> None:
    locate, records = handler
    target = records[3]
    reply = await locate(
        {
            "study": STUDY,
            "series": SERIES[1],
            "sop": target.sop_instance_uid,
            "with_header": True,
        }
    )
    assert _sops(reply) == [target.sop_instance_uid]
    assert reply["instances"][0]["header"]["00080018"]["Value"] == [target.sop_instance_uid]


async def test_pages_follow_the_cursor_to_the_end(handler: Any) -> None:
    locate, _ = handler
    whole = _sops(await locate({"study": STUDY}))
    seen: list[str] = []
    payload: dict[str, Any] = {"study": STUDY, "limit": 2}
    for _ in range(10):
        reply = await locate(payload)
        seen += _sops(reply)
        if reply["next"] is None:
            break
        payload["after"] = reply["next"]
    assert seen == whole


async def test_unknown_study_is_an_empty_answer(handler: Any) -> None:
    locate, _ = handler
    assert await locate({"study": generate_uid()}) == {"instances": [], "next": None}


async def test_series_level_move_identifier_takes_a_list_of_uids(handler: Any) -> None:
    locate, records = handler
    reply = await locate(_qr("SERIES", StudyInstanceUID=STUDY, SeriesInstanceUID=SERIES))
    assert sorted(_sops(reply)) == sorted(r.sop_instance_uid for r in records[:5])


async def test_patient_root_study_level_needs_and_matches_the_patient(handler: Any) -> None:
    locate, records = handler
    ok = await locate(_qr("STUDY", "PATIENT", PatientID=PATIENT, StudyInstanceUID=STUDY))
    assert len(ok["instances"]) == 5
    wrong = await locate(_qr("STUDY", "PATIENT", PatientID="LOC-2", StudyInstanceUID=STUDY))
    assert wrong["instances"] == []
    missing = await locate(_qr("STUDY", "PATIENT", StudyInstanceUID=STUDY))
    assert missing["error"]["status"] == 0xA900


async def test_patient_level_retrieves_every_study_of_the_patient(handler: Any) -> None:
    locate, records = handler
    reply = await locate(_qr("PATIENT", "PATIENT", PatientID="LOC-2"))
    assert _sops(reply) == [records[5].sop_instance_uid]


async def test_image_level_needs_the_series_above(handler: Any) -> None:
    locate, records = handler
    sop = records[0].sop_instance_uid
    reply = await locate(
        _qr("IMAGE", StudyInstanceUID=STUDY, SeriesInstanceUID=SERIES[0], SOPInstanceUID=sop)
    )
    assert _sops(reply) == [sop]
    reply = await locate(_qr("IMAGE", StudyInstanceUID=STUDY, SOPInstanceUID=sop))
    assert reply["error"]["status"] == 0xA900


async def test_non_unique_keys_are_not_matched(handler: Any) -> None:
    locate, _ = handler
    reply = await locate(_qr("STUDY", StudyInstanceUID=STUDY, PatientName="Nobody^Else"))
    assert len(reply["instances"]) == 5


@pytest.mark.parametrize(
    "payload",
    [
        {"study": "1.2.x"},
        {"study": "1.2.3", "sop": "1.2.3.4"},
        {"series": "1.2.3"},
        {"study": "1.2.3", "limit": 0},
        {"study": "1.2.3", "after": "first"},
    ],
)
async def test_malformed_wado_requests_are_answered_with_an_error(
    handler: Any, payload: dict[str, Any]
) -> None:
    locate, _ = handler
    reply = await locate(payload)
    assert reply["error"]["status"] == 0xC000


@pytest.mark.parametrize(
    "payload",
    [
        _qr("STUDY"),  # no key at the retrieve level
        _qr("STUDY", StudyInstanceUID="1.2.*"),  # wildcards name nothing
        _qr("SERIES", StudyInstanceUID=STUDY),
        _qr("PATIENT", "STUDY", PatientID="X"),  # no patient level in Study Root
        _qr("FRAME", StudyInstanceUID=STUDY),
        _qr("STUDY", StudyInstanceUID=STUDY, SeriesInstanceUID=SERIES[0]),  # key below the level
    ],
)
async def test_identifiers_that_do_not_fit_the_model_are_refused(
    handler: Any, payload: dict[str, Any]
) -> None:
    locate, _ = handler
    reply = await locate(payload)
    assert reply["error"]["status"] == 0xA900, reply
