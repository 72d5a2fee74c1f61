"""The production profile refuses to start unsafe: authentication off where other hosts reach
the HTTP APIs, or default and placeholder credentials. One test per refusal."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from edge.auth.settings import AuthSettings
from edge.common.settings import CommonSettings
from edge.listener.settings import ListenerSettings

# A production configuration with nothing to refuse; each test spoils one thing.
SAFE: dict[str, Any] = {
    "environment": "production",
    "amqp_url": "amqp://edge:s3cr3t-broker@rabbitmq:5672/",
    "database_url": "postgresql://edge:s3cr3t-db@postgres:5432/edge",
    "s3_access_key": "AKIA-site-key",
    "s3_secret_key": "x9-long-random",
    "audit_hash_key": "k3y-long-random",
}


def production(cls: type[CommonSettings] = CommonSettings, **changes: Any) -> CommonSettings:
    values = {**SAFE, **changes}
    values = {k: v for k, v in values.items() if k in cls.model_fields}
    return cls(**values)


def test_a_safe_production_configuration_starts() -> None:
    assert production(ListenerSettings).environment == "production"
    assert production(AuthSettings).auth_enabled


def test_authentication_off_on_a_public_address_is_refused() -> None:
    with pytest.raises(ValidationError, match="EDGE_AUTH_ENABLED=false"):
        production(ListenerSettings, auth_enabled=False, http_host="0.0.0.0")


def test_authentication_off_on_loopback_is_allowed() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        settings = production(ListenerSettings, auth_enabled=False, http_host=host)
        assert not settings.auth_enabled


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@rabbitmq:5672/",
        "amqp://rabbitmq:5672/",
        "amqp://CHANGE_ME:CHANGE_ME@CHANGE_ME:5672/",
        "amqp://edge:edge-dev-amqp-change-me@rabbitmq:5672/",
    ],
)
def test_default_or_placeholder_broker_credentials_are_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="EDGE_AMQP_URL"):
        production(amqp_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:5432/edge",
        "postgresql://CHANGE_ME:CHANGE_ME@CHANGE_ME:5432/edge",
        "postgresql://edge:edge-dev-db-change-me@postgres:5432/edge",
    ],
)
def test_default_or_placeholder_database_credentials_are_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="EDGE_DATABASE_URL"):
        production(database_url=url)


@pytest.mark.parametrize("key", ["edge-dev-access", "CHANGE_ME", ""])
def test_default_or_placeholder_s3_access_key_is_refused(key: str) -> None:
    with pytest.raises(ValidationError, match="EDGE_S3_ACCESS_KEY"):
        production(s3_access_key=key)


def test_placeholder_s3_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="EDGE_S3_SECRET_KEY"):
        production(s3_secret_key="edge-dev-secret-change-me")


def test_dev_keeps_its_defaults_and_authentication() -> None:
    settings = ListenerSettings(environment="dev")
    assert settings.auth_enabled is True
    assert settings.amqp_url.startswith("amqp://guest:guest@")
