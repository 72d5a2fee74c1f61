"""``edge user ...`` (accounts in auth's database) and ``edge token`` (a bearer token from auth's
token endpoint, for scripts)."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edge.auth.hooks import Change, _audit_admin_change
from edge.auth.passwords import check_password_policy, hash_password
from edge.auth.users import PsycopgUserStore, check_role, check_username
from edge.common.authn import ROLES
from edge.common.events import TokensRevoked

user_app = typer.Typer(no_args_is_help=True, help="Users of the HTTP APIs and their roles.")
console = Console()
notes = Console(stderr=True)


# Revocations the store committed in this command, announced with its audit event.
_revoked: list[TokensRevoked] = []


def _store() -> PsycopgUserStore:
    from edge.common.settings import CommonSettings

    return PsycopgUserStore(CommonSettings().database_url, on_revoked=_revoked.append)


def _audit(login: str, change: Change, roles: tuple[str, ...] = ()) -> None:
    """Publish the Security Alert of a user account change (confirmed), then the revocation of
    the user's tokens if the change made one (``auth.tokens_revoked``: every service refuses
    them from then on); say so when either could not be published (the change itself is
    made)."""
    from edge.cli.audit import actor
    from edge.common.audit import Auditor
    from edge.common.bus import AioPikaBus
    from edge.common.settings import CommonSettings

    settings = CommonSettings()
    recorder = Auditor(None, source="edge-cli", hash_key=settings.audit_hash_key)
    _audit_admin_change(recorder, actor(), login, change, roles=roles)

    async def publish() -> tuple[str | None, str | None]:
        try:
            bus = await AioPikaBus.connect(settings.amqp_url, "/edge/cli")
        except Exception as exc:
            failure = f"broker unreachable ({type(exc).__name__})"
            return failure, failure
        unaudited = unannounced = None
        try:
            try:
                for event in recorder.pending:
                    await bus.publish(event)
            except Exception as exc:
                unaudited = type(exc).__name__
            try:
                # Not mandatory: no service running is no error (each loads the map at start).
                for revoked in _revoked:
                    await bus.publish(revoked, mandatory=False)
            except Exception as exc:
                unannounced = type(exc).__name__
        finally:
            await bus.close()
        return unaudited, unannounced

    unaudited, unannounced = asyncio.run(publish())
    if unaudited:
        console.print(f"[yellow]the change is NOT in the audit trail: {unaudited}[/]")
    if _revoked and unannounced:
        console.print(
            f"[yellow]services were NOT told of the revoked tokens ({unannounced}): they learn "
            "it when they reconnect to the broker; the tokens expire within their lifetime[/]"
        )
    _revoked.clear()


def _new_password(password: str | None) -> str:
    """``password`` if given, else asked twice without echo; checked against the policy."""
    if password is None:
        password = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != password:
            console.print("[red]the passwords differ[/]")
            raise typer.Exit(2)
    try:
        check_password_policy(password)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    return password


@user_app.command("add")
def user_add(
    name: str,
    role: Annotated[str, typer.Option(help=f"one of {', '.join(ROLES)}")],
    password: Annotated[
        str | None, typer.Option(help="the password (asked for when not given)")
    ] = None,
) -> None:
    """Create a user with one role."""
    try:
        check_username(name)
        check_role(role)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    secret = _new_password(password)
    if not asyncio.run(_store().add(name, role, hash_password(secret))):
        console.print(f"[red]user {name!r} exists; `edge user passwd` changes the password[/]")
        raise typer.Exit(1)
    _audit(name, "added", (role,))
    console.print(f"added {name} ({role})")


@user_app.command("passwd")
def user_passwd(
    name: str,
    password: Annotated[
        str | None, typer.Option(help="the new password (asked for when not given)")
    ] = None,
) -> None:
    """Set a user's password."""
    secret = _new_password(password)
    if not asyncio.run(_store().set_password(name, hash_password(secret))):
        console.print(f"[red]no user {name!r}[/]")
        raise typer.Exit(1)
    _audit(name, "password")
    console.print(f"password of {name} changed")


@user_app.command("role")
def user_role(
    name: str, role: Annotated[str, typer.Argument(help=f"one of {', '.join(ROLES)}")]
) -> None:
    """Give a user another role; the tokens issued with the old one stop working."""
    try:
        check_role(role)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    if not asyncio.run(_store().set_role(name, role)):
        console.print(f"[red]no user {name!r}[/]")
        raise typer.Exit(1)
    _audit(name, "updated", (role,))
    console.print(f"{name} is now {role}")


@user_app.command("list")
def user_list() -> None:
    """List the users, their roles and lockout state."""
    table = Table("user", "role", "state", "failures", "last login")
    for user in asyncio.run(_store().list()):
        if user.disabled:
            state = "locked by admin"
        elif user.locked:
            state = f"locked until {user.locked_until:%Y-%m-%d %H:%M:%S %Z}"
        else:
            state = "active"
        last = f"{user.last_login_at:%Y-%m-%d %H:%M:%S %Z}" if user.last_login_at else "never"
        table.add_row(user.username, user.role, state, str(user.failed_attempts), last)
    console.print(table)


def _set_locked(name: str, locked: bool) -> None:
    if not asyncio.run(_store().set_locked(name, locked)):
        console.print(f"[red]no user {name!r}[/]")
        raise typer.Exit(1)
    _audit(name, "locked" if locked else "unlocked")
    console.print(f"{'locked' if locked else 'unlocked'} {name}")


@user_app.command("lock")
def user_lock(name: str) -> None:
    """Lock a user out until unlocked; the tokens already issued stop working."""
    _set_locked(name, True)


@user_app.command("unlock")
def user_unlock(name: str) -> None:
    """Unlock a user, also clearing a lockout after failed logins."""
    _set_locked(name, False)


@user_app.command("revoke")
def user_revoke(name: str) -> None:
    """Revoke a user's tokens issued until now, in every service within seconds (the user
    signs in again for new ones)."""
    if not asyncio.run(_store().revoke(name)):
        console.print(f"[red]no user {name!r}[/]")
        raise typer.Exit(1)
    _audit(name, "revoked")
    console.print(f"tokens of {name} revoked")


@user_app.command("remove")
def user_remove(name: str) -> None:
    """Remove a user."""
    if not asyncio.run(_store().remove(name)):
        console.print(f"[red]no user {name!r}[/]")
        raise typer.Exit(1)
    _audit(name, "removed")
    console.print(f"removed {name}")


def auth_url() -> str:
    """Auth's base URL: ``EDGE_AUTH_URL``, else auth's port under ``edge up`` on this host."""
    if url := os.environ.get("EDGE_AUTH_URL"):
        return url.rstrip("/")
    return f"http://127.0.0.1:{os.environ.get('EDGE_AUTH_HTTP_PORT', '8083')}"


def request_token(url: str, username: str, password: str, timeout: float = 30.0) -> dict:
    """The token response of a password grant at ``url`` (auth's base URL); raises
    ``PermissionError`` with the OAuth2 error on refusal."""
    body = urllib.parse.urlencode(
        {"grant_type": "password", "username": username, "password": password}
    ).encode()
    request = urllib.request.Request(
        f"{url}/api/auth/token",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer: dict = json.load(response)
            return answer
    except urllib.error.HTTPError as exc:
        try:
            error = json.load(exc)
        except ValueError:
            error = {"error": f"HTTP {exc.code}"}
        description = error.get("error_description", "")
        raise PermissionError(f"{error.get('error')}: {description}".rstrip(": ")) from exc


def token(
    user: Annotated[str, typer.Option(help="user name")],
    password: Annotated[
        str | None, typer.Option(help="the password (asked for when not given)")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="auth's base URL [EDGE_AUTH_URL or 127.0.0.1:8083]")
    ] = None,
) -> None:
    """Get a bearer token (password grant); it is printed on the last line, for scripts."""
    secret = password if password is not None else getpass.getpass("Password: ")
    try:
        answer = request_token((url or auth_url()).rstrip("/"), user, secret)
    except PermissionError as exc:
        notes.print(f"[red]refused: {exc}[/]")
        raise typer.Exit(1) from exc
    except OSError as exc:
        notes.print(f"[red]auth unreachable: {type(exc).__name__}: {exc}[/]")
        raise typer.Exit(1) from exc
    notes.print(f"[dim]{user}: token valid for {answer.get('expires_in')} s[/]", highlight=False)
    # Plain print, not rich: a token must not be wrapped or styled.
    print(answer["access_token"])
