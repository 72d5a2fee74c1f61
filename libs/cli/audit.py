"""``edge audit``: check the audit trail's hash chain; and what the CLI itself records."""

from __future__ import annotations

import asyncio
import getpass
from typing import Literal

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="The audit trail (append-only, hash-chained).")
console = Console()


@app.command()
def verify() -> None:
    """Recompute the hash chain of the audit trail; exit 1 naming the first row that breaks it."""
    from edge.auth.auditlog import PsycopgAuditLog
    from edge.common.settings import CommonSettings

    checked, broken = asyncio.run(PsycopgAuditLog(CommonSettings().database_url).verify())
    if broken is not None:
        console.print(f"[red]{broken}[/] ({checked} row(s) read)")
        raise typer.Exit(1)
    console.print(f"audit chain intact: {checked} row(s)")


def actor() -> str:
    """Who runs the CLI, as the audit trail names them: ``cli:<OS user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


async def record_ae_change(
    bus: object, title: str, change: Literal["added", "updated", "removed"]
) -> str | None:
    """Publish the audit event of an AE registry edit on ``bus`` (confirmed); a note when it
    could not be published."""
    from edge.common.audit import Auditor
    from edge.common.bus import AioPikaBus
    from edge.common.settings import CommonSettings

    assert isinstance(bus, AioPikaBus)
    recorder = Auditor(None, source="edge-cli", hash_key=CommonSettings().audit_hash_key)
    recorder.ae_changed(actor(), title, change)
    try:
        for event in recorder.pending:
            await bus.publish(event)
    except Exception as exc:
        return f"the change is NOT in the audit trail: {type(exc).__name__}"
    return None
