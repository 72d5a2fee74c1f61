"""``PsycopgCatalog``: the catalog on Postgres (psycopg 3, async, pooled connections).

Writes go through :meth:`PsycopgCatalog.transaction`, so a caller can add its outbox event to the
transaction that catalogues the instance::

    async with catalog.transaction() as tx:
        outcome = await tx.upsert_instance(rec)
        if outcome is not UpsertOutcome.UNCHANGED:
            await tx.add_outbox("instance.stored", rec.study.study_instance_uid, payload)

:meth:`PsycopgCatalog.upsert_instance` is the same thing without the outbox row.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from edge.common.catalog.ports import (
    CatalogUnavailable,
    DueStudy,
    OutboxEntry,
    PreviousAnnouncement,
    PublishBatch,
    SeriesState,
    Upserted,
    UpsertOutcome,
)
from edge.common.catalog.records import InstanceRecord
from edge.common.events import EVENTS_BY_NAME, CatalogEvent

# Each statement below runs in its own snapshot (READ COMMITTED), so a parent row that a
# concurrent worker committed while we waited on its conflict is visible to the next statement's
# subquery. ON CONFLICT DO UPDATE ... WHERE <something changed> writes nothing when the row is
# already current, yet still locks it, so concurrent workers take patient → study → series in the
# same order and cannot deadlock. A missing attribute never erases one already known (COALESCE).

_PATIENT_UPSERT = """
INSERT INTO patient AS p (identity_key, patient_id, issuer_of_patient_id, patient_name,
                          patient_name_norm, patient_birth_date, patient_sex)
VALUES (%(identity_key)s, %(patient_id)s, %(issuer_of_patient_id)s, %(patient_name)s,
        %(patient_name_norm)s, %(patient_birth_date)s, %(patient_sex)s)
ON CONFLICT (identity_key) DO UPDATE SET
    patient_name = COALESCE(EXCLUDED.patient_name, p.patient_name),
    patient_name_norm = COALESCE(EXCLUDED.patient_name_norm, p.patient_name_norm),
    patient_birth_date = COALESCE(EXCLUDED.patient_birth_date, p.patient_birth_date),
    patient_sex = COALESCE(EXCLUDED.patient_sex, p.patient_sex),
    updated_at = now()
WHERE (COALESCE(EXCLUDED.patient_name, p.patient_name),
       COALESCE(EXCLUDED.patient_birth_date, p.patient_birth_date),
       COALESCE(EXCLUDED.patient_sex, p.patient_sex))
      IS DISTINCT FROM (p.patient_name, p.patient_birth_date, p.patient_sex)
"""

_STUDY_UPSERT = """
INSERT INTO study AS s (patient_pk, study_instance_uid, study_date, study_time, accession_number,
                        study_id, referring_physician_name, referring_physician_name_norm,
                        study_description, first_received_at, last_instance_at)
VALUES ((SELECT pk FROM patient WHERE identity_key = %(identity_key)s),
        %(study_instance_uid)s, %(study_date)s, %(study_time)s, %(accession_number)s,
        %(study_id)s, %(referring_physician_name)s, %(referring_physician_name_norm)s,
        %(study_description)s, %(received_at)s, now())
ON CONFLICT (study_instance_uid) DO UPDATE SET
    patient_pk = EXCLUDED.patient_pk,
    study_date = COALESCE(EXCLUDED.study_date, s.study_date),
    study_time = COALESCE(EXCLUDED.study_time, s.study_time),
    accession_number = COALESCE(EXCLUDED.accession_number, s.accession_number),
    study_id = COALESCE(EXCLUDED.study_id, s.study_id),
    referring_physician_name =
        COALESCE(EXCLUDED.referring_physician_name, s.referring_physician_name),
    referring_physician_name_norm =
        COALESCE(EXCLUDED.referring_physician_name_norm, s.referring_physician_name_norm),
    study_description = COALESCE(EXCLUDED.study_description, s.study_description),
    updated_at = now()
WHERE (EXCLUDED.patient_pk,
       COALESCE(EXCLUDED.study_date, s.study_date),
       COALESCE(EXCLUDED.study_time, s.study_time),
       COALESCE(EXCLUDED.accession_number, s.accession_number),
       COALESCE(EXCLUDED.study_id, s.study_id),
       COALESCE(EXCLUDED.referring_physician_name, s.referring_physician_name),
       COALESCE(EXCLUDED.study_description, s.study_description))
      IS DISTINCT FROM (s.patient_pk, s.study_date, s.study_time, s.accession_number,
                        s.study_id, s.referring_physician_name, s.study_description)
"""

_SERIES_UPSERT = """
INSERT INTO series AS r (study_pk, series_instance_uid, modality, series_number,
                         series_description, body_part_examined, series_date, series_time)
VALUES ((SELECT pk FROM study WHERE study_instance_uid = %(study_instance_uid)s),
        %(series_instance_uid)s, %(modality)s, %(series_number)s, %(series_description)s,
        %(body_part_examined)s, %(series_date)s, %(series_time)s)
ON CONFLICT (series_instance_uid) DO UPDATE SET
    study_pk = EXCLUDED.study_pk,
    modality = COALESCE(EXCLUDED.modality, r.modality),
    series_number = COALESCE(EXCLUDED.series_number, r.series_number),
    series_description = COALESCE(EXCLUDED.series_description, r.series_description),
    body_part_examined = COALESCE(EXCLUDED.body_part_examined, r.body_part_examined),
    series_date = COALESCE(EXCLUDED.series_date, r.series_date),
    series_time = COALESCE(EXCLUDED.series_time, r.series_time),
    updated_at = now()
WHERE (EXCLUDED.study_pk,
       COALESCE(EXCLUDED.modality, r.modality),
       COALESCE(EXCLUDED.series_number, r.series_number),
       COALESCE(EXCLUDED.series_description, r.series_description),
       COALESCE(EXCLUDED.body_part_examined, r.body_part_examined),
       COALESCE(EXCLUDED.series_date, r.series_date),
       COALESCE(EXCLUDED.series_time, r.series_time))
      IS DISTINCT FROM (r.study_pk, r.modality, r.series_number, r.series_description,
                        r.body_part_examined, r.series_date, r.series_time)
"""

# The instance row and the study-stability timer in one statement: the timer moves only when the
# instance was inserted or replaced (a row came back), using the database clock, which every
# ingestion replica shares. (xmax = 0) is true for a freshly inserted row.
_INSTANCE_UPSERT = """
WITH upserted AS (
    INSERT INTO instance AS i (series_pk, sop_instance_uid, sop_class_uid, instance_number,
                               transfer_syntax_uid, size, sha256, object_key, header,
                               calling_ae, received_at)
    VALUES ((SELECT pk FROM series WHERE series_instance_uid = %(series_instance_uid)s),
            %(sop_instance_uid)s, %(sop_class_uid)s, %(instance_number)s,
            %(transfer_syntax_uid)s, %(size)s, %(sha256)s, %(object_key)s, %(header)s,
            %(calling_ae)s, %(received_at)s)
    ON CONFLICT (sop_instance_uid) DO UPDATE SET
        series_pk = EXCLUDED.series_pk,
        sop_class_uid = EXCLUDED.sop_class_uid,
        instance_number = EXCLUDED.instance_number,
        transfer_syntax_uid = EXCLUDED.transfer_syntax_uid,
        size = EXCLUDED.size,
        sha256 = EXCLUDED.sha256,
        object_key = EXCLUDED.object_key,
        header = EXCLUDED.header,
        calling_ae = EXCLUDED.calling_ae,
        received_at = EXCLUDED.received_at,
        updated_at = now()
    WHERE i.sha256 IS DISTINCT FROM EXCLUDED.sha256
    RETURNING (xmax = 0) AS inserted
), timer AS (
    UPDATE study SET
        last_instance_at = GREATEST(last_instance_at, now()),
        updated_since_announce = updated_since_announce OR announced_at IS NOT NULL,
        replaced_since_announce = replaced_since_announce
            + (SELECT count(*) FROM upserted WHERE NOT inserted),
        trace_context = %(trace_context)s
    WHERE study_instance_uid = %(study_instance_uid)s AND EXISTS (SELECT 1 FROM upserted)
)
SELECT inserted FROM upserted
"""

# Readiness probes must answer well inside a kubelet's probe timeout.
PING_TIMEOUT = 2.0

_INSTANCE_SHA256 = "SELECT sha256 FROM instance WHERE sop_instance_uid = %s"

_OUTBOX_INSERT = """
INSERT INTO outbox (event_type, subject, payload, headers, event_id, event_time)
VALUES (%s, %s, %s, %s, %s, %s)
RETURNING pk
"""

# Studies quiet for long enough that are not yet announced, or changed since. SKIP LOCKED: a
# study another replica is announcing, or whose instance a transaction is adding right now, is
# left for the next round; the row lock taken here makes such an instance wait, and it then
# flags the study updated_since_announce, so it is announced again later, never lost.
_CLAIM_DUE = """
SELECT pk, study_instance_uid, announced_at IS NOT NULL AS announced, announced_summary,
       (SELECT o.sequence FROM outbox o WHERE o.pk = study.announced_outbox_pk)
           AS announced_sequence,
       replaced_since_announce, trace_context
FROM study
WHERE (announced_at IS NULL OR updated_since_announce)
  AND last_instance_at <= now() - make_interval(secs => %s)
ORDER BY last_instance_at
LIMIT %s
FOR UPDATE SKIP LOCKED
"""

_STUDY_SERIES = """
SELECT r.series_instance_uid, r.modality,
       array_agg(DISTINCT i.sop_class_uid ORDER BY i.sop_class_uid) AS sop_class_uids,
       count(*) AS instances, sum(i.size)::bigint AS bytes,
       md5(string_agg(i.sop_instance_uid || ':' || i.sha256, ',' ORDER BY i.sop_instance_uid))
           AS digest,
       min(i.received_at) AS first_received_at, max(i.received_at) AS last_received_at,
       array_agg(DISTINCT i.calling_ae ORDER BY i.calling_ae) AS calling_aes
FROM series r JOIN instance i ON i.series_pk = r.pk
WHERE r.study_pk = %s
GROUP BY r.pk
ORDER BY r.series_instance_uid
"""

_MARK_ANNOUNCED = """
UPDATE study SET announced_at = now(), updated_since_announce = false,
       replaced_since_announce = 0, announced_summary = %s, announced_outbox_pk = %s
WHERE pk = %s
"""

# The relay's two steps. Numbering takes the position row's lock, so relays number one at a
# time; the SELECT after it runs in a fresh snapshot (READ COMMITTED) that sees every row the
# previous numbering committed, so no row is numbered twice and numbers only grow.
_LOCK_POSITION = "SELECT last_sequence FROM outbox_position WHERE singleton FOR UPDATE"
_NUMBER_BATCH = """
WITH batch AS (
    SELECT pk, row_number() OVER (ORDER BY pk) AS n
    FROM outbox WHERE sequence IS NULL ORDER BY pk LIMIT %(limit)s
)
UPDATE outbox o SET sequence = %(last)s + batch.n FROM batch WHERE o.pk = batch.pk
RETURNING o.sequence
"""
_MOVE_POSITION = "UPDATE outbox_position SET last_sequence = %s WHERE singleton"
# One publisher at a time keeps the broker's order the feed's order (key: ASCII "edgerel").
_RELAY_LOCK = "SELECT pg_try_advisory_xact_lock(28542614044083564)"
_UNPUBLISHED = """
SELECT pk, sequence, event_type, payload, headers, event_id, event_time
FROM outbox WHERE published_at IS NULL AND sequence IS NOT NULL
ORDER BY sequence LIMIT %s
"""
_MARK_PUBLISHED = "UPDATE outbox SET published_at = now() WHERE pk = ANY(%s)"
_CHANGES = """
SELECT pk, sequence, event_type, payload, headers, event_id, event_time
FROM outbox WHERE sequence > %s ORDER BY sequence LIMIT %s
"""
# Published events older than the retention leave the feed, a bounded batch at a time.
_PRUNE = """
DELETE FROM outbox WHERE pk IN (
    SELECT pk FROM outbox
    WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => %s)
    ORDER BY sequence LIMIT %s
)
"""
_OLDEST = "SELECT min(sequence) FROM outbox WHERE sequence IS NOT NULL"
_OUTBOX_BACKLOG = """
SELECT count(*) FILTER (WHERE sequence IS NULL),
       count(*) FILTER (WHERE sequence IS NOT NULL AND published_at IS NULL)
FROM outbox WHERE published_at IS NULL
"""

_GET_INSTANCE = """
SELECT i.sop_instance_uid, i.sop_class_uid, r.series_instance_uid, s.study_instance_uid,
       p.patient_id, i.instance_number, i.transfer_syntax_uid, i.size, i.sha256, i.object_key,
       i.calling_ae, i.received_at, i.updated_at, i.header
FROM instance i
JOIN series r ON r.pk = i.series_pk
JOIN study s ON s.pk = r.study_pk
JOIN patient p ON p.pk = s.patient_pk
WHERE i.sop_instance_uid = %s
"""

_COUNT_INSTANCES_IN_STUDY = """
SELECT count(*) FROM instance i
JOIN series r ON r.pk = i.series_pk
JOIN study s ON s.pk = r.study_pk
WHERE s.study_instance_uid = %s
"""


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    pk, sequence, event_type, payload, headers, event_id, event_time = row
    cls = EVENTS_BY_NAME[event_type]
    event = cls.model_validate(
        {**payload, "sequence": sequence or 0, "id": event_id, "time": event_time}
    )
    assert isinstance(event, CatalogEvent)
    return OutboxEntry(int(pk), event, dict(headers or {}))


def _params(rec: InstanceRecord) -> dict[str, Any]:
    p, st, se = rec.patient, rec.study, rec.series
    return {
        "identity_key": p.identity_key,
        "patient_id": p.patient_id,
        "issuer_of_patient_id": p.issuer_of_patient_id,
        "patient_name": p.patient_name,
        "patient_name_norm": p.patient_name_norm,
        "patient_birth_date": p.patient_birth_date,
        "patient_sex": p.patient_sex,
        "study_instance_uid": st.study_instance_uid,
        "study_date": st.study_date,
        "study_time": st.study_time,
        "accession_number": st.accession_number,
        "study_id": st.study_id,
        "referring_physician_name": st.referring_physician_name,
        "referring_physician_name_norm": st.referring_physician_name_norm,
        "study_description": st.study_description,
        "series_instance_uid": se.series_instance_uid,
        "modality": se.modality,
        "series_number": se.series_number,
        "series_description": se.series_description,
        "body_part_examined": se.body_part_examined,
        "series_date": se.series_date,
        "series_time": se.series_time,
        "sop_instance_uid": rec.sop_instance_uid,
        "sop_class_uid": rec.sop_class_uid,
        "instance_number": rec.instance_number,
        "transfer_syntax_uid": rec.transfer_syntax_uid,
        "size": rec.size,
        "sha256": rec.sha256,
        "object_key": rec.object_key,
        "header": Jsonb(rec.header),
        "calling_ae": rec.calling_ae,
        "received_at": rec.received_at,
    }


class PsycopgTransaction:
    """Catalog writes on one connection inside one open transaction."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def upsert(
        self, rec: InstanceRecord, trace_context: Mapping[str, str] | None = None
    ) -> Upserted:
        """File ``rec`` under its patient, study and series, creating what is missing.

        Same SOP Instance UID and SHA-256 as stored: UNCHANGED, one read and nothing written.
        Otherwise one pipelined round trip upserts the four levels and moves the study's
        stability timer (``trace_context``, W3C headers, is kept with it for the study's
        announcement). Two workers racing on the very same new instance may both touch
        patient/study/series; the loser still reports UNCHANGED.
        """
        conn = self._conn
        cur = await conn.execute(_INSTANCE_SHA256, (rec.sop_instance_uid,))
        row = await cur.fetchone()
        previous = None if row is None else str(row[0])
        if previous == rec.sha256:
            return Upserted(UpsertOutcome.UNCHANGED, previous)
        params = {**_params(rec), "trace_context": Jsonb(dict(trace_context or {}))}
        async with conn.pipeline():
            await conn.execute(_PATIENT_UPSERT, params)
            await conn.execute(_STUDY_UPSERT, params)
            await conn.execute(_SERIES_UPSERT, params)
            cur = await conn.execute(_INSTANCE_UPSERT, params)
        row = await cur.fetchone()
        if row is None:
            return Upserted(UpsertOutcome.UNCHANGED, previous)
        return Upserted(UpsertOutcome.INSERTED if row[0] else UpsertOutcome.REPLACED, previous)

    async def upsert_instance(self, rec: InstanceRecord) -> UpsertOutcome:
        """:meth:`upsert`, when only the outcome matters."""
        return (await self.upsert(rec)).outcome

    async def add_outbox(
        self, event: CatalogEvent, headers: Mapping[str, str] | None = None
    ) -> int:
        """Queue ``event`` for the relay, which numbers and publishes it after this commits.

        ``headers`` ride along to the broker (W3C trace context). Returns the row's key.
        """
        cur = await self._conn.execute(
            _OUTBOX_INSERT,
            (
                event.name,
                event.subject(),
                Jsonb(event.data()),
                Jsonb(dict(headers or {})),
                event.id,
                event.time,
            ),
        )
        row = await cur.fetchone()
        assert row is not None  # INSERT ... RETURNING always returns the row
        return int(row[0])

    async def claim_due_studies(self, stable_after: float, limit: int) -> list[DueStudy]:
        """Lock up to ``limit`` studies whose announcement is due; others skip them."""
        cur = await self._conn.execute(_CLAIM_DUE, (stable_after, limit))
        return [
            DueStudy(
                pk=int(pk),
                study_uid=uid,
                previous=(
                    PreviousAnnouncement(summary or {}, seq, int(replaced)) if announced else None
                ),
                trace_context=dict(trace or {}),
            )
            for pk, uid, announced, summary, seq, replaced, trace in await cur.fetchall()
        ]

    async def study_series(self, study_pk: int) -> list[SeriesState]:
        """Every series of a study with what an announcement says of it."""
        cur = await self._conn.execute(_STUDY_SERIES, (study_pk,))
        return [SeriesState(*row) for row in await cur.fetchall()]

    async def mark_announced(
        self, study_pk: int, summary: Mapping[str, Any], outbox_pk: int | None
    ) -> None:
        """Stop the timer: the study is announced as ``summary`` by outbox row ``outbox_pk``."""
        await self._conn.execute(_MARK_ANNOUNCED, (Jsonb(dict(summary)), outbox_pk, study_pk))


class PsycopgCatalog:
    """The catalog on Postgres. Build with :meth:`open`; every psycopg operational error (refused
    connection, pool timeout, server shutdown, deadlock) surfaces as :class:`CatalogUnavailable`.
    """

    def __init__(self, pool: AsyncConnectionPool[Any], *, connect_timeout: float) -> None:
        self._pool = pool
        self._timeout = connect_timeout

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 5.0,
    ) -> PsycopgCatalog:
        """Open a pool on ``database_url`` and wait for its first connections.

        ``connect_timeout`` (seconds) bounds both this wait and every later wait for a free
        connection.
        Raises :class:`CatalogUnavailable` when the server cannot be reached within it.
        """
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            database_url,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            # Transactions are explicit (``transaction()``); reads never idle in a transaction.
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout))},
            name="edge-catalog",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout)
        except psycopg.OperationalError as exc:
            await pool.close()
            raise CatalogUnavailable(f"catalog database unreachable: {exc}") from exc
        return cls(pool, connect_timeout=connect_timeout)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._pool.close()

    async def __aenter__(self) -> PsycopgCatalog:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            async with self._pool.connection(timeout=self._timeout) as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise CatalogUnavailable(f"catalog database unavailable: {exc}") from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PsycopgTransaction]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        async with self._connection() as conn, conn.transaction():
            yield PsycopgTransaction(conn)

    async def upsert_instance(self, rec: InstanceRecord) -> UpsertOutcome:
        """:meth:`PsycopgTransaction.upsert` in a transaction of its own, without events."""
        async with self.transaction() as tx:
            return await tx.upsert_instance(rec)

    # --- the outbox relay and the change feed ------------------------------------------------

    async def number_outbox(self, limit: int = 500) -> int:
        """Give up to ``limit`` committed, unnumbered outbox rows their change-feed sequence,
        oldest first; returns how many were numbered."""
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(_LOCK_POSITION)
            row = await cur.fetchone()
            assert row is not None  # the migration inserts the singleton row
            cur = await conn.execute(_NUMBER_BATCH, {"last": int(row[0]), "limit": limit})
            numbered = [int(r[0]) for r in await cur.fetchall()]
            if numbered:
                await conn.execute(_MOVE_POSITION, (max(numbered),))
        return len(numbered)

    async def publish_outbox(self, publish: PublishBatch, limit: int = 500) -> int:
        """Hand numbered, unpublished events to ``publish`` in sequence order and mark them
        published once it returns (the broker confirmed them); returns how many.

        Runs in one transaction under an advisory lock: while one replica publishes, the others
        return 0 at once. If ``publish`` raises, nothing is marked and the same events (same
        ids, same sequences) go out on the next call: at-least-once, never lost.
        """
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(_RELAY_LOCK)
            locked = await cur.fetchone()
            if not locked or not locked[0]:
                return 0
            cur = await conn.execute(_UNPUBLISHED, (limit,))
            entries = [_entry(row) for row in await cur.fetchall()]
            if not entries:
                return 0
            await publish(entries)
            await conn.execute(_MARK_PUBLISHED, ([e.pk for e in entries],))
        return len(entries)

    async def changes(self, after: int, limit: int) -> list[OutboxEntry]:
        """The change feed: numbered events with ``sequence > after``, in order."""
        async with self._connection() as conn:
            cur = await conn.execute(_CHANGES, (after, limit))
            return [_entry(row) for row in await cur.fetchall()]

    async def oldest_change(self) -> int | None:
        """The lowest sequence still in the feed (None: the feed is empty)."""
        async with self._connection() as conn:
            cur = await conn.execute(_OLDEST)
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def prune_changes(self, retention: float, limit: int = 10_000) -> int:
        """Drop up to ``limit`` published events older than ``retention`` seconds."""
        async with self._connection() as conn:
            cur = await conn.execute(_PRUNE, (retention, limit))
            return cur.rowcount

    async def outbox_backlog(self) -> tuple[int, int]:
        """(rows waiting for a number, numbered rows waiting to be published)."""
        async with self._connection() as conn:
            cur = await conn.execute(_OUTBOX_BACKLOG)
            row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def get_instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The catalogued columns of an instance (with its series, study and patient keys and
        its DICOM JSON ``header``), or None."""
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_GET_INSTANCE, (sop_instance_uid,))
            return await cur.fetchone()

    async def count_instances(self, study_instance_uid: str | None = None) -> int:
        """Instances in the catalog, or in one study."""
        async with self._connection() as conn:
            if study_instance_uid is None:
                cur = await conn.execute("SELECT count(*) FROM instance")
            else:
                cur = await conn.execute(_COUNT_INSTANCES_IN_STUDY, (study_instance_uid,))
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def count_studies(self) -> int:
        """Studies in the catalog."""
        async with self._connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM study")
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def ping(self) -> bool:
        """Readiness: True when ``SELECT 1`` answers within :data:`PING_TIMEOUT` seconds."""
        try:
            async with (
                asyncio.timeout(PING_TIMEOUT),
                self._pool.connection(timeout=PING_TIMEOUT) as conn,
            ):
                await conn.execute("SELECT 1")
        except (psycopg.Error, TimeoutError):
            return False
        return True

    async def catalogued_objects(self, keys: Sequence[str]) -> dict[str, str]:
        """Object key → SHA-256 of the instances whose row points at one of ``keys``: one
        query on ``instance_object_key_idx`` (migration 0004), an index-only scan."""
        if not keys:
            return {}
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT object_key, sha256 FROM instance WHERE object_key = ANY(%s)", (list(keys),)
            )
            return {key: sha256 for key, sha256 in await cur.fetchall()}
