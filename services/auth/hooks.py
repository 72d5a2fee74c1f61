"""Where auth tells the audit trail about logins and admin changes.

The calls match ``edge.common.audit.Auditor`` (``login``, ``user_changed``), so the auth service
passes its auditor straight in; ``None`` (a unit test, a process without a bus) records nothing
but a log line. No password, hash or token is ever passed here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, Protocol

log = logging.getLogger(__name__)

Change = Literal["added", "updated", "removed", "password", "locked", "unlocked", "revoked"]


class AuditSink(Protocol):
    def login(
        self, login: str, *, address: str | None = None, success: bool, reason: str = ""
    ) -> None: ...

    def user_changed(
        self,
        actor: str,
        login: str,
        change: Change,
        *,
        roles: Sequence[str] = (),
        address: str | None = None,
        success: bool = True,
        reason: str = "",
    ) -> None: ...


def _audit_login(
    audit: AuditSink | None, login: str, address: str | None, *, success: bool, reason: str = ""
) -> None:
    """A token request's outcome: ``reason`` in our words ("wrong password", "locked")."""
    # An unknown name is not logged: it is often a password typed into the wrong field.
    log.info(
        "login %s for %s from %s%s",
        "succeeded" if success else "failed",
        "(unknown user)" if reason == "unknown user" else login,
        address or "-",
        f" ({reason})" if reason else "",
    )
    if audit is not None:
        audit.login(login, address=address, success=success, reason=reason)


def _audit_admin_change(
    audit: AuditSink | None,
    actor: str,
    login: str,
    change: Change,
    *,
    roles: Sequence[str] = (),
    address: str | None = None,
) -> None:
    """A user account added, removed, locked, unlocked, or its password or role changed."""
    log.info("user %s %s by %s", login, change, actor)
    if audit is not None:
        audit.user_changed(actor, login, change, roles=roles, address=address)
