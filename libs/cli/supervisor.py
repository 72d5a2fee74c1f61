"""``edge up``: every service as a child process, stopped in order on Ctrl-C or SIGTERM.

With ``--dev`` it also starts a local S3 server (SeaweedFS), creates the database and the bucket
and applies the migrations: what ``make run`` needs on a fresh machine.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console

from edge.auth.settings import AuthSettings
from edge.common.bus import AioPikaBus
from edge.common.catalog import create_database_if_missing, migrate
from edge.common.s3server import DEFAULT_S3_PORT, SeaweedPorts, SeaweedServer
from edge.common.settings import CommonSettings
from edge.common.store import MinioObjectStore
from edge.ingestion.settings import IngestionSettings
from edge.listener.settings import ListenerSettings
from edge.query.settings import QuerySettings
from edge.retrieval.settings import RetrievalSettings
from edge.storage.settings import StorageSettings

# Start order: auth answers admission, query answers C-FIND and retrieval C-MOVE/C-GET before
# the listener accepts; stop in reverse.
SERVICES = ("auth", "storage", "ingestion", "query", "retrieval", "listener")
STOP_GRACE = 30.0


# Each service reads EDGE_HTTP_PORT (one service per container). On one host the listener keeps
# EDGE_HTTP_PORT and the others take EDGE_<SERVICE>_HTTP_PORT, passed down as their EDGE_HTTP_PORT.
DEFAULT_HTTP_PORTS = {
    "auth": AuthSettings.model_fields["http_port"].default,
    "storage": StorageSettings.model_fields["http_port"].default,
    "ingestion": IngestionSettings.model_fields["http_port"].default,
    "query": QuerySettings.model_fields["http_port"].default,
    "retrieval": RetrievalSettings.model_fields["http_port"].default,
}


def http_port(service: str) -> int:
    if service == "listener":
        return ListenerSettings().http_port
    return int(os.environ.get(f"EDGE_{service.upper()}_HTTP_PORT", DEFAULT_HTTP_PORTS[service]))


async def prepare(settings: CommonSettings) -> list[str]:
    """Database, migrations, bucket and broker topology: idempotent, safe on every start."""
    await create_database_if_missing(settings.database_url)
    applied = await migrate(settings.database_url)
    await asyncio.to_thread(MinioObjectStore.from_settings(settings).ensure_bucket)
    bus = await AioPikaBus.connect(settings.amqp_url, "/edge/cli")
    await bus.close()
    return applied


async def ensure_first_admin(settings: CommonSettings) -> str | None:
    """With no admin yet, create ``admin`` with ``EDGE_ADMIN_PASSWORD`` or a random password,
    and say so (the random one is shown this once); None when an admin exists."""
    from edge.auth.hooks import _audit_admin_change
    from edge.auth.passwords import check_password_policy, hash_password
    from edge.auth.users import PsycopgUserStore

    users = PsycopgUserStore(settings.database_url)
    if await users.count_role("admin"):
        return None
    given = os.environ.get("EDGE_ADMIN_PASSWORD")
    password = given or secrets.token_urlsafe(15)
    check_password_policy(password)
    if not await users.add("admin", "admin", await asyncio.to_thread(hash_password, password)):
        return None
    _audit_admin_change(None, "edge up --dev", "admin", "added", roles=("admin",))
    if given:
        return "  first admin user [bold]admin[/], password from EDGE_ADMIN_PASSWORD"
    return (
        f"  first admin user [bold]admin[/], password [bold]{password}[/] (shown once; "
        "`edge user passwd admin` changes it)"
    )


def use_dev_pki(data_dir: Path) -> None:
    """A development CA and server certificate under ``data_dir/tls`` (made once), used for
    DICOM TLS by every child unless EDGE_TLS_* name other files."""
    from edge.common.tls import ensure_dev_pki

    pki = ensure_dev_pki(data_dir / "tls")
    os.environ.setdefault("EDGE_TLS_CERT_FILE", str(pki.server_cert.resolve()))
    os.environ.setdefault("EDGE_TLS_KEY_FILE", str(pki.server_key.resolve()))
    os.environ.setdefault("EDGE_TLS_CA_FILE", str(pki.ca.resolve()))


def start_dev_s3(settings: CommonSettings, data_dir: Path) -> SeaweedServer:
    port = int(urlsplit(f"//{settings.s3_endpoint}").port or DEFAULT_S3_PORT)
    # The developer instance keeps SeaweedFS's internal ports fixed; any other instance (tests,
    # benchmarks beside a running `make run`) takes free ones so that both can run at once.
    # DevSuite picks them together with the suite's own ports and passes them down in
    # EDGE_DEV_S3_INTERNAL_PORTS: two separate picks could hand the same port to both.
    if picked := os.environ.get("EDGE_DEV_S3_INTERNAL_PORTS"):
        internal = SeaweedPorts(port, *(int(p) for p in picked.split(",")))
    elif port == DEFAULT_S3_PORT:
        internal = SeaweedPorts.defaults()
    else:
        internal = SeaweedPorts.ephemeral()
    server = SeaweedServer(
        data_dir / "s3",
        s3_port=port,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        master_port=internal.master,
        volume_port=internal.volume,
        filer_port=internal.filer,
        s3_grpc_port=internal.s3_grpc,
        master_grpc_port=internal.master_grpc,
        volume_grpc_port=internal.volume_grpc,
        filer_grpc_port=internal.filer_grpc,
        log_path=data_dir / "s3.log",
    )
    server.start()
    return server


@dataclass
class Child:
    service: str
    process: subprocess.Popen[bytes]
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)


def spawn(service: str) -> subprocess.Popen[bytes]:
    # Own session: a Ctrl-C reaches the supervisor only, which then stops children in order.
    # Every service fetches auth's JWKS to verify tokens: tell them where auth listens.
    env = {
        **os.environ,
        "EDGE_HTTP_PORT": str(http_port(service)),
        "EDGE_AUTH_URL": os.environ.get("EDGE_AUTH_URL", f"http://127.0.0.1:{http_port('auth')}"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", f"edge.{service}"], env=env, start_new_session=True
    )


def is_ready(port: int) -> bool:
    """True when the service on ``port`` answers 200 on /readyz (its dependencies answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_ready(services: tuple[str, ...], timeout: float = 60.0) -> list[str]:
    """Poll each service's /readyz; return those not ready in time."""
    pending = set(services)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending -= {service for service in pending if is_ready(http_port(service))}
        time.sleep(0.2)
    return sorted(pending)


def banner(console: Console, settings: CommonSettings) -> None:
    listener = ListenerSettings()
    console.print(f"[bold green]DICOM Edge is up[/]  (environment: {settings.environment})")
    console.print(
        f"  DICOM      AE title [bold]{listener.ae_title}[/] on port {listener.dicom_port}"
    )
    if listener.tls_cert_file is not None and listener.tls_key_file is not None:
        ca = f", CA {listener.tls_ca_file}" if listener.tls_ca_file else ""
        ca += f", CRL {listener.tls_crl_file}" if listener.tls_crl_file else ""
        console.print(f"  DICOM TLS  port {listener.tls_port}{ca}")
    for service in SERVICES:
        console.print(f"  {service:<10} http://127.0.0.1:{http_port(service)}/readyz")
    console.print(f"  S3         http://{settings.s3_endpoint}  bucket {settings.s3_bucket}")
    viewer = f"http://127.0.0.1:{listener.http_port}/viewer/"
    if listener.viewer_dir is None or not (listener.viewer_dir / "index.html").is_file():
        viewer += "  (not installed: `make viewer`, then EDGE_VIEWER_DIR)"
    console.print(f"  viewer     {viewer}")
    console.print("  Ctrl-C stops everything.")


def run(*, dev: bool, data_dir: Path, console: Console) -> int:
    settings = CommonSettings()
    s3: SeaweedServer | None = None
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    children: list[Child] = []
    admin: str | None = None
    try:
        if dev:
            data_dir.mkdir(parents=True, exist_ok=True)
            console.print(f"starting S3 server on {settings.s3_endpoint} (data in {data_dir})")
            s3 = start_dev_s3(settings, data_dir)
            applied = asyncio.run(prepare(settings))
            console.print(f"database ready; migrations applied now: {applied or 'none'}")
            admin = asyncio.run(ensure_first_admin(settings))
            use_dev_pki(data_dir)
        children = [Child(service, spawn(service)) for service in SERVICES]
        not_ready = wait_ready(SERVICES)
        if not_ready:
            console.print(f"[yellow]not ready yet: {', '.join(not_ready)}[/]")
        banner(console, settings)
        if admin:
            console.print(admin)
        while not stopping:
            for child in children:
                code = child.process.poll()
                if code is not None and not stopping:
                    # Crash-only services: restart with a backoff that grows with each crash in
                    # a row; a child that ran for a minute starts the count again.
                    if time.monotonic() - child.started > 60:
                        child.restarts = 0
                    delay = min(2**child.restarts, 30)
                    console.print(
                        f"[red]{child.service} exited with {code}; restart in {delay}s[/]"
                    )
                    time.sleep(delay)
                    child.process, child.restarts = spawn(child.service), child.restarts + 1
                    child.started = time.monotonic()
            time.sleep(0.2)
    finally:
        for child in reversed(children):
            stop_child(child)
        if s3 is not None:
            s3.stop()
        console.print("stopped")
    return 0


def stop_child(child: Child) -> None:
    process = child.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
