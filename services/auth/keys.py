"""Token signing keys: ES256 key pairs in Postgres, rotated, their public halves as a JWKS.

The newest key signs. When it is older than the rotation interval the next token request makes
a new one (under an advisory lock, so replicas make one between them) and retires the others.
A retired key stays in the JWKS until every token it may have signed has expired — its
retirement, plus the token lifetime, plus the time a replica may keep signing with a key it has
cached — and is deleted after that. Private keys are read by auth only and never served.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

ALGORITHM = "ES256"
# How long a replica keeps signing with a key it read (seconds): a newer key made by another
# replica is picked up within this, so retired keys stay published this much longer.
SIGNER_CACHE = 60.0
CLOCK_SKEW = 60.0
_LOCK_KEY = 0x65646765_6B6579  # "edgekey": one rotation at a time across replicas


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    created_at: datetime


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint of an EC public key: the key id."""
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_key_pair() -> tuple[str, str, dict[str, Any]]:
    """A fresh P-256 key: ``(kid, private PKCS#8 PEM, public JWK)``."""
    private = ec.generate_private_key(ec.SECP256R1())
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    kid = thumbprint(jwk)
    jwk.update(kid=kid, alg=ALGORITHM, use="sig")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return kid, pem, jwk


def _load(row: dict[str, Any]) -> SigningKey:
    private = serialization.load_pem_private_key(row["private_pem"].encode(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return SigningKey(row["kid"], private, row["created_at"])


class PsycopgKeyStore:
    """The ``auth_signing_key`` table."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url

    async def _connect(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        return await psycopg.AsyncConnection.connect(
            self._url, connect_timeout=5, row_factory=dict_row
        )

    async def signer(self, rotation: float, publish_for: float) -> SigningKey:
        """The key to sign with now, made (and the older ones retired) when the newest is older
        than ``rotation`` seconds; retired keys older than ``publish_for`` are deleted."""
        async with await self._connect() as conn, conn.transaction():
            newest = await self._newest(conn, rotation)
            if newest is not None:
                return _load(newest)
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            newest = await self._newest(conn, rotation)  # another replica may have made one
            if newest is not None:
                return _load(newest)
            kid, pem, jwk = new_key_pair()
            await conn.execute(
                "UPDATE auth_signing_key SET retired_at = now() WHERE retired_at IS NULL"
            )
            cur = await conn.execute(
                "INSERT INTO auth_signing_key (kid, algorithm, private_pem, public_jwk) "
                "VALUES (%s, %s, %s, %s) RETURNING kid, private_pem, created_at",
                (kid, ALGORITHM, pem, Jsonb(jwk)),
            )
            await conn.execute(
                "DELETE FROM auth_signing_key WHERE retired_at < now() - make_interval(secs => %s)",
                (publish_for,),
            )
            row = await cur.fetchone()
            assert row is not None
            return _load(row)

    @staticmethod
    async def _newest(
        conn: psycopg.AsyncConnection[dict[str, Any]], rotation: float
    ) -> dict[str, Any] | None:
        cur = await conn.execute(
            "SELECT kid, private_pem, created_at FROM auth_signing_key "
            "WHERE retired_at IS NULL AND created_at > now() - make_interval(secs => %s) "
            "ORDER BY created_at DESC LIMIT 1",
            (rotation,),
        )
        return await cur.fetchone()

    async def jwks(self, publish_for: float) -> dict[str, Any]:
        """The JWKS (RFC 7517 5): every key not retired longer than ``publish_for`` seconds."""
        async with await self._connect() as conn:
            cur = await conn.execute(
                "SELECT public_jwk FROM auth_signing_key "
                "WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => %s) "
                "ORDER BY created_at DESC",
                (publish_for,),
            )
            return {"keys": [row["public_jwk"] for row in await cur.fetchall()]}


class KeyRing:
    """Auth's view of its keys: the signer, cached for :data:`SIGNER_CACHE` seconds."""

    def __init__(self, store: PsycopgKeyStore, *, rotation: float, token_lifetime: float) -> None:
        self.store = store
        self.rotation = rotation
        # A retired key may have signed until SIGNER_CACHE after its retirement; those tokens
        # live token_lifetime, and verifiers allow some clock skew.
        self.publish_for = token_lifetime + SIGNER_CACHE + CLOCK_SKEW
        self._signer: SigningKey | None = None
        self._read_at = float("-inf")

    async def signer(self) -> SigningKey:
        if self._signer is None or time.monotonic() - self._read_at > SIGNER_CACHE:
            self._signer = await self.store.signer(self.rotation, self.publish_for)
            self._read_at = time.monotonic()
        return self._signer

    async def jwks(self) -> dict[str, Any]:
        return await self.store.jwks(self.publish_for)
