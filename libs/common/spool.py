"""Objects read from S3 ahead of their C-STORE sub-operation (C-MOVE, C-GET).

Fetching an object and sending it used to alternate on each association: the wire idled during
every S3 GET and S3 idled during every send. ``ReadAhead`` keeps the next ``depth`` objects of an
association being fetched on other threads while the current one is sent.

An object of up to ``MEMORY_LIMIT`` bytes is read in one GET into memory and hashed in one call
(no file written and read back); a larger one streams to a temporary file in 1 MiB chunks.
Either way it is checked against the catalog's SHA-256 before anything is sent. What one
association holds is at most ``depth + 1`` objects, in memory only up to ``MEMORY_LIMIT`` each:
bounded, whatever the study's size.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.common.store import ObjectStore

if TYPE_CHECKING:
    from edge.common.outbound import Instance

MEMORY_LIMIT = 4 << 20  # bytes: larger objects are spooled to a file
DEFAULT_DEPTH = 2  # objects fetched ahead of the one being sent, per association


class IntegrityError(Exception):
    """The stored object does not hash to the SHA-256 the catalog holds for it."""


@dataclass
class Spool:
    """One fetched, verified object: its bytes in memory, or the temporary file holding them."""

    data: bytes | None = None
    path: Path | None = None

    def release(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        self.data = None

    def read(self) -> bytes:
        """The whole object (for the paths that decode it with pydicom)."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()


def _mismatch(instance: Instance) -> IntegrityError:
    return IntegrityError(f"{instance.object_key} does not match its catalogued SHA-256")


def fetch(store: ObjectStore, instance: Instance, spool_dir: Path | None = None) -> Spool:
    """The object of ``instance``, verified against its catalogued SHA-256 (else
    :class:`IntegrityError`); ``ObjectStoreError``/``ObjectNotFound`` from the store pass."""
    if instance.size <= MEMORY_LIMIT:
        # A range of the catalogued size: an object that grew since fails its hash too.
        data = store.get_range(instance.object_key, 0, instance.size)
        if hashlib.sha256(data).hexdigest() != instance.sha256:
            raise _mismatch(instance)
        return Spool(data=data)
    fd, name = tempfile.mkstemp(prefix="edge-out-", suffix=".dcm", dir=spool_dir)
    spool = Spool(path=Path(name))
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            for chunk in store.iter_chunks(instance.object_key):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != instance.sha256:
            raise _mismatch(instance)
    except BaseException:
        spool.release()
        raise
    return spool


def release_when_done(future: Future[Spool]) -> None:
    """Release the spool of ``future`` once its fetch is over (a fetch no one will send)."""
    if not future.cancelled() and future.exception() is None:
        future.result().release()


class ReadAhead:
    """Hands out instances with their fetch already under way: up to ``depth`` objects beyond
    the one handed out are being fetched on ``executor``. ``take`` gives the next instance to
    send, or None when there is none; ``fetch`` reads one (blocking)."""

    def __init__(
        self,
        take: Callable[[], Instance | None],
        fetch: Callable[[Instance], Spool],
        executor: Executor,
        depth: int = DEFAULT_DEPTH,
    ) -> None:
        self._take = take
        self._fetch = fetch
        self._executor = executor
        self._depth = max(0, depth)
        self._ahead: deque[tuple[Instance, Future[Spool]]] = deque()

    def _fill(self, size: int) -> None:
        # Asked again each time: C-MOVE's associations share one queue, and what one of them
        # read ahead but could not send goes back to it for the others.
        while len(self._ahead) < size:
            instance = self._take()
            if instance is None:
                return
            self._ahead.append((instance, self._executor.submit(self._fetch, instance)))

    def next(self) -> tuple[Instance, Future[Spool]] | None:
        """The next instance and its fetch (the caller releases the spool), or None."""
        self._fill(1)
        if not self._ahead:
            return None
        item = self._ahead.popleft()
        self._fill(self._depth)  # the following ones are read while this one is sent
        return item

    def close(self) -> list[Instance]:
        """Stop reading ahead: the instances taken but never handed out, in order; their
        spools are released (now, or when a fetch under way ends)."""
        left = []
        while self._ahead:
            instance, future = self._ahead.popleft()
            if not future.cancel():
                future.add_done_callback(release_when_done)
            left.append(instance)
        return left
