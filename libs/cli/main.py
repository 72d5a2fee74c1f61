"""The ``edge`` command: run services, migrate, manage AEs, send and verify DICOM."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import ssl
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column, Table

from edge.auth.registry import IDENTITY_KINDS, PsycopgAERegistry, RemoteAE
from edge.cli import audit as auditing
from edge.cli import dicomtls, supervisor
from edge.cli import send as sending
from edge.cli import users as accounts

app = typer.Typer(no_args_is_help=True, help="DICOM Edge: the medical-image edge server.")
ae_app = typer.Typer(no_args_is_help=True, help="The registry of remote DICOM nodes.")
app.add_typer(ae_app, name="ae")
app.add_typer(auditing.app, name="audit")
app.add_typer(accounts.user_app, name="user")
console = Console()

SERVICES = supervisor.SERVICES
PortOption = Annotated[
    int | None,
    typer.Option(
        help=f"the node's port [{dicomtls.PLAIN_PORT}; with --tls {dicomtls.TLS_PORT}]",
        show_default=False,
    ),
]


@app.command()
def run(service: Annotated[str, typer.Argument(help=f"one of {', '.join(SERVICES)}")]) -> None:
    """Run one service in the foreground."""
    if service not in SERVICES:
        console.print(f"[red]unknown service {service!r}; choose from {', '.join(SERVICES)}[/]")
        raise typer.Exit(2)
    importlib.import_module(f"edge.{service}.__main__").main()


@app.command()
def up(
    dev: Annotated[
        bool, typer.Option(help="also start a local S3 server, create DB and bucket")
    ] = False,
    data_dir: Annotated[Path, typer.Option(help="where --dev keeps the S3 data")] = Path(".run"),
) -> None:
    """Run every service under one supervisor; Ctrl-C or SIGTERM stops them all."""
    raise typer.Exit(supervisor.run(dev=dev, data_dir=data_dir, console=console))


@app.command("migrate")
def migrate_cmd() -> None:
    """Create the database if missing and apply the catalog migrations (idempotent)."""
    from edge.common.catalog import create_database_if_missing, migrate
    from edge.common.settings import CommonSettings

    settings = CommonSettings()

    async def go() -> list[str]:
        await create_database_if_missing(settings.database_url)
        return await migrate(settings.database_url)

    applied = asyncio.run(go())
    console.print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")


def _registry() -> PsycopgAERegistry:
    from edge.common.settings import CommonSettings

    return PsycopgAERegistry(CommonSettings().database_url)


async def _announce(ae_title: str, change: str) -> str | None:
    """Tell running listeners to drop their admission cache for ``ae_title`` (best effort)."""
    from edge.common.bus import AioPikaBus
    from edge.common.events import AeChanged
    from edge.common.settings import CommonSettings

    try:
        bus = await AioPikaBus.connect(CommonSettings().amqp_url, "/edge/cli")
    except Exception as exc:
        return f"broker unreachable ({type(exc).__name__}); the change is NOT in the audit trail"
    try:
        # An admin change is audited (Security Alert, Security Configuration) before listeners
        # are told of it.
        unaudited = await auditing.record_ae_change(bus, ae_title, change)  # type: ignore[arg-type]
        try:
            await bus.publish(AeChanged(ae_title=ae_title, change=change))
        except Exception:
            note = "no listener is subscribed; it will read the registry when it starts"
            return unaudited or note
        return unaudited
    finally:
        await bus.close()


def _kinds(value: str) -> frozenset[str]:
    return frozenset(k.strip() for k in value.split(",") if k.strip())


def _put_ae(ae_factory: Callable[[], RemoteAE], title: str) -> None:
    try:
        ae = ae_factory()
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    created = asyncio.run(_registry().put(ae))
    console.print(f"{'added' if created else 'updated'} {title}")
    note = asyncio.run(_announce(title, "added" if created else "updated"))
    if note:
        console.print(f"[dim]{note}[/]")


IdentityOption = Annotated[
    str | None,
    typer.Option(
        "--identity",
        help="DICOM User Identity: none (not supported), optional, required",
    ),
]
KindsOption = Annotated[
    str | None,
    typer.Option("--identity-kinds", help="comma list of password,jwt (the kinds accepted)"),
]
TlsCertOption = Annotated[
    bool | None,
    typer.Option(
        "--tls-client-cert/--no-tls-client-cert",
        help="must associate over TLS with a client certificate naming this AE title",
    ),
]


@ae_app.command("add")
def ae_add(
    title: str,
    host: Annotated[list[str], typer.Option(help="address, CIDR or host name; repeatable")],
    port: Annotated[int, typer.Option(help="the node's DICOM port")],
    allow: Annotated[
        str, typer.Option(help="comma list of echo,store,find,move,get")
    ] = "echo,store",
    tls: Annotated[bool, typer.Option(help="TLS required for this node")] = False,
    move_destination: Annotated[bool, typer.Option(help="may be a C-MOVE destination")] = True,
    description: str = "",
    identity: IdentityOption = None,
    identity_kinds: KindsOption = None,
    tls_client_cert: TlsCertOption = None,
) -> None:
    """Register (or replace) a remote DICOM node."""
    _put_ae(
        lambda: RemoteAE(
            ae_title=title,
            hosts=tuple(host),
            port=port,
            permissions=_kinds(allow),
            tls_required=tls,
            move_destination=move_destination,
            description=description,
            user_identity=identity or "none",
            identity_kinds=_kinds(identity_kinds) if identity_kinds else frozenset(IDENTITY_KINDS),
            tls_client_cert=bool(tls_client_cert),
        ),
        title,
    )


@ae_app.command("update")
def ae_update(
    title: str,
    host: Annotated[list[str] | None, typer.Option(help="replaces the hosts; repeatable")] = None,
    port: Annotated[int | None, typer.Option(help="the node's DICOM port")] = None,
    allow: Annotated[
        str | None, typer.Option(help="comma list of echo,store,find,move,get")
    ] = None,
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls", help="TLS required")] = None,
    move_destination: Annotated[
        bool | None,
        typer.Option("--move-destination/--no-move-destination", help="a C-MOVE destination"),
    ] = None,
    description: str | None = None,
    identity: IdentityOption = None,
    identity_kinds: KindsOption = None,
    tls_client_cert: TlsCertOption = None,
) -> None:
    """Change what is given of a registered node; the rest stays."""
    current = asyncio.run(_registry().get(title))
    if current is None:
        console.print(f"[red]no AE {title!r} registered[/]")
        raise typer.Exit(1)
    changes: dict[str, Any] = {
        "hosts": tuple(host) if host else None,
        "port": port,
        "permissions": _kinds(allow) if allow is not None else None,
        "tls_required": tls,
        "move_destination": move_destination,
        "description": description,
        "user_identity": identity,
        "identity_kinds": _kinds(identity_kinds) if identity_kinds is not None else None,
        "tls_client_cert": tls_client_cert,
    }
    given = {name: value for name, value in changes.items() if value is not None}
    _put_ae(lambda: dataclasses.replace(current, **given), title)


def _terms(ae: RemoteAE) -> str:
    """What the registry asks of ``ae`` beyond its address and permissions, in a few words."""
    terms = []
    if ae.tls_required or ae.tls_client_cert:
        terms.append("TLS + client cert" if ae.tls_client_cert else "TLS")
    if ae.user_identity != "none":
        terms.append(f"identity {ae.user_identity}: {','.join(sorted(ae.identity_kinds))}")
    if not ae.move_destination:
        terms.append("not a move destination")
    return "; ".join(terms) or "-"


@ae_app.command("list")
def ae_list() -> None:
    """List the registered remote DICOM nodes."""
    table = Table(
        Column("AE title", no_wrap=True),
        Column("hosts", overflow="fold"),
        Column("port", no_wrap=True),
        Column("permissions", no_wrap=True),
        Column("terms", overflow="fold"),
        Column("description", overflow="fold"),
    )
    for ae in asyncio.run(_registry().list()):
        table.add_row(
            ae.ae_title,
            ", ".join(ae.hosts),
            str(ae.port),
            ",".join(sorted(ae.permissions)),
            _terms(ae),
            ae.description,
        )
    console.print(table)


@ae_app.command("remove")
def ae_remove(title: str) -> None:
    """Remove a remote DICOM node from the registry."""
    if not asyncio.run(_registry().remove(title)):
        console.print(f"[red]no AE {title!r} registered[/]")
        raise typer.Exit(1)
    console.print(f"removed {title}")
    note = asyncio.run(_announce(title, "removed"))
    if note:
        console.print(f"[dim]{note}[/]")


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="files or folders (recursed)")],
    ae: Annotated[str, typer.Option(help="called AE title")] = "EDGE",
    host: str = "127.0.0.1",
    port: PortOption = None,
    calling: Annotated[str, typer.Option(help="our (calling) AE title")] = "EDGESCU",
    tls: dicomtls.TlsOption = False,
    ca: dicomtls.CaOption = None,
    cert: dicomtls.CertOption = None,
    key: dicomtls.KeyOption = None,
    server_name: dicomtls.ServerNameOption = None,
) -> None:
    """Send DICOM files by C-STORE; exit non-zero if any was not stored."""
    port = dicomtls.port_for(port, tls)
    tls_args = _tls_args(tls, host, ca, cert, key, server_name)
    files, skipped = sending.discover(paths)
    for path, reason in skipped:
        console.print(f"[yellow]skipped {path}: {reason}[/]")
    statuses: Counter[str] = Counter()
    failures: list[str] = []

    with Progress(
        TextColumn("C-STORE"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task("send", total=len(files))

        def on_result(item: sending.Outgoing, status: int | None, comment: str) -> None:
            label = "no response" if status is None else f"0x{status:04X}"
            statuses[label] += 1
            if status not in (0x0000, 0xB000, 0xB007, 0xB006):
                failures.append(f"{item.path}: {label} {comment}".rstrip())
            progress.advance(task)

        for batch in sending.batches(files):
            sending.send_batch(
                batch,
                called_ae=ae,
                host=host,
                port=port,
                calling_ae=calling,
                on_result=on_result,
                tls_args=tls_args,
            )
    table = Table("status", "instances")
    for label, count in sending.summarize(statuses):
        table.add_row(label, str(count))
    console.print(table)
    for line in failures[:20]:
        console.print(f"[red]{line}[/]")
    if failures or not files:
        raise typer.Exit(1)


@app.command()
def echo(
    ae: Annotated[str, typer.Option(help="called AE title")] = "EDGE",
    host: str = "127.0.0.1",
    port: PortOption = None,
    calling: Annotated[str, typer.Option(help="our (calling) AE title")] = "EDGESCU",
    tls: dicomtls.TlsOption = False,
    ca: dicomtls.CaOption = None,
    cert: dicomtls.CertOption = None,
    key: dicomtls.KeyOption = None,
    server_name: dicomtls.ServerNameOption = None,
) -> None:
    """Verify a DICOM node with C-ECHO (PS3.4 Annex A), over DICOM TLS with --tls."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from edge.common.dimse import NODELAY_HANDLER

    port = dicomtls.port_for(port, tls)
    tls_args = _tls_args(tls, host, ca, cert, key, server_name)
    node = f"{ae}@{host}:{port}{' (TLS)' if tls else ''}"
    client = AE(ae_title=calling)
    client.acse_timeout = client.dimse_timeout = client.network_timeout = 10
    client.add_requested_context(Verification)
    with dicomtls.connection_failures() as reasons:
        assoc = client.associate(
            host, port, ae_title=ae, evt_handlers=[NODELAY_HANDLER], tls_args=tls_args
        )
    if not assoc.is_established:
        if assoc.is_rejected:
            console.print(f"[red]rejected by {node}[/]")
        else:
            console.print(f"[red]no association with {node}{dicomtls.failure(reasons)}[/]")
        raise typer.Exit(1)
    status = assoc.send_c_echo()
    assoc.release()
    code = getattr(status, "Status", None)
    if code != 0:
        console.print(f"[red]C-ECHO failed: {code}[/]")
        raise typer.Exit(1)
    console.print(f"C-ECHO to {node}: success")


def _tls_args(
    tls: bool,
    host: str,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    server_name: str | None,
) -> tuple[ssl.SSLContext, str] | None:
    """The client context of --tls (exit 2 with the reason when its files do not load)."""
    if not tls:
        if any(option is not None for option in (ca, cert, key, server_name)):
            console.print("[red]--ca, --cert, --key and --server-name need --tls[/]")
            raise typer.Exit(2)
        return None
    try:
        return dicomtls.tls_args(host=host, ca=ca, cert=cert, key=key, server_name=server_name)
    except dicomtls.TlsOptionError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc


@app.command()
def watch(
    event_types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            metavar="EVENT",
            help="event name or pattern (study.*); repeatable; default all",
        ),
    ] = None,
    queue: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="durable quorum queue to resume from (default: private)"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one structured-mode CloudEvent per line")
    ] = False,
    count: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="exit after N events (exit 1 if fewer came)"),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0, metavar="S", help="exit after S seconds")
    ] = None,
) -> None:
    """Print the events on edge.events as they arrive; Ctrl-C stops."""
    from edge.cli import watch as watching
    from edge.common.settings import CommonSettings

    options = watching.WatchOptions(
        routing_keys=tuple(event_types or (watching.ALL,)),
        queue=queue,
        as_json=as_json,
        count=count,
        timeout=timeout,
    )
    raise typer.Exit(watching.run(CommonSettings().amqp_url, options, console))


app.command("token")(accounts.token)

if __name__ == "__main__":  # `python -m edge.cli.main`, as the dev suite runs it
    app()
