"""Fixtures for every test: the real broker, database and S3 server on 127.0.0.1."""

pytest_plugins = ["tests.fixtures.amqp", "tests.fixtures.s3", "tests.fixtures.pg"]
pytest_plugins += ["tests.fixtures.private_broker"]
