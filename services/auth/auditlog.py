"""The audit trail in Postgres: append-only rows in a hash chain (migration 0009_audit.sql).

Row ``n`` holds the event as canonical JSON and ``hash = sha256(hash(n-1) + canonical)``, the
first row following :data:`GENESIS`. The auth service appends as the ``edge_audit_writer`` role,
which may SELECT and INSERT but not UPDATE, DELETE or TRUNCATE; :func:`verify` (``edge audit
verify``) recomputes the chain and names the first row that does not fit.

Appends are serialised by a transaction-scoped advisory lock, so several auth replicas extend one
chain; an event already present (same id: a redelivery) is not appended again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from edge.common.events import AuditEvent

GENESIS = "0" * 64
# pg_advisory_xact_lock key serialising appends (ASCII "edgeaud" as an integer).
_APPEND_LOCK = 0x65646765_617564


def canonical(event: AuditEvent) -> str:
    """The event as the chain hashes it: id, routing key, version, time and data, as JSON with
    sorted keys and no spaces (UTF-8 kept as is)."""
    return canonical_json(
        {
            "id": str(event.id),
            "type": event.name,
            "version": event.version,
            "time": event.time.isoformat(),
            "data": event.data(),
        }
    )


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(previous: str, text: str) -> str:
    """sha256(previous hash, as its hex text, followed by the canonical JSON), hex."""
    return hashlib.sha256((previous + text).encode()).hexdigest()


@dataclass(frozen=True)
class ChainRow:
    seq: int
    canonical: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Break:
    """The first row at which the chain does not hold, and why."""

    seq: int
    reason: str

    def __str__(self) -> str:
        return f"audit chain broken at row {self.seq}: {self.reason}"


class ChainCheck:
    """Checks rows one at a time, in ``seq`` order, against the chain so far."""

    def __init__(self) -> None:
        self.expected_seq = 1
        self.previous = GENESIS
        self.count = 0

    def feed(self, row: ChainRow) -> Break | None:
        self.count += 1
        if row.seq != self.expected_seq:
            return Break(self.expected_seq, f"row missing (the next row is {row.seq})")
        if row.prev_hash != self.previous:
            return Break(row.seq, "its previous hash is not the hash of the row before it")
        if chain_hash(self.previous, row.canonical) != row.hash:
            return Break(row.seq, "its contents do not match its hash")
        self.expected_seq, self.previous = row.seq + 1, row.hash
        return None


def verify_rows(rows: Iterable[ChainRow]) -> tuple[int, Break | None]:
    """Walk ``rows`` in ``seq`` order: (rows checked, the first break or None)."""
    check = ChainCheck()
    for row in rows:
        if (found := check.feed(row)) is not None:
            return check.count, found
    return check.count, None


@dataclass(frozen=True)
class AuditQuery:
    """Filters of ``GET /api/audit``; each None means "any"."""

    since: datetime | None = None
    until: datetime | None = None
    event_type: str | None = None  # routing key (audit.query) or EventID code (110112)
    participant: str | None = None  # a UserID: AE title or login
    study: str | None = None
    outcome: int | None = None
    after: int = 0  # seq: paging
    limit: int = 100


_APPEND = """
    INSERT INTO audit_log (seq, canonical, prev_hash, hash)
    SELECT coalesce(last.seq, 0) + 1, %(text)s, coalesce(last.hash, %(genesis)s),
           encode(sha256(convert_to(coalesce(last.hash, %(genesis)s) || %(text)s, 'UTF8')), 'hex')
    FROM (SELECT 1) AS one
    LEFT JOIN (SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1) AS last ON true
    WHERE NOT EXISTS (SELECT 1 FROM audit_log WHERE event_id = %(id)s)
    RETURNING seq
"""


class PsycopgAuditLog:
    """The ``audit_log`` table. Appends go through one connection kept open (the consumer
    appends an event per query, association and login: a connection each, as before, cost the
    database a backend start per event, ~5 ms of CPU on the suite's two cores); it is dropped
    on any error and opened again by the next append. Reads (the API's pages, ``verify``) use
    a short connection each."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._writer: psycopg.AsyncConnection[dict[str, Any]] | None = None
        self._writer_lock = asyncio.Lock()

    async def _connect(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        return await psycopg.AsyncConnection.connect(
            self._url, connect_timeout=5, row_factory=dict_row
        )

    async def append(self, event: AuditEvent) -> int | None:
        """Append ``event`` to the chain; its ``seq``, or None when it was already there. Returns
        once the row is committed."""
        text = canonical(event)
        async with self._writer_lock:
            conn = self._writer
            if conn is None or conn.closed:
                conn = self._writer = await self._connect()
            try:
                return await self._append(conn, event, text)
            except BaseException:
                # Whatever failed (the database restarted, a cancellation mid-transaction), the
                # next append starts on a fresh connection rather than one in an unknown state.
                self._writer = None
                await conn.close()
                raise

    @staticmethod
    async def _append(
        conn: psycopg.AsyncConnection[dict[str, Any]], event: AuditEvent, text: str
    ) -> int | None:
        # One round trip: the lock, then the row chained to the last one (the hash computed by
        # the database, exactly as chain_hash does: sha256 of the previous hash's hex text and
        # the canonical JSON in UTF-8), unless an event with this id is already there. The
        # INSERT is its own statement so that its snapshot follows the lock.
        async with conn.pipeline():
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
                params = {"text": text, "id": event.id, "genesis": GENESIS}
                cur = await conn.execute(_APPEND, params)
        row = await cur.fetchone()
        return int(row["seq"]) if row else None

    async def close(self) -> None:
        """Close the append connection (the service's stop)."""
        async with self._writer_lock:
            conn, self._writer = self._writer, None
        if conn is not None:
            await conn.close()

    async def search(self, query: AuditQuery) -> list[dict[str, Any]]:
        """A page of rows matching ``query`` in chain order: ``seq``, ``hash``, ``recorded_at``
        and the event (``canonical`` parsed)."""
        conditions: list[str] = ["seq > %s"]
        params: list[Any] = [query.after]
        if query.since is not None:
            conditions.append("event_time >= %s")
            params.append(query.since)
        if query.until is not None:
            conditions.append("event_time < %s")
            params.append(query.until)
        if query.event_type:
            column = "event_code" if query.event_type.isdigit() else "event_type"
            conditions.append(f"{column} = %s")
            params.append(query.event_type)
        if query.participant:
            conditions.append("participants @> ARRAY[%s]::text[]")
            params.append(query.participant)
        if query.study:
            conditions.append("studies @> ARRAY[%s]::text[]")
            params.append(query.study)
        if query.outcome is not None:
            conditions.append("outcome = %s")
            params.append(query.outcome)
        sql = (
            "SELECT seq, hash, recorded_at, canonical FROM audit_log WHERE "
            + " AND ".join(conditions)
            + " ORDER BY seq LIMIT %s"
        )
        async with await self._connect() as conn:
            cur = await conn.execute(sql, (*params, query.limit))
            rows = await cur.fetchall()
        return [
            {
                "seq": r["seq"],
                "hash": r["hash"],
                "recorded_at": r["recorded_at"].isoformat(),
                "event": json.loads(r["canonical"]),
            }
            for r in rows
        ]

    async def rows(self, batch: int = 1000) -> AsyncIterator[ChainRow]:
        """Every row in ``seq`` order, read in batches."""
        after = 0
        async with await self._connect() as conn:
            while True:
                cur = await conn.execute(
                    "SELECT seq, canonical, prev_hash, hash FROM audit_log"
                    " WHERE seq > %s ORDER BY seq LIMIT %s",
                    (after, batch),
                )
                found = await cur.fetchall()
                for r in found:
                    yield ChainRow(r["seq"], r["canonical"], r["prev_hash"], r["hash"])
                if len(found) < batch:
                    return
                after = found[-1]["seq"]

    async def verify(self) -> tuple[int, Break | None]:
        """Recompute the whole chain, streaming: (rows checked, the first break or None)."""
        check = ChainCheck()
        async for row in self.rows():
            if (found := check.feed(row)) is not None:
                return check.count, found
        return check.count, None

    async def ping(self) -> None:
        async with await self._connect() as conn:
            await conn.execute("SELECT 1 FROM audit_log LIMIT 0")
