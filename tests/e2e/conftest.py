"""The running suite, started as ``make run`` starts it, driven by real clients."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import requests

from edge.cli.devsuite import DevSuite, dcmtk, dcmtk_env
from edge.common.settings import DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY
from edge.common.store import MinioObjectStore

STORE_AE = "STORESCU"


class SuiteBearer(httpx.Auth, requests.auth.AuthBase):
    """Bearer token of a ``role`` user of ``suite`` on every request (httpx or requests: the
    DICOMweb client), fetched again as it nears expiry: a module may outlive one token."""

    def __init__(self, suite: DevSuite, role: str) -> None:
        self.suite = suite
        self.role = role

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.suite.token(self.role)}"
        yield request

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.suite.token(self.role)}"
        return request


def http_client(suite: DevSuite, role: str = "radiologist", **options: Any) -> httpx.Client:
    """An httpx client that sends a ``role`` user's token (radiologist: search, retrieve,
    store)."""
    return httpx.Client(auth=SuiteBearer(suite, role), **{"timeout": 60, **options})


def web_session(suite: DevSuite, role: str = "radiologist") -> requests.Session:
    """A requests session for ``DICOMwebClient(url, session=...)`` with a ``role`` user's token."""
    session = requests.Session()
    session.auth = SuiteBearer(suite, role)
    return session


class Client:
    """What a test needs around a running suite: DCMTK tools, the catalog and the bucket."""

    def __init__(self, suite: DevSuite) -> None:
        self.suite = suite
        self.store = MinioObjectStore(
            suite.s3_endpoint, DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY, suite.bucket
        )

    def dcmtk(
        self, tool: str, *args: str, aet: str = STORE_AE, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                dcmtk(tool),
                "-aet",
                aet,
                "-aec",
                self.suite.ae_title,
                *args,
                "127.0.0.1",
                str(self.suite.dicom_port),
            ],
            env=dcmtk_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def storescu(
        self, files: list[Path], *options: str, aet: str = STORE_AE
    ) -> subprocess.CompletedProcess[str]:
        # Without -nh, storescu halts and exits non-zero on the first refused instance; -v logs
        # each response ("Received Store Response (Success)").
        return subprocess.run(
            [
                dcmtk("storescu"),
                "-aet",
                aet,
                "-aec",
                self.suite.ae_title,
                "-v",
                "-R",
                *options,
                "127.0.0.1",
                str(self.suite.dicom_port),
                *map(str, files),
            ],
            env=dcmtk_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )

    def query(self, sql: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.suite.database_url) as conn:
            return conn.execute(sql, params).fetchall()

    def instance_count(self) -> int:
        return int(self.query("SELECT count(*) FROM instance")[0][0])

    def object_count(self) -> int:
        return sum(1 for _ in self.store.list("studies/"))

    def wait_for_instances(self, expected: int, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        count = self.instance_count()
        while count < expected and time.monotonic() < deadline:
            time.sleep(0.1)
            count = self.instance_count()
        return count

    def queue_depth(self, queue: str = "ingestion.instance-received") -> int:
        out = subprocess.run(
            [
                "rabbitmqctl",
                *self.suite.rabbitmqctl_args,
                "-q",
                "list_queues",
                "-p",
                self.suite.vhost,
                "name",
                "messages",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        raise LookupError(queue)


def start_suite(tmp: Path, **options: Any) -> DevSuite:
    """A running suite with STORESCU registered; ``options`` go to :class:`DevSuite`."""
    suite = DevSuite(tmp, **options).start()
    try:
        suite.edge(
            "ae", "add", STORE_AE, "--host", "127.0.0.1", "--port", "11119", "--allow", "echo,store"
        )
    except BaseException:
        suite.stop()  # else its services outlive the run (the fixture never got to yield it)
        raise
    return suite


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSuite]:
    started = start_suite(tmp_path_factory.mktemp("suite"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def client(suite: DevSuite) -> Client:
    return Client(suite)
