"""C-MOVE and C-GET sub-operation counts and the final status they decide (PS3.4 C.4.2.3.1,
C.4.3.3.1), shared by the retrieval service (C-MOVE) and the listener (C-GET)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.common.outbound import Outcome, SubResult

# PS3.4 C.4.2.1.5, Table C.4-2: C-MOVE response statuses (C-GET's, Table C.4-3, are
# the same but for 0xA801).
SUCCESS = 0x0000
PENDING = 0xFF00
CANCELLED = 0xFE00
WARNING = 0xB000  # sub-operations complete, one or more failures or warnings
DESTINATION_UNKNOWN = 0xA801
UNABLE_TO_CALCULATE = 0xA701  # out of resources: unable to calculate number of matches
UNABLE_TO_PERFORM = 0xA702  # out of resources: unable to perform sub-operations
UNABLE_TO_PROCESS = 0xC000
# The counts are US (PS3.7 9.3.4): no more sub-operations than they can hold.
MAX_SUBOPERATIONS = 65535


@dataclass
class Progress:
    """The sub-operation counts of one C-MOVE and the decision of its final status."""

    total: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return self.total - self.completed - self.failed - self.warning

    def add(self, result: SubResult) -> None:
        if result.outcome is Outcome.COMPLETED:
            self.completed += 1
        elif result.outcome is Outcome.WARNING:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(result.sop)

    def counts(self) -> dict[str, int]:
        return {
            "remaining": self.remaining,
            "completed": self.completed,
            "failed": self.failed,
            "warning": self.warning,
        }

    def pending(self) -> dict[str, Any]:
        return {"status": PENDING, **self.counts()}

    def final(self, *, cancelled: bool, reached: bool) -> dict[str, Any]:
        """PS3.4 C.4.2.3.1: cancel while sub-operations remain is 0xFE00; a destination never
        reached, 0xA702; any failure or warning, 0xB000; else success."""
        if cancelled and self.remaining:
            status, comment = CANCELLED, ""
        elif not reached and self.total:
            status, comment = UNABLE_TO_PERFORM, "move destination unreachable"
        elif self.failed or self.warning:
            status, comment = WARNING, ""
        else:
            status, comment = SUCCESS, ""
        return {
            "status": status,
            **self.counts(),
            "failed_uids": list(self.failed_uids),
            "comment": comment,
        }


# Seconds between two pending responses of one C-MOVE or C-GET.
PENDING_INTERVAL = 0.2


class Pacer:
    """Whether a pending response is due: after the first sub-operation, then at most one per
    ``interval``. PS3.4 C.4.2.3 and C.4.3.3 leave pendings optional ("may"); one per
    sub-operation cost an RPC reply and an encoded DIMSE response (about 1 ms each in the
    listener) per instance, a fifth of a core at 200 instances/s."""

    def __init__(
        self, interval: float = PENDING_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True


def refusal(status: int, comment: str) -> dict[str, Any]:
    return {
        "status": status,
        "remaining": 0,
        "completed": 0,
        "failed": 0,
        "warning": 0,
        "failed_uids": [],
        "comment": comment[:64],
    }
