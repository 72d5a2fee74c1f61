"""Versioned SQL migrations for the catalog database (``edge migrate``).

Every ``NNNN_<name>.sql`` file in this package's ``migrations/`` folder is applied once, in name
order, each in its own transaction, and recorded in ``schema_migrations``. Other features add
their own numbered files to the same folder (``0002_`` is the AE registry).
"""

from __future__ import annotations

import re
from importlib import resources

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from edge.common.catalog.ports import CatalogUnavailable

_MIGRATION_RE = re.compile(r"^(\d{4}_[A-Za-z0-9_]+)\.sql$")
# pg_advisory_lock key serialising migrators; advisory locks are per database, so this only
# contends with other migrators of the same catalog. (ASCII "edgemig" as an integer.)
_LOCK_KEY = 0x65646765_6D6967

_CREATE_LEDGER = b"""
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def migration_files() -> list[tuple[str, bytes]]:
    """``(version, sql)`` of every packaged migration, in the order they apply."""
    folder = resources.files("edge.common.catalog").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if m is not None:
            found.append((m[1], entry.read_bytes()))
    return sorted(found)


async def create_database_if_missing(database_url: str) -> bool:
    """Create the database ``database_url`` names, connecting to the ``postgres`` maintenance
    database of the same server. True when it was created, False when it already existed."""
    name = conninfo_to_dict(database_url).get("dbname")
    if not name:
        raise ValueError("database_url names no database")
    maintenance = make_conninfo(database_url, dbname="postgres")
    try:
        async with await psycopg.AsyncConnection.connect(maintenance, autocommit=True) as conn:
            cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if await cur.fetchone() is not None:
                return False
            try:
                await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
            except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                return False  # another process created it between our check and our CREATE
            return True
    except psycopg.OperationalError as exc:
        raise CatalogUnavailable(f"cannot reach the database server: {exc}") from exc


async def migrate(database_url: str) -> list[str]:
    """Apply every migration not yet recorded in ``schema_migrations``; return their versions.

    Idempotent, and safe when several processes run it at once: a session advisory lock makes
    them take turns, and the later ones find nothing left to do.
    """
    try:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                return await _apply_pending(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    except psycopg.OperationalError as exc:
        raise CatalogUnavailable(f"cannot migrate the catalog: {exc}") from exc


async def _apply_pending(conn: psycopg.AsyncConnection) -> list[str]:
    await conn.execute(_CREATE_LEDGER)
    cur = await conn.execute("SELECT version FROM schema_migrations")
    applied = {row[0] for row in await cur.fetchall()}
    done = []
    for version, script in migration_files():
        if version in applied:
            continue
        async with conn.transaction():
            # No parameters: psycopg sends the script with the simple query protocol, so one
            # file may hold many statements.
            await conn.execute(script)
            await conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, now())",
                (version,),
            )
        done.append(version)
    return done
