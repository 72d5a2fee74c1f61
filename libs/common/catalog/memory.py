"""``InMemoryCatalog``: the catalog port in a few dicts, for unit tests only."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from edge.common.catalog.ports import CatalogUnavailable, Upserted, UpsertOutcome
from edge.common.catalog.records import InstanceRecord
from edge.common.events import CatalogEvent


@dataclass
class StudyState:
    """What the fake keeps per study beside its instances: the stability timer's fields."""

    patient_key: str
    first_received_at: datetime
    last_instance_at: datetime
    announced_at: datetime | None = None
    updated_since_announce: bool = False
    replaced_since_announce: int = 0


@dataclass(frozen=True)
class OutboxRow:
    """An event waiting for the relay."""

    pk: int
    event: CatalogEvent
    headers: dict[str, str]


@dataclass
class _State:
    instances: dict[str, InstanceRecord] = field(default_factory=dict)
    studies: dict[str, StudyState] = field(default_factory=dict)
    series_study: dict[str, str] = field(default_factory=dict)
    patients: set[str] = field(default_factory=set)
    outbox: list[OutboxRow] = field(default_factory=list)
    next_pk: int = 1

    def copy(self) -> _State:
        # Records are frozen, so only the mutable per-study state needs copies of its own.
        return _State(
            instances=dict(self.instances),
            studies={uid: replace(st) for uid, st in self.studies.items()},
            series_study=dict(self.series_study),
            patients=set(self.patients),
            outbox=list(self.outbox),
            next_pk=self.next_pk,
        )


class InMemoryTransaction:
    """Writes to the fake's working state; the catalog discards them if the block raises."""

    def __init__(self, state: _State) -> None:
        self._state = state

    async def upsert(
        self, rec: InstanceRecord, trace_context: Mapping[str, str] | None = None
    ) -> Upserted:
        """Same outcomes as the Postgres adapter: UNCHANGED touches nothing."""
        s = self._state
        old = s.instances.get(rec.sop_instance_uid)
        previous = None if old is None else old.sha256
        if old is not None and old.sha256 == rec.sha256:
            return Upserted(UpsertOutcome.UNCHANGED, previous)
        now = datetime.now(UTC)
        study_uid = rec.study.study_instance_uid
        s.patients.add(rec.patient.identity_key)
        study = s.studies.get(study_uid)
        if study is None:
            study = s.studies[study_uid] = StudyState(
                rec.patient.identity_key, rec.received_at, now
            )
        study.patient_key = rec.patient.identity_key
        study.last_instance_at = max(study.last_instance_at, now)
        study.updated_since_announce = study.updated_since_announce or bool(study.announced_at)
        study.replaced_since_announce += old is not None
        s.series_study[rec.series.series_instance_uid] = study_uid
        s.instances[rec.sop_instance_uid] = rec
        outcome = UpsertOutcome.INSERTED if old is None else UpsertOutcome.REPLACED
        return Upserted(outcome, previous)

    async def upsert_instance(self, rec: InstanceRecord) -> UpsertOutcome:
        return (await self.upsert(rec)).outcome

    async def add_outbox(
        self, event: CatalogEvent, headers: Mapping[str, str] | None = None
    ) -> int:
        """Queue an event; returns its row key (1, 2, 3, ...)."""
        s = self._state
        pk = s.next_pk
        s.next_pk += 1
        s.outbox.append(OutboxRow(pk, event, dict(headers or {})))
        return pk


class InMemoryCatalog:
    """The catalog port without a database. Set ``unavailable = True`` to make every call raise
    :class:`CatalogUnavailable`, as the Postgres adapter does when the server is down."""

    def __init__(self) -> None:
        self._state = _State()
        self._lock = asyncio.Lock()
        self.unavailable = False

    @property
    def outbox(self) -> list[OutboxRow]:
        """Events queued by committed transactions, oldest first."""
        return list(self._state.outbox)

    def study(self, study_instance_uid: str) -> StudyState | None:
        """The timer fields of a study, for assertions."""
        return self._state.studies.get(study_instance_uid)

    def _check(self) -> None:
        if self.unavailable:
            raise CatalogUnavailable("in-memory catalog set unavailable")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryTransaction]:
        """Serialised transactions: a copy is worked on and kept only if the block succeeds."""
        self._check()
        async with self._lock:
            working = self._state.copy()
            yield InMemoryTransaction(working)
            self._state = working

    async def upsert_instance(self, rec: InstanceRecord) -> UpsertOutcome:
        """Upsert in a transaction of its own."""
        async with self.transaction() as tx:
            return await tx.upsert_instance(rec)

    async def get_instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The same keys the Postgres adapter returns."""
        self._check()
        rec = self._state.instances.get(sop_instance_uid)
        if rec is None:
            return None
        return {
            "sop_instance_uid": rec.sop_instance_uid,
            "sop_class_uid": rec.sop_class_uid,
            "series_instance_uid": rec.series.series_instance_uid,
            "study_instance_uid": rec.study.study_instance_uid,
            "patient_id": rec.patient.patient_id,
            "instance_number": rec.instance_number,
            "transfer_syntax_uid": rec.transfer_syntax_uid,
            "size": rec.size,
            "sha256": rec.sha256,
            "object_key": rec.object_key,
            "calling_ae": rec.calling_ae,
            "received_at": rec.received_at,
            "updated_at": rec.received_at,
            "header": copy.deepcopy(dict(rec.header)),
        }

    async def count_instances(self, study_instance_uid: str | None = None) -> int:
        """Instances in the catalog, or in one study."""
        self._check()
        return sum(
            1
            for rec in self._state.instances.values()
            if study_instance_uid in (None, rec.study.study_instance_uid)
        )

    async def count_studies(self) -> int:
        """Studies in the catalog."""
        self._check()
        return len(self._state.studies)

    async def ping(self) -> bool:
        """False while ``unavailable`` is set."""
        return not self.unavailable

    async def close(self) -> None:
        """Nothing to release."""

    async def catalogued_objects(self, keys: Sequence[str]) -> dict[str, str]:
        """Object key → SHA-256 of the instances whose row points at one of ``keys``."""
        self._check()
        wanted = set(keys)
        return {
            rec.object_key: rec.sha256
            for rec in self._state.instances.values()
            if rec.object_key in wanted
        }
