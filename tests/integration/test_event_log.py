"""The outbox, the change feed and the study timer on the real Postgres: ordering and
concurrency between replicas, which only the real database can show."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from starlette.applications import Starlette

from edge.common.catalog import OutboxEntry, PsycopgCatalog
from edge.common.events import StudyArrived, StudyUpdated
from edge.ingestion.http import change_feed_routes
from edge.ingestion.relay import Announcer
from tests.integration.test_catalog import make_record, stored_event


async def fetch(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def queue_events(catalog: PsycopgCatalog, n: int) -> list[uuid.UUID]:
    ids = []
    for _ in range(n):
        rec = make_record()
        async with catalog.transaction() as tx:
            await tx.upsert_instance(rec)
            event = stored_event(rec)
            await tx.add_outbox(event)
            ids.append(event.id)
    return ids


async def drain(catalog: PsycopgCatalog) -> list[OutboxEntry]:
    """Number and publish everything pending; returns what was published, in order."""
    published: list[OutboxEntry] = []

    async def publish(entries: list[OutboxEntry]) -> None:
        published.extend(entries)

    while await catalog.number_outbox() or await catalog.publish_outbox(publish):
        pass
    return published


@pytest.fixture(autouse=True)
async def empty_outbox(catalog: PsycopgCatalog) -> None:
    await drain(catalog)


async def test_feed_numbers_events_in_commit_order_without_gaps(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    start = (await catalog.changes(0, 100_000) or [None])[-1]
    after = start.event.sequence if start else 0
    # A transaction that inserted first but commits last must not be skipped by a subscriber
    # that has already read past the rows committed before it.
    slow = await psycopg.AsyncConnection.connect(database_url)
    try:
        rec = make_record()
        await slow.execute(
            "INSERT INTO outbox (event_type, subject, payload) VALUES (%s, %s, %s)",
            (
                "instance.stored",
                rec.study.study_instance_uid,
                psycopg.types.json.Jsonb(stored_event(rec).data()),
            ),
        )
        fast = await queue_events(catalog, 3)
        await catalog.number_outbox()
        first = await catalog.changes(after, 100)
        assert [e.event.id for e in first] == fast
        await slow.commit()
    finally:
        await slow.close()
    await catalog.number_outbox()
    second = await catalog.changes(first[-1].event.sequence, 100)
    assert [e.event.sop_instance_uid for e in second] == [rec.sop_instance_uid]
    sequences = [e.event.sequence for e in first + second]
    assert sequences == list(range(after + 1, after + 5))


async def test_concurrent_numbering_never_gives_two_rows_one_number(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    async def writer() -> None:
        await queue_events(catalog, 40)

    async def numberer() -> None:
        for _ in range(30):
            await catalog.number_outbox(limit=7)
            await asyncio.sleep(0)

    await asyncio.gather(writer(), writer(), numberer(), numberer(), numberer())
    while await catalog.number_outbox():
        pass
    rows = await fetch(
        database_url,
        "SELECT count(*), count(DISTINCT sequence), min(sequence), max(sequence)"
        " FROM outbox WHERE sequence IS NOT NULL",
    )
    total, distinct, low, high = rows[0]
    assert total == distinct == high - low + 1
    assert await fetch(database_url, "SELECT count(*) FROM outbox WHERE sequence IS NULL") == [(0,)]


async def test_failed_publish_marks_nothing_and_the_same_events_go_out_again(
    catalog: PsycopgCatalog,
) -> None:
    ids = await queue_events(catalog, 3)
    await catalog.number_outbox()

    async def broker_down(entries: list[OutboxEntry]) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        await catalog.publish_outbox(broker_down)
    published = await drain(catalog)
    assert [e.event.id for e in published] == ids
    sequences = [e.event.sequence for e in published]
    assert sequences == sorted(sequences) and 0 not in sequences
    assert await catalog.outbox_backlog() == (0, 0)


async def test_only_one_replica_publishes_at_a_time(catalog: PsycopgCatalog) -> None:
    await queue_events(catalog, 2)
    await catalog.number_outbox()
    inside = asyncio.Event()
    release = asyncio.Event()
    seen: list[int] = []

    async def slow_publish(entries: list[OutboxEntry]) -> None:
        seen.extend(e.event.sequence for e in entries)
        inside.set()
        await release.wait()

    first = asyncio.create_task(catalog.publish_outbox(slow_publish))
    await inside.wait()
    assert await catalog.publish_outbox(slow_publish) == 0  # the other replica holds the lock
    release.set()
    assert await first == 2
    assert len(seen) == 2


async def test_claiming_replicas_announce_each_study_exactly_once(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    studies = []
    for _ in range(12):
        rec = make_record()
        await catalog.upsert_instance(rec)
        studies.append(rec.study.study_instance_uid)
    replicas = [Announcer(catalog, stable_after=0, poll_interval=0.05, batch=2) for _ in range(3)]

    async def run(announcer: Announcer) -> None:
        while await announcer.step():
            pass

    await asyncio.gather(*(run(a) for a in replicas))
    published = await drain(catalog)
    arrived = [e.event for e in published if isinstance(e.event, StudyArrived)]
    assert sorted(e.study_uid for e in arrived if e.study_uid in studies) == sorted(studies)


async def test_study_is_announced_only_after_it_has_been_quiet(catalog: PsycopgCatalog) -> None:
    rec = make_record()
    await catalog.upsert_instance(rec)
    quiet_for_an_hour = Announcer(catalog, stable_after=3600, poll_interval=0.05)
    assert await quiet_for_an_hour.step() == 0
    assert await Announcer(catalog, stable_after=0, poll_interval=0.05).step() >= 1


async def test_instance_after_announcement_leads_to_study_updated_with_changes(
    catalog: PsycopgCatalog,
) -> None:
    announcer = Announcer(catalog, stable_after=0, poll_interval=0.05)
    first = make_record()
    await catalog.upsert_instance(first)
    await announcer.step()
    [arrived] = [e.event for e in await drain(catalog) if isinstance(e.event, StudyArrived)]
    assert (arrived.study_uid, arrived.instance_count) == (first.study.study_instance_uid, 1)
    assert await announcer.step() == 0  # announced once, not again

    study, series = first.study.study_instance_uid, first.series.series_instance_uid
    await catalog.upsert_instance(make_record(study=study, series=series))
    await catalog.upsert_instance(make_record(study=study))
    await catalog.upsert_instance(
        make_record(study=study, series=series, sop=first.sop_instance_uid, sha256="b" * 64)
    )
    assert await announcer.step() == 1
    [updated] = [e.event for e in await drain(catalog) if isinstance(e.event, StudyUpdated)]
    assert updated.instance_count == 3 and updated.series_count == 2
    assert updated.changes.instances_added == 2
    assert updated.changes.instances_replaced == 1
    assert updated.changes.series_changed == [series]
    assert len(updated.changes.series_added) == 1
    assert updated.changes.previous_sequence == arrived.sequence


async def test_instance_committed_while_announcing_is_announced_later_not_lost(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    first = make_record()
    await catalog.upsert_instance(first)
    study = first.study.study_instance_uid
    # The announcer holds the study's row lock; an instance arriving now waits for it and then
    # flags the study as updated since its announcement.
    async with catalog.transaction() as tx:
        [due] = [d for d in await tx.claim_due_studies(0, 100) if d.study_uid == study]
        late = asyncio.create_task(catalog.upsert_instance(make_record(study=study)))
        await asyncio.sleep(0.3)
        assert not late.done()
        await tx.mark_announced(due.pk, {"instances": 1, "bytes": 1, "series": {}}, None)
    await late
    rows = await fetch(
        database_url,
        "SELECT announced_at IS NOT NULL, updated_since_announce FROM study"
        " WHERE study_instance_uid = %s",
        study,
    )
    assert rows == [(True, True)]


async def test_pruned_feed_answers_410_to_a_subscriber_that_fell_behind(
    catalog: PsycopgCatalog, database_url: str
) -> None:
    await queue_events(catalog, 3)
    published = [e.event.sequence for e in await drain(catalog)]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE outbox SET published_at = now() - interval '2 days' WHERE sequence <= %s",
            (published[1],),
        )
    assert await catalog.prune_changes(retention=86400) >= 2
    assert await catalog.oldest_change() == published[2]

    app = Starlette(routes=change_feed_routes(catalog, max_limit=100))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingestion") as client:
        # Read up to published[0], then away while published[1] was pruned: a gap.
        gone = await client.get("/api/changes", params={"after": published[0]})
        caught_up = await client.get("/api/changes", params={"after": published[1]})
        # after=0 asks for everything still kept: a new subscriber, not one that fell behind.
        fresh = await client.get("/api/changes", params={"after": 0})
    assert gone.status_code == 410
    assert gone.headers["content-type"] == "application/problem+json"
    assert [e["sequence"] for e in caught_up.json()["events"]] == [published[2]]
    assert [e["sequence"] for e in fresh.json()["events"]][0] == published[2]
