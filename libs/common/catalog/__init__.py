"""The catalog: patient → study → series → instance in Postgres, its migrations and its fake.

``PsycopgCatalog`` is the adapter, ``InMemoryCatalog`` the unit-test fake; both implement
:class:`Catalog`. Records come from headers through :func:`record_from_dataset`.
"""

from edge.common.catalog.memory import InMemoryCatalog, InMemoryTransaction
from edge.common.catalog.migrate import create_database_if_missing, migrate, migration_files
from edge.common.catalog.ports import (
    Catalog,
    CatalogTransaction,
    CatalogUnavailable,
    DueStudy,
    EventLog,
    OutboxEntry,
    PreviousAnnouncement,
    SeriesState,
    StudyTimerTransaction,
    Upserted,
    UpsertOutcome,
)
from edge.common.catalog.psycopg import PsycopgCatalog, PsycopgTransaction
from edge.common.catalog.records import (
    InstanceRecord,
    PatientAttrs,
    SeriesAttrs,
    StudyAttrs,
    UnusableInstance,
    normalise_person_name,
    parse_da,
    record_from_dataset,
)

__all__ = [
    "Catalog",
    "CatalogTransaction",
    "CatalogUnavailable",
    "DueStudy",
    "EventLog",
    "OutboxEntry",
    "PreviousAnnouncement",
    "SeriesState",
    "StudyTimerTransaction",
    "Upserted",
    "InMemoryCatalog",
    "InMemoryTransaction",
    "InstanceRecord",
    "PatientAttrs",
    "PsycopgCatalog",
    "PsycopgTransaction",
    "SeriesAttrs",
    "StudyAttrs",
    "UnusableInstance",
    "UpsertOutcome",
    "create_database_if_missing",
    "migrate",
    "migration_files",
    "normalise_person_name",
    "parse_da",
    "record_from_dataset",
]
