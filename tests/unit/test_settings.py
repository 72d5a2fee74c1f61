"""Settings refuse placeholder secrets outside the dev environment."""

import pytest
from pydantic import ValidationError

from edge.common.settings import CommonSettings


@pytest.mark.parametrize(
    "secret", ["edge-dev-secret-change-me", "CHANGE_ME", "prefix-Change-Me", ""]
)
def test_placeholder_s3_secret_is_refused_in_production(secret: str) -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        CommonSettings(environment="production", s3_secret_key=secret)


def test_real_secret_is_accepted_in_production_and_placeholder_in_dev() -> None:
    assert (
        CommonSettings(
            environment="production",
            s3_secret_key="x9-long-random",
            audit_hash_key="k3y-random",
            # The other credentials real too (test_production_safety.py refuses each).
            amqp_url="amqp://edge:s3cr3t@rabbitmq:5672/",
            database_url="postgresql://edge:s3cr3t@postgres:5432/edge",
            s3_access_key="site-key",
        ).environment
        == "production"
    )
    assert CommonSettings(environment="dev").s3_secret_key.get_secret_value().endswith("change-me")


def test_placeholder_audit_hash_key_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="EDGE_AUDIT_HASH_KEY"):
        CommonSettings(environment="test", s3_secret_key="x9-long-random")


def test_real_audit_hash_key_is_accepted_outside_dev() -> None:
    settings = CommonSettings(environment="test", s3_secret_key="x9", audit_hash_key="k3y")
    assert settings.audit_hash_key.get_secret_value() == "k3y"
