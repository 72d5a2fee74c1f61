"""Admission decisions: plain functions of the request and the registry, no transport."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Protocol

from edge.auth.hooks import AuditSink, _audit_login
from edge.auth.passwords import Hashing
from edge.auth.registry import RemoteAE
from edge.auth.tokens import authenticate
from edge.auth.users import LockoutPolicy, UserStore
from edge.common.admission import Admission, Identified


class AERegistry(Protocol):
    async def get(self, ae_title: str) -> RemoteAE | None: ...


async def address_matches(address: str, hosts: tuple[str, ...]) -> bool:
    """True when ``address`` is one of ``hosts``: an IP, a CIDR range, or a resolvable name."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for host in hosts:
        try:
            if ip in ipaddress.ip_network(host, strict=False):
                return True
            continue
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except OSError:
            continue
        if any(ipaddress.ip_address(info[4][0]) == ip for info in infos):
            return True
    return False


async def admit(registry: AERegistry, calling_ae: str, address: str) -> Admission:
    """Decide whether ``calling_ae`` calling from ``address`` may associate (deny by default)."""
    ae = await registry.get(calling_ae.strip())
    if ae is None:
        return Admission(False, f"calling AE {calling_ae!r} is not registered")
    if not await address_matches(address, ae.hosts):
        return Admission(False, f"calling AE {calling_ae!r} is not registered for {address}")
    if not ae.permissions:
        return Admission(False, f"calling AE {calling_ae!r} has no permissions")
    return Admission(
        True,
        "registered",
        ae.permissions,
        tls_required=ae.tls_required or ae.tls_client_cert,
        tls_client_cert=ae.tls_client_cert,
        identity=ae.user_identity,
        identity_kinds=ae.identity_kinds,
    )


async def identify(
    users: UserStore,
    hashing: Hashing,
    policy: LockoutPolicy,
    username: str,
    passcode: str,
    *,
    address: str | None = None,
    audit: AuditSink | None = None,
) -> Identified:
    """A DICOM User Identity of type 2 (username and passcode, PS3.7 D.3.3.7): checked as a
    login is (argon2id, lockout, audited as User Authentication, Login)."""
    user, reason = await authenticate(users, hashing, username, passcode, policy)
    _audit_login(audit, username, address, success=user is not None, reason=reason)
    if user is None:
        return Identified(False, reason=reason)
    return Identified(True, user.username, user.role)
