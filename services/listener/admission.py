"""Association admission: ask auth (``auth.admit``), remember the answer for a while.

The cache is dropped for an AE title when ``ae.changed`` arrives, so a registry edit takes
effect at once; the TTL bounds how long a missed notification can matter.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edge.common.admission import Admission

AskAuth = Callable[[str, str], Awaitable[Admission]]


@dataclass
class _Entry:
    admission: Admission
    expires: float


class AdmissionCache:
    def __init__(self, ask: AskAuth, ttl: float, *, clock: Callable[[], float] = time.monotonic):
        self._ask = ask
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}

    async def admit(self, calling_ae: str, address: str) -> Admission:
        key = (calling_ae, address)
        entry = self._entries.get(key)
        now = self._clock()
        if entry is not None and entry.expires > now:
            return entry.admission
        admission = await self._ask(calling_ae, address)
        self._entries[key] = _Entry(admission, now + self._ttl)
        return admission

    def forget(self, ae_title: str) -> None:
        for key in [k for k in self._entries if k[0] == ae_title]:
            del self._entries[key]
