"""C-MOVE's sub-operations: several associations to one destination, each taking the next
instance from a shared queue and sending it by C-STORE (``outbound``) while the next few are
read from S3 on reader threads (``spool.ReadAhead``: at most ``read_ahead`` objects beyond the
one on the wire, per association).

Blocking code for threads. A destination that is down fails fast (connect, ACSE and DIMSE
timeouts; one attempt to re-associate after a lost association); what no association is left
to send is reported failed. On cancel every worker stops after its current sub-operation and
the rest stays remaining.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pynetdicom import AE

from edge.common.dimse import NODELAY_HANDLER
from edge.common.outbound import Instance, Outcome, SubResult, proposed_contexts, send_instance
from edge.common.spool import DEFAULT_DEPTH, ReadAhead, fetch
from edge.common.store import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int
    tls: bool = False  # the registry says this AE requires DICOM TLS


@dataclass(frozen=True)
class Timeouts:
    connect: float
    acse: float
    dimse: float
    network: float


class Transfer:
    """Send ``instances`` to ``destination``; ``report`` is called (from worker threads) once per
    instance that was attempted or given up."""

    def __init__(
        self,
        instances: list[Instance],
        destination: Destination,
        *,
        calling_ae: str,
        store: ObjectStore,
        timeouts: Timeouts,
        associations: int,
        max_pdu_size: int,
        spool_dir: Path | None,
        originator: tuple[str, int] | None,
        report: Callable[[SubResult], None],
        cancelled: threading.Event,
        tls_context: ssl.SSLContext | None = None,
        read_ahead: int = DEFAULT_DEPTH,
    ) -> None:
        self.destination = destination
        self.tls_context = tls_context
        self.store = store
        self.report = report
        self.cancelled = cancelled
        self.spool_dir = spool_dir
        self.originator = originator
        self._queue: queue.SimpleQueue[Instance] = queue.SimpleQueue()
        for instance in instances:
            self._queue.put(instance)
        self._workers = max(1, min(associations, len(instances)))
        self._msg_id = 0
        self._lock = threading.Lock()
        self.ever_associated = False
        self._ae = AE(ae_title=calling_ae)
        self._ae.connection_timeout = timeouts.connect
        self._ae.acse_timeout = timeouts.acse
        self._ae.dimse_timeout = timeouts.dimse
        self._ae.network_timeout = timeouts.network
        self._ae.maximum_pdu_size = max_pdu_size
        self._contexts = proposed_contexts(instances)
        self._read_ahead = max(0, read_ahead)
        self._readers: ThreadPoolExecutor | None = None

    def run(self) -> None:
        threads = [
            threading.Thread(target=self._work, name=f"move-{i}", daemon=True)
            for i in range(self._workers)
        ]
        self._readers = ThreadPoolExecutor(
            max(1, self._workers * self._read_ahead), thread_name_prefix="move-read"
        )
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            self._readers.shutdown(wait=False, cancel_futures=True)
        if not self.cancelled.is_set():
            reason = "destination unreachable"
            for instance in self._drain():
                self.report(SubResult(instance.sop, Outcome.FAILED, None, reason))

    def _take(self) -> Instance | None:
        if self.cancelled.is_set():
            return None
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def _drain(self) -> list[Instance]:
        left = []
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                return left

    def _next_msg_id(self) -> int:
        with self._lock:
            self._msg_id = self._msg_id % 65535 + 1
            return self._msg_id

    def _associate(self) -> Any | None:
        d = self.destination
        tls_args = None
        if d.tls:
            if self.tls_context is None:
                log.warning("C-MOVE destination %s requires TLS; none configured", d.ae_title)
                return None
            tls_args = (self.tls_context, d.host)  # the host name the certificate must match
        assoc = self._ae.associate(
            d.host,
            d.port,
            contexts=self._contexts,
            ae_title=d.ae_title,
            evt_handlers=[NODELAY_HANDLER],
            tls_args=tls_args,
        )
        if assoc.is_established:
            self.ever_associated = True
            return assoc
        log.warning(
            "C-MOVE destination %s at %s:%d: %s",
            d.ae_title,
            d.host,
            d.port,
            "rejected" if assoc.is_rejected else "no association",
        )
        return None

    def _work(self) -> None:
        assoc = self._associate()
        if assoc is None:
            return
        assert self._readers is not None
        ahead = ReadAhead(
            self._take,
            partial(fetch, self.store, spool_dir=self.spool_dir),
            self._readers,
            self._read_ahead,
        )
        retried = False
        try:
            while assoc is not None and not self.cancelled.is_set():
                item = ahead.next()
                if item is None:
                    return
                instance, fetched = item
                aet, message_id = self.originator or (None, None)
                result = send_instance(
                    assoc,
                    self.store,
                    instance,
                    msg_id=self._next_msg_id(),
                    originator_aet=aet,
                    originator_id=message_id,
                    fetched=fetched,
                )
                self.report(result)
                if not assoc.is_established:
                    # Aborted or timed out under us: one more association, then give up.
                    if retried:
                        assoc = None
                        break
                    retried = True
                    assoc = self._associate()
        finally:
            # Read ahead but never sent: back to the queue, for another association or, when
            # none is left, reported failed by run() (on cancel they stay remaining).
            for instance in ahead.close():
                self._queue.put(instance)
            if assoc is not None and assoc.is_established:
                assoc.release()
