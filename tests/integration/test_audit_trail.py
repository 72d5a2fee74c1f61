"""The audit trail on the real Postgres and RabbitMQ: the append-only role, the hash chain and
its verification, the filters of GET /api/audit, and events that wait in their queue while auth
is away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from xml.etree import ElementTree as ET

import httpx
import psycopg
import pytest
from starlette.applications import Starlette

from edge.auth.audit_http import audit_routes
from edge.auth.audit_trail import AuditTrail, writer_url
from edge.auth.auditlog import GENESIS, AuditQuery, PsycopgAuditLog, chain_hash
from edge.common.audit import Auditor
from edge.common.bus import AioPikaBus
from edge.common.catalog import create_database_if_missing, migrate
from edge.common.events import AuditEvent
from tests.fixtures.pg import drop_database, new_database_url

KEY = "integration-key"
STUDY = "1.2.826.0.1.3680043.8.498.77"
CT = "1.2.840.10008.5.1.4.1.1.2"


def events() -> list[AuditEvent]:
    recorder = Auditor(None, source="edge-test", hash_key=KEY)
    recorder.association("CT1", "EDGE", "127.0.0.1", accepted=True)
    recorder.transferred(
        source=recorder.me(),
        destination=recorder.me(),
        study_uid=STUDY,
        sop_classes={CT: 2},
        patient_id="P1",
        action="C",
    )
    recorder.association("NOBODY", "EDGE", "10.9.9.9", accepted=False, reason="not registered")
    recorder.login("alice", success=False, reason="wrong password")
    return recorder.pending


@pytest.fixture
async def trail(database_url: str) -> AsyncIterator[PsycopgAuditLog]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("TRUNCATE audit_log")  # as the owner: each test starts a new chain
    log = PsycopgAuditLog(writer_url(database_url))
    yield log
    await log.close()


async def owner(database_url: str, sql: str, *params: object) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(sql, params)  # type: ignore[arg-type]
        return await cur.fetchall() if cur.description else []


async def test_rows_chain_by_hash_and_a_redelivered_event_is_not_added_twice(
    trail: PsycopgAuditLog, database_url: str
) -> None:
    sent = events()
    seqs = [await trail.append(e) for e in sent]
    again = await trail.append(sent[1])

    assert seqs == [1, 2, 3, 4] and again is None
    rows = await owner(database_url, "SELECT seq, prev_hash, hash FROM audit_log ORDER BY seq")
    assert rows[0][1] == GENESIS
    assert all(rows[n][1] == rows[n - 1][2] for n in range(1, 4))
    assert await trail.verify() == (4, None)


async def test_appends_share_one_connection_and_a_lost_one_is_replaced(
    trail: PsycopgAuditLog, database_url: str
) -> None:
    writers = (
        "SELECT pid FROM pg_stat_activity WHERE usename = 'edge_audit_writer'"
        " AND datname = current_database()"
    )
    first, second, third, fourth = events()
    assert [await trail.append(e) for e in (first, second)] == [1, 2]
    pids = await owner(database_url, writers)
    assert len(pids) == 1  # the second append did not open a connection of its own

    await owner(database_url, "SELECT pg_terminate_backend(%s)", pids[0][0])
    with pytest.raises(psycopg.OperationalError):  # the consumer's TransientError: redelivered
        await trail.append(third)
    assert [await trail.append(e) for e in (third, fourth)] == [3, 4]
    assert len(await owner(database_url, writers)) == 1
    # The database computes each hash: it must be chain_hash's over UTF-8, beyond ASCII too.
    recorder = Auditor(None, source="edge-test", hash_key=KEY)
    recorder.login("zoë.山田", success=True)
    assert await trail.append(recorder.pending[0]) == 5
    assert await trail.verify() == (5, None)


async def test_writer_role_can_neither_update_nor_delete_nor_truncate(
    trail: PsycopgAuditLog, database_url: str
) -> None:
    await trail.append(events()[0])
    async with await psycopg.AsyncConnection.connect(
        writer_url(database_url), autocommit=True
    ) as conn:
        assert (await (await conn.execute("SELECT current_user")).fetchone()) == (
            "edge_audit_writer",
        )
        for statement in (
            "UPDATE audit_log SET canonical = canonical || ' '",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(statement)
    assert await trail.verify() == (1, None)


async def test_verify_names_the_first_row_a_superuser_edited(
    trail: PsycopgAuditLog, database_url: str
) -> None:
    for event in events():
        await trail.append(event)
    await owner(
        database_url,
        "UPDATE audit_log SET canonical = replace(canonical, 'NOBODY', 'SOMEBODY') WHERE seq = 3",
    )

    checked, broken = await trail.verify()

    assert broken is not None and broken.seq == 3 and "contents" in broken.reason
    # The derived columns follow the edited text: what a filter finds is what the chain covers.
    assert await owner(database_url, "SELECT participants[1] FROM audit_log WHERE seq = 3") == [
        ("SOMEBODY",)
    ]


async def test_verify_finds_a_removed_row_and_a_rehashed_forgery(
    trail: PsycopgAuditLog, database_url: str
) -> None:
    for event in events():
        await trail.append(event)
    await owner(database_url, "DELETE FROM audit_log WHERE seq = 2")
    assert (await trail.verify())[1].seq == 2  # type: ignore[union-attr]

    # Re-hashing an edited row is not enough: the next row still names the old hash.
    await owner(database_url, "TRUNCATE audit_log")
    for event in events():
        await trail.append(event)
    [(prev, text)] = await owner(
        database_url, "SELECT prev_hash, canonical FROM audit_log WHERE seq = 2"
    )
    forged = text.replace('"action":"C"', '"action":"R"')
    await owner(
        database_url,
        "UPDATE audit_log SET canonical = %s, hash = %s WHERE seq = 2",
        forged,
        chain_hash(prev, forged),
    )
    broken = (await trail.verify())[1]
    assert broken is not None and broken.seq == 3


async def test_search_filters_and_the_api_serves_json_and_dicom_xml(
    trail: PsycopgAuditLog,
) -> None:
    for event in events():
        await trail.append(event)

    assert [r["seq"] for r in await trail.search(AuditQuery(study=STUDY))] == [2]
    assert [r["seq"] for r in await trail.search(AuditQuery(participant="NOBODY"))] == [3]
    assert [r["seq"] for r in await trail.search(AuditQuery(event_type="110114"))] == [1, 4]
    security = await trail.search(AuditQuery(event_type="audit.security-alert", outcome=4))
    assert [r["seq"] for r in security] == [3]
    assert [r["seq"] for r in await trail.search(AuditQuery(after=1, limit=2))] == [2, 3]

    app = Starlette(routes=audit_routes(trail))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://auth"
    ) as http:
        page = (await http.get("/api/audit", params={"limit": "2"})).json()
        assert [e["seq"] for e in page["events"]] == [1, 2] and page["next"] == 2
        assert page["events"][1]["event"]["data"]["objects"][0]["object_id"] == STUDY
        xml = await http.get(
            "/api/audit", params={"study": STUDY}, headers={"Accept": "application/xml"}
        )
        assert xml.headers["content-type"].startswith("application/xml")
        [message] = ET.fromstring(xml.content).findall("AuditMessage")
        ident = message.find("EventIdentification")
        assert ident is not None and ident.get("EventActionCode") == "C"
        assert ident.find("EventID").get("csd-code") == "110104"  # type: ignore[union-attr]
        objects = message.findall("ParticipantObjectIdentification")
        assert objects[0].get("ParticipantObjectID") == STUDY
        assert objects[0].find("SOPClass").get("NumberOfInstances") == "2"  # type: ignore[union-attr]
        bad = await http.get("/api/audit", params={"since": "yesterday"})
        assert bad.status_code == 400


async def test_events_wait_in_their_queue_while_auth_is_away_and_arrive_in_order(
    trail: PsycopgAuditLog, amqp_url: str
) -> None:
    publisher = await AioPikaBus.connect(amqp_url, "/edge/test")
    try:
        recorder = Auditor(publisher, source="edge-test", hash_key=KEY)
        await recorder.start()
        for n in range(20):
            recorder.login(f"user{n:02d}", success=True)
        await recorder.stop()  # every event confirmed by the broker; nobody consumes yet
        assert not recorder.pending

        auth = AuditTrail(amqp_url=amqp_url, hash_key=KEY, trail=trail)
        await auth.start()
        try:
            for _ in range(100):
                rows = await trail.search(AuditQuery(limit=1000))
                if len(rows) >= 20:
                    break
                await asyncio.sleep(0.1)
        finally:
            await auth.stop()
        users = [r["event"]["data"]["participants"][0]["user_id"] for r in rows]
        assert users == [f"user{n:02d}" for n in range(20)]
        assert await trail.verify() == (20, None)
    finally:
        await publisher.close()


async def test_migrating_another_database_finds_the_role_already_there() -> None:
    url = new_database_url("audit_role_again")
    await create_database_if_missing(url)
    try:
        assert "0009_audit" in await migrate(url)
    finally:
        await drop_database(url)


def test_writer_url_swaps_the_user_unless_one_is_configured() -> None:
    assert "user=edge_audit_writer" in writer_url("postgresql://postgres@127.0.0.1:5432/edge")
    assert writer_url("postgresql://x@h/db", "postgresql://w:pw@h/db") == "postgresql://w:pw@h/db"
