"""The ``auth.admit`` and ``auth.identify`` RPC contracts: what auth answers and the listener
caches (admission) or asks per association (a username and passcode)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Admission:
    """Whether a calling AE may associate from an address, and on which terms: its permissions,
    whether it must use TLS (and a client certificate naming it), and which DICOM User Identity
    it must present (``identity``: none, optional, required; ``identity_kinds``: password,
    jwt)."""

    allowed: bool
    reason: str
    permissions: frozenset[str] = frozenset()
    tls_required: bool = False
    tls_client_cert: bool = False
    identity: str = "none"
    identity_kinds: frozenset[str] = field(default_factory=frozenset)

    def to_json(self) -> dict[str, object]:
        return {
            "allowed": self.allowed,
            "reason": self.reason,
            "permissions": sorted(self.permissions),
            "tls_required": self.tls_required,
            "tls_client_cert": self.tls_client_cert,
            "identity": self.identity,
            "identity_kinds": sorted(self.identity_kinds),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Admission:
        perms = data.get("permissions") or []
        return cls(
            allowed=bool(data.get("allowed")),
            reason=str(data.get("reason", "")),
            permissions=frozenset(str(p) for p in perms),
            tls_required=bool(data.get("tls_required", False)),
            tls_client_cert=bool(data.get("tls_client_cert", False)),
            identity=str(data.get("identity") or "none"),
            identity_kinds=frozenset(str(k) for k in data.get("identity_kinds") or []),
        )


@dataclass(frozen=True)
class Identified:
    """``auth.identify``'s answer: whose identity was verified (``user``, ``role``), or why
    not (``reason`` in our words: "wrong password", "locked", "unknown user"). ``unavailable``:
    not a verdict on the identity but on us: it could not be checked (auth's database away), so
    the requestor may try again later."""

    verified: bool
    user: str = ""
    role: str = ""
    reason: str = ""
    unavailable: bool = False

    def to_json(self) -> dict[str, object]:
        return {"verified": self.verified, "user": self.user, "role": self.role,
                "reason": self.reason, "unavailable": self.unavailable}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Identified:
        return cls(
            verified=bool(data.get("verified")),
            user=str(data.get("user", "")),
            role=str(data.get("role", "")),
            reason=str(data.get("reason", "")),
            unavailable=bool(data.get("unavailable", False)),
        )
