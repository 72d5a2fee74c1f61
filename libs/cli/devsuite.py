"""A whole suite on private ports, as ``make run`` starts it: for e2e tests and benchmarks.

Each instance gets its own RabbitMQ virtual host, database, bucket, S3 server and ports, so it
can run beside a developer's ``make run`` and beside other instances.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from edge.cli.supervisor import is_ready
from edge.common.netutil import free_ports
from edge.common.tls import DevPki, ensure_dev_pki

AMQP_BASE = "amqp://guest:guest@127.0.0.1:5672"
PG_BASE = "postgresql://postgres@127.0.0.1:5432"


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: Nagle off (Debian's DCMTK reads TCP_NODELAY)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(tool: str) -> str:
    """The DCMTK binary, never pynetdicom's same-named console scripts in the venv."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        candidate = Path(folder) / tool
        if candidate.exists():
            return str(candidate)
    raise FileNotFoundError(f"DCMTK's {tool} is not installed (apt-get install dcmtk)")


def _rabbitmqctl(*args: str, node: Sequence[str] = ()) -> None:
    subprocess.run(["rabbitmqctl", *node, *args], check=True, capture_output=True, timeout=60)


def create_vhost(name: str, node: Sequence[str] = ()) -> None:
    """A RabbitMQ virtual host of its own, open to guest: isolation for one suite or module.

    ``node``: global ``rabbitmqctl`` options naming another node than the local default one.
    """
    _rabbitmqctl("add_vhost", name, node=node)
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*", node=node)


def delete_vhost(name: str, node: Sequence[str] = ()) -> None:
    """Remove a virtual host and everything in it (absent is fine)."""
    subprocess.run(["rabbitmqctl", *node, "delete_vhost", name], capture_output=True, timeout=60)


@dataclass
class DevSuite:
    """``edge up --dev`` in a child process with an environment of its own."""

    work_dir: Path
    ae_title: str = "EDGE"
    extra_env: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: f"edge_{uuid.uuid4().hex[:10]}")
    process: subprocess.Popen[bytes] | None = None
    # Another broker than the local one (a test's private node): its AMQP URL without a vhost,
    # and the global rabbitmqctl options that reach it (e.g. ``-n node --erlang-cookie c``).
    amqp_base: str = AMQP_BASE
    rabbitmqctl_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        (
            self.dicom_port,
            self.http_port,
            self.ingestion_port,
            self.storage_port,
            self.auth_port,
            self.query_port,
            self.retrieval_port,
            self.s3_port,
            self.tls_port,
            *self.s3_internal_ports,
        ) = free_ports(9 + 7)
        self.vhost = self.name
        self.amqp_url = f"{self.amqp_base}/{self.vhost}"
        self.database_url = f"{PG_BASE}/{self.name}"
        self.bucket = self.name.replace("_", "-")
        self.s3_endpoint = f"127.0.0.1:{self.s3_port}"
        self.log_path = self.work_dir / "suite.log"
        self.auth_url = f"http://127.0.0.1:{self.auth_port}"
        # `edge up --dev` creates the first admin with this password; other roles are made on
        # first use by user(); tokens are cached until shortly before they expire.
        self.admin_password = secrets.token_urlsafe(18)
        self._users: dict[str, tuple[str, str]] = {"admin": ("admin", self.admin_password)}
        self._tokens: dict[str, tuple[str, float]] = {}

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "EDGE_ENVIRONMENT": "dev",
            "EDGE_AMQP_URL": self.amqp_url,
            "EDGE_DATABASE_URL": self.database_url,
            "EDGE_S3_ENDPOINT": self.s3_endpoint,
            "EDGE_S3_BUCKET": self.bucket,
            "EDGE_AE_TITLE": self.ae_title,
            "EDGE_DICOM_HOST": "127.0.0.1",
            "EDGE_DICOM_PORT": str(self.dicom_port),
            "EDGE_TLS_PORT": str(self.tls_port),
            "EDGE_HTTP_HOST": "127.0.0.1",
            "EDGE_HTTP_PORT": str(self.http_port),
            "EDGE_INGESTION_HTTP_PORT": str(self.ingestion_port),
            "EDGE_STORAGE_HTTP_PORT": str(self.storage_port),
            "EDGE_AUTH_HTTP_PORT": str(self.auth_port),
            "EDGE_QUERY_HTTP_PORT": str(self.query_port),
            "EDGE_RETRIEVAL_HTTP_PORT": str(self.retrieval_port),
            "EDGE_AUTH_URL": self.auth_url,
            "EDGE_ADMIN_PASSWORD": self.admin_password,
            # SeaweedFS's seven internal ports, picked with the others so none is picked twice.
            "EDGE_DEV_S3_INTERNAL_PORTS": ",".join(map(str, self.s3_internal_ports)),
            "TCP_NODELAY": "1",
            **self.extra_env,
        }

    @property
    def pki(self) -> DevPki:
        """The suite's development CA and certificates (``edge up --dev`` makes them at start;
        :func:`ensure_dev_pki` adds client certificates for AE titles)."""
        return DevPki(self.work_dir / "data" / "tls")

    def client_certificate(self, ae_title: str) -> tuple[Path, Path]:
        """``(certificate, key)`` naming ``ae_title`` (CN and SAN DNS), signed by the suite's CA."""
        pki = ensure_dev_pki(self.pki.folder, (ae_title,))
        return pki.client_cert(ae_title), pki.client_key(ae_title)

    def edge(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the ``edge`` CLI against this suite."""
        return subprocess.run(
            [sys.executable, "-m", "edge.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    def user(self, role: str) -> tuple[str, str]:
        """``(name, password)`` of a user with ``role``, created on first use."""
        if role not in self._users:
            from edge.auth.passwords import hash_password
            from edge.auth.users import PsycopgUserStore

            name, password = f"test-{role}", secrets.token_urlsafe(18)
            store = PsycopgUserStore(self.database_url)
            # In a thread of its own: callers may be inside a running event loop.
            hashed = hash_password(password)

            async def ensure() -> None:
                # A database that outlives suites (a benchmark's loaded catalog) may hold the
                # user already, with another suite's password.
                if not await store.add(name, role, hashed):
                    await store.set_password(name, hashed)
                    await store.set_locked(name, False)

            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, ensure()).result()
            self._users[role] = (name, password)
        return self._users[role]

    def token(self, role: str = "admin") -> str:
        """A bearer token for a user with ``role`` from auth's token endpoint (cached)."""
        from edge.cli.users import request_token

        cached = self._tokens.get(role)
        if cached is None or cached[1] - time.monotonic() < 60:
            name, password = self.user(role)
            answer = request_token(self.auth_url, name, password)
            expires = time.monotonic() + float(answer["expires_in"])
            cached = self._tokens[role] = (str(answer["access_token"]), expires)
        return cached[0]

    def auth_headers(self, role: str = "admin") -> dict[str, str]:
        """``{"Authorization": "Bearer <token>"}`` for a user with ``role``."""
        return {"Authorization": f"Bearer {self.token(role)}"}

    def start(self, timeout: float = 90.0) -> DevSuite:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        create_vhost(self.vhost, self.rabbitmqctl_args)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge.cli.main",
                "up",
                "--dev",
                "--data-dir",
                str(self.work_dir / "data"),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        ports = (
            self.http_port,
            self.ingestion_port,
            self.storage_port,
            self.auth_port,
            self.query_port,
            self.retrieval_port,
        )
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"suite exited early:\n{self.log_path.read_text()[-4000:]}")
            if all(is_ready(p) for p in ports):
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"suite not ready in {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        delete_vhost(self.vhost, self.rabbitmqctl_args)
        try:
            with psycopg.connect(f"{PG_BASE}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        except psycopg.Error:
            pass
        shutil.rmtree(self.work_dir / "data", ignore_errors=True)

    def __enter__(self) -> DevSuite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
