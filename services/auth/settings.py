from __future__ import annotations

from edge.common.settings import CommonSettings


class AuthSettings(CommonSettings):
    http_host: str = "0.0.0.0"
    # EDGE_HTTP_PORT in its own container; `edge up` sets it from EDGE_AUTH_HTTP_PORT.
    http_port: int = 8083
    # Where the audit trail is written: a connection as the append-only role edge_audit_writer
    # (migration 0009). Unset: EDGE_DATABASE_URL with that role as its user.
    audit_database_url: str | None = None
