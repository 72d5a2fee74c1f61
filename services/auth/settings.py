from __future__ import annotations

from pydantic import Field

from edge.common.settings import CommonSettings


class AuthSettings(CommonSettings):
    http_host: str = "0.0.0.0"
    # EDGE_HTTP_PORT in its own container; `edge up` sets it from EDGE_AUTH_HTTP_PORT.
    http_port: int = 8083
    # Where the audit trail is written: a connection as the append-only role edge_audit_writer
    # (migration 0009). Unset: EDGE_DATABASE_URL with that role as its user.
    audit_database_url: str | None = None
    # Access tokens live this long (seconds). Revoked ones (auth.tokens_revoked) are refused
    # within seconds; the lifetime bounds how long one lives if a verifier misses that.
    token_lifetime: int = Field(600, ge=60, le=3600)
    # A new signing key after this many seconds; retired keys stay in the JWKS until the
    # tokens they signed have expired.
    key_rotation: float = Field(86400.0, ge=600)
    # Lockout: this many failures in a row lock a user for lockout_base seconds, doubling with
    # each further lock in a row up to lockout_max.
    lockout_threshold: int = Field(5, ge=1)
    lockout_base: float = Field(60.0, gt=0)
    lockout_max: float = Field(3600.0, gt=0)
    # Password hashes computed at once (each argon2id hash takes 64 MiB and a core ~0.1-1 s).
    password_hash_concurrency: int = Field(2, ge=1)
