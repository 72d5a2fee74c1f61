"""The AE registry in Postgres: what the CLI edits and what admission reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

PERMISSIONS = ("echo", "store", "find", "move", "get")
# DICOM User Identity (PS3.7 D.3.3.7) an AE must present: not supported, optional, required.
IDENTITY_MODES = ("none", "optional", "required")
# The kinds accepted: username + passcode (User Identity Type 2), JSON Web Token (type 5).
IDENTITY_KINDS = ("password", "jwt")


@dataclass(frozen=True)
class RemoteAE:
    """A registered remote DICOM node. ``hosts`` holds addresses, CIDR ranges or host names."""

    ae_title: str
    hosts: tuple[str, ...]
    port: int
    permissions: frozenset[str] = field(default_factory=frozenset)
    tls_required: bool = False
    move_destination: bool = True
    description: str = ""
    user_identity: str = "none"
    identity_kinds: frozenset[str] = frozenset(IDENTITY_KINDS)
    # Over TLS with a client certificate (our CA) naming this AE title (CN or SAN DNS).
    tls_client_cert: bool = False

    def __post_init__(self) -> None:
        title = self.ae_title
        if not (0 < len(title) <= 16 and title == title.strip() and title.isprintable()):
            raise ValueError(f"AE title must be 1-16 printable characters: {title!r}")
        if "\\" in title:
            raise ValueError("AE title may not contain a backslash (PS3.5 6.2)")
        unknown = set(self.permissions) - set(PERMISSIONS)
        if unknown:
            raise ValueError(f"unknown permission(s): {', '.join(sorted(unknown))}")
        if not self.hosts:
            raise ValueError("at least one host is required")
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")
        if self.user_identity not in IDENTITY_MODES:
            raise ValueError(f"user identity must be one of {', '.join(IDENTITY_MODES)}")
        unknown = set(self.identity_kinds) - set(IDENTITY_KINDS)
        if unknown:
            raise ValueError(f"unknown identity kind(s): {', '.join(sorted(unknown))}")
        if self.user_identity != "none" and not self.identity_kinds:
            raise ValueError("an AE with a user identity needs at least one identity kind")


def _from_row(row: dict[str, Any]) -> RemoteAE:
    return RemoteAE(
        ae_title=row["ae_title"],
        hosts=tuple(row["hosts"]),
        port=row["port"],
        permissions=frozenset(row["permissions"]),
        tls_required=row["tls_required"],
        move_destination=row["move_destination"],
        description=row["description"],
        user_identity=row["user_identity"],
        identity_kinds=frozenset(row["identity_kinds"]),
        tls_client_cert=row["tls_client_cert"],
    )


class PsycopgAERegistry:
    """AE registry on Postgres; one short connection per call (admin and cache-miss traffic)."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url

    async def _connect(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        return await psycopg.AsyncConnection.connect(
            self._url, connect_timeout=5, row_factory=dict_row
        )

    async def get(self, ae_title: str) -> RemoteAE | None:
        async with await self._connect() as conn:
            cur = await conn.execute("SELECT * FROM ae_registry WHERE ae_title = %s", (ae_title,))
            row = await cur.fetchone()
        return _from_row(row) if row else None

    async def list(self) -> list[RemoteAE]:
        async with await self._connect() as conn:
            cur = await conn.execute("SELECT * FROM ae_registry ORDER BY ae_title")
            return [_from_row(r) for r in await cur.fetchall()]

    async def put(self, ae: RemoteAE) -> bool:
        """Insert or replace ``ae``; True when it was new."""
        async with await self._connect() as conn:
            cur = await conn.execute(
                """
                INSERT INTO ae_registry AS r (ae_title, hosts, port, permissions, tls_required,
                                              move_destination, description, user_identity,
                                              identity_kinds, tls_client_cert)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (ae_title) DO UPDATE SET
                    hosts = EXCLUDED.hosts, port = EXCLUDED.port,
                    permissions = EXCLUDED.permissions, tls_required = EXCLUDED.tls_required,
                    move_destination = EXCLUDED.move_destination,
                    description = EXCLUDED.description,
                    user_identity = EXCLUDED.user_identity,
                    identity_kinds = EXCLUDED.identity_kinds,
                    tls_client_cert = EXCLUDED.tls_client_cert, updated_at = now()
                RETURNING (xmax = 0) AS inserted
                """,
                (
                    ae.ae_title,
                    list(ae.hosts),
                    ae.port,
                    sorted(ae.permissions),
                    ae.tls_required,
                    ae.move_destination,
                    ae.description,
                    ae.user_identity,
                    sorted(ae.identity_kinds),
                    ae.tls_client_cert,
                ),
            )
            row = await cur.fetchone()
        return bool(row and row["inserted"])

    async def remove(self, ae_title: str) -> bool:
        async with await self._connect() as conn:
            cur = await conn.execute("DELETE FROM ae_registry WHERE ae_title = %s", (ae_title,))
            return cur.rowcount > 0

    async def ping(self) -> None:
        async with await self._connect() as conn:
            await conn.execute("SELECT 1")
