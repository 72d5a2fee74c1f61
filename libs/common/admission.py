"""The ``auth.admit`` RPC contract: what auth answers and the listener caches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Admission:
    allowed: bool
    reason: str
    permissions: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, object]:
        return {
            "allowed": self.allowed,
            "reason": self.reason,
            "permissions": sorted(self.permissions),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Admission:
        perms = data.get("permissions") or []
        return cls(
            allowed=bool(data.get("allowed")),
            reason=str(data.get("reason", "")),
            permissions=frozenset(str(p) for p in perms),
        )
