"""Configuration from ``EDGE_*`` environment variables only.

One settings class per service, built in ``__main__`` and passed down; there is no module-level
singleton. Every default works on a developer machine; placeholder secrets are refused outside the
``dev`` environment.
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_S3_ACCESS_KEY = "edge-dev-access"
DEV_S3_SECRET_KEY = "edge-dev-secret-change-me"
DEV_AUDIT_HASH_KEY = "edge-dev-audit-key-change-me"


def is_placeholder(secret: str) -> bool:
    """True for the development secret and for the CHANGE_ME values the deploy files ship."""
    folded = secret.lower().replace("_", "-")
    return not secret or "change-me" in folded


DEV_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/edge"
_DEFAULT_BROKER_USERS = frozenset({"guest", ""})


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def production_problems(settings: CommonSettings) -> list[str]:
    """What makes ``settings`` unfit for production: authentication off where other hosts can
    reach the HTTP APIs, and credentials that are defaults or placeholders."""
    problems = []
    http_host = getattr(settings, "http_host", None)
    if not settings.auth_enabled and (http_host is None or not _is_loopback(http_host)):
        problems.append(
            f"EDGE_AUTH_ENABLED=false with the HTTP APIs on {http_host or 'a public address'} "
            "(only a loopback EDGE_HTTP_HOST may run without authentication)"
        )
    amqp = urlsplit(settings.amqp_url)
    if (amqp.username or "") in _DEFAULT_BROKER_USERS or is_placeholder(amqp.password or ""):
        problems.append("EDGE_AMQP_URL has the default guest or placeholder broker credentials")
    if settings.database_url == DEV_DATABASE_URL or is_placeholder(
        urlsplit(settings.database_url).password or "set"
    ):
        problems.append("EDGE_DATABASE_URL is the development default or holds a placeholder")
    if settings.s3_access_key == DEV_S3_ACCESS_KEY or is_placeholder(settings.s3_access_key):
        problems.append("EDGE_S3_ACCESS_KEY is the development key or a placeholder")
    return problems


class CommonSettings(BaseSettings):
    """What every service needs: where the broker, the database and the object store are."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore", frozen=True)

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> CommonSettings:
        if self.environment == "production":
            problems = production_problems(self)
            if problems:
                raise ValueError("refusing the production profile: " + "; ".join(problems))
        return self

    environment: Literal["dev", "test", "production"] = "dev"
    # Bearer tokens on every HTTP API (edge.common.authn), verified against auth's JWKS at
    # EDGE_AUTH_URL (fetched again after EDGE_JWKS_CACHE_TTL seconds or for an unknown key).
    # Off only for debugging: production refuses it off on an address other hosts can reach.
    auth_enabled: bool = True
    auth_url: str = "http://127.0.0.1:8083"
    token_issuer: str = "dicom-edge"
    token_audience: str = "dicom-edge"
    jwks_cache_ttl: float = 300.0
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    database_url: str = DEV_DATABASE_URL
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = DEV_S3_ACCESS_KEY
    s3_secret_key: SecretStr = SecretStr(DEV_S3_SECRET_KEY)
    s3_bucket: str = "dicom"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    # Multipart part size for large objects: one part is held in memory per upload, so this
    # bounds what a large instance adds to a process (S3 allows 5 MiB to 5 GiB per part).
    s3_part_size: int = 8 << 20
    log_level: str = "INFO"
    # Deadline for one RPC round trip (seconds); callers map a timeout to a DICOM failure status.
    rpc_timeout: float = 5.0
    # Key of the HMAC-SHA-256 that stands for a Patient ID (and query values) in audit events:
    # without it a dictionary of IDs cannot be matched against the audit trail. Keep it stable:
    # a new key makes new hashes, so one patient's events before and after no longer match.
    audit_hash_key: SecretStr = SecretStr(DEV_AUDIT_HASH_KEY)

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> CommonSettings:
        if self.environment != "dev":
            if is_placeholder(self.s3_secret_key.get_secret_value()):
                raise ValueError(
                    "EDGE_S3_SECRET_KEY is still the development placeholder; "
                    "set a real secret or EDGE_ENVIRONMENT=dev"
                )
            if is_placeholder(self.audit_hash_key.get_secret_value()):
                raise ValueError(
                    "EDGE_AUDIT_HASH_KEY is still the development placeholder; "
                    "set a real secret or EDGE_ENVIRONMENT=dev"
                )
        return self
