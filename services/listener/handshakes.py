"""Refused TLS handshakes on the listener's TLS port: counted, logged and audited (PS3.15
A.5.3.11 Security Alert, (110126, DCM, Node Authentication), outcome 4, the peer by its
address), without letting a flood of them flood the audit trail.

Coalescing: the first refusal of an (address, reason) pair is audited at once; repeats of that
pair within the next ``window`` seconds are only counted, and when the window ends one more
message says how many there were ("certificate revoked (37 more within 60 s)", detail
``failures`` 37). A peer retrying a revoked certificate every second thus costs the trail two
messages a minute, not sixty, and none is silently lost: every refusal is in a message's count
and in ``edge_tls_handshakes_refused_total{reason}``. At most ``max_tracked`` pairs are tracked at
once (memory and audit rate bounded when many addresses fail at the same time); refusals beyond
them are coalesced per reason under the node ``*`` (addresses not tracked).

Windows close on the next refusal, on :meth:`HandshakeRefusals.flush` (the listener calls it
every few seconds) and on ``flush(everything=True)`` at shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from edge.common.audit import Auditor

log = logging.getLogger(__name__)

HANDSHAKES_REFUSED = Counter(
    "edge_tls_handshakes_refused_total",
    "TLS handshakes refused on the listener's DICOM TLS port, by reason",
    ["reason"],
)
UNTRACKED = "*"  # the node of refusals from addresses beyond max_tracked


@dataclass
class _Window:
    opened: float
    repeats: int = 0


class HandshakeRefusals:
    """Counts, logs and audits refused handshakes, coalescing repeats (module docstring).
    Thread-safe: called from the TLS server's connection threads."""

    def __init__(
        self,
        auditor: Auditor,
        *,
        window: float = 60.0,
        max_tracked: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.auditor = auditor
        self.window = window
        self.max_tracked = max_tracked
        self.clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()

    def __call__(self, address: str, reason: str) -> None:
        """One refused handshake from ``address`` (the TLS server's ``on_refused``)."""
        HANDSHAKES_REFUSED.labels(reason).inc()
        now = self.clock()
        with self._lock:
            summaries = self._close_windows(now)
            key = (address, reason)
            if key not in self._windows and len(self._windows) >= self.max_tracked:
                key = (UNTRACKED, reason)
            window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(now)
            else:
                window.repeats += 1
        self._emit(summaries)
        if window is None:
            log.warning("TLS handshake from %s refused: %s", address, reason)
            self.auditor.handshake_refused(key[0], reason)
        else:
            log.debug("TLS handshake from %s refused again: %s", address, reason)

    def flush(self, *, everything: bool = False) -> None:
        """Audit the repeats of the windows that have ended (all of them: ``everything``)."""
        with self._lock:
            summaries = self._close_windows(None if everything else self.clock())
        self._emit(summaries)

    def _close_windows(self, now: float | None) -> list[tuple[str, str, int]]:
        ended = [
            key
            for key, window in self._windows.items()
            if now is None or now - window.opened >= self.window
        ]
        summaries = []
        for key in ended:
            window = self._windows.pop(key)
            if window.repeats:
                summaries.append((*key, window.repeats))
        return summaries

    def _emit(self, summaries: list[tuple[str, str, int]]) -> None:
        for address, reason, repeats in summaries:
            log.warning(
                "TLS handshakes from %s refused %d more time(s) within %.0f s: %s",
                address,
                repeats,
                self.window,
                reason,
            )
            self.auditor.handshake_refused(
                address,
                reason,
                failures=repeats,
                description=f"{reason} ({repeats} more within {self.window:.0f} s)",
            )
