"""Delivery guarantees on real servers: the broker restarted and ingestion killed mid-burst.

Rule 1: a C-STORE answered success is durable, so it ends up in the catalog whatever happens
after the answer; one that could not be made durable is answered 0xA700. Redelivery after a
crash must not duplicate a row or an announcement.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import psutil
import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from bench.generate import generate_ct_study
from edge.cli.devsuite import DevSuite
from edge.common.bus import EXCHANGE
from edge.common.dicom import Status
from edge.common.dimse import NODELAY_HANDLER
from edge.common.events import StudyArrived, from_parts
from tests.e2e.conftest import STORE_AE, Client, start_suite
from tests.e2e.rawscu import send_raw
from tests.fixtures.private_broker import PrivateBroker

pytestmark = pytest.mark.e2e

INGESTION_QUEUE = "ingestion.instance-received"


# -- a C-STORE sender that keeps every answer --------------------------------------------------


@dataclass(frozen=True)
class Answer:
    sop_uid: str
    status: int | None  # None: no response (the association was lost or timed out)
    at: float  # time.monotonic() when the answer came


def sop_uid(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


class Sender:
    """C-STOREs one file at a time on one association, reopened when it is lost."""

    def __init__(self, port: int, aet: str = STORE_AE) -> None:
        self.port = port
        self.ae = AE(ae_title=aet)
        # Longer than the listener's store deadline: we hear its failure, not our own timeout.
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        self.ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        self.assoc: Association | None = None
        self.refused = 0  # associations that could not be opened

    def send(self, path: Path) -> Answer | None:
        """The answer to a C-STORE of ``path``; None when no association could be opened."""
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate(
                "127.0.0.1", self.port, ae_title="EDGE", evt_handlers=[NODELAY_HANDLER]
            )
            if not self.assoc.is_established:
                self.refused += 1
                return None
        try:
            response = self.assoc.send_c_store(path)
        except RuntimeError:  # the association went away between the check and the send
            return Answer(sop_uid(path), None, time.monotonic())
        status = int(response.Status) if "Status" in response else None
        return Answer(sop_uid(path), status, time.monotonic())

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()


class BrokerRestart(threading.Thread):
    """Stop the broker gracefully and start it again, noting when it was down and back up."""

    def __init__(self, broker: PrivateBroker) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.stopping_at = self.down_at = self.up_at = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.stopping_at = time.monotonic()
            self.broker.stop()
            self.down_at = time.monotonic()
            self.broker.start()
            self.up_at = time.monotonic()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


def catalogued(client: Client, sop_uids: Iterable[str]) -> set[str]:
    rows = client.query(
        "SELECT sop_instance_uid FROM instance WHERE sop_instance_uid = ANY(%s)", list(sop_uids)
    )
    return {row[0] for row in rows}


def wait_catalogued(client: Client, sop_uids: set[str], timeout: float) -> set[str]:
    """The subset of ``sop_uids`` in the catalog once all are there or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    found = catalogued(client, sop_uids)
    while found != sop_uids and time.monotonic() < deadline:
        time.sleep(0.25)
        found = catalogued(client, sop_uids)
    return found


# -- the broker restarted while instances arrive -----------------------------------------------


def test_rabbitmq_restart_while_storing(private_broker: PrivateBroker, tmp_path: Path) -> None:
    paths = generate_ct_study(tmp_path / "study", series=1, per_series=400, rows=16, cols=16)
    (late,) = generate_ct_study(tmp_path / "late", series=1, per_series=1, rows=16, cols=16)
    suite = start_suite(
        tmp_path / "suite",
        amqp_base=private_broker.amqp_url,
        rabbitmqctl_args=private_broker.rabbitmqctl_args,
        # Fail fast while the broker is away: a C-STORE waits at most this for its confirm.
        extra_env={"EDGE_STORE_DEADLINE": "5"},
    )
    client = Client(suite)
    try:
        # An AE that first associates after the restart: its admission is an auth.admit RPC
        # over the restarted broker, not an answer the listener cached before.
        suite.edge("ae", "add", "LATESCU", "--host", "127.0.0.1", "--port", "11120")
        restart = BrokerRestart(private_broker)
        sender = Sender(suite.dicom_port)
        answers: list[Answer] = []
        deadline = time.monotonic() + 75
        try:
            for path in paths:
                answer = sender.send(path)
                if answer is not None:
                    answers.append(answer)
                ok = [a for a in answers if a.status == Status.SUCCESS]
                if not restart.is_alive() and restart.stopping_at == 0 and len(ok) >= 15:
                    restart.start()
                if restart.up_at and sum(a.at > restart.up_at for a in ok) >= 10:
                    break  # recovered: enough successes after the broker came back
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        finally:
            sender.close()
            restart.join(90)
        assert restart.error is None, restart.error
        assert restart.up_at, "the broker restart did not finish"

        ok = [a for a in answers if a.status == Status.SUCCESS]
        failed = [a for a in answers if a.status != Status.SUCCESS]
        # Every answer was a success or a retryable infrastructure failure, never silence.
        assert all(a.status is not None and a.status & 0xFF00 == 0xA700 for a in failed), {
            a.status for a in failed
        }
        # The timing exercised all three phases: before, during and after the outage.
        assert sum(a.at < restart.stopping_at for a in ok) >= 15
        assert failed, "no C-STORE failed: the outage was not exercised"
        assert sum(a.at > restart.up_at for a in ok) >= 10, "no recovery after the restart"

        # Rule 1: every success is in the catalog, wherever the broker was when it was answered.
        wanted = {a.sop_uid for a in ok}
        found = wait_catalogued(client, wanted, timeout=60)
        assert found == wanted, f"{len(wanted - found)} answered success but not catalogued"

        first_failure = min(a.at for a in failed) - restart.stopping_at
        last_failure = max(a.at for a in failed) - restart.up_at
        print(
            f"\nbroker starts took {[round(t, 1) for t in private_broker.start_seconds]} s; "
            f"stop {restart.down_at - restart.stopping_at:.1f} s, start "
            f"{restart.up_at - restart.down_at:.1f} s; {len(answers)} answers: "
            f"{len(ok)} ok, {len(failed)} failed (first {first_failure:.1f} s after the stop "
            f"began, last {last_failure:+.1f} s from the broker up); refused associations "
            f"{sender.refused}; failed yet catalogued "
            f"{len(catalogued(client, {a.sop_uid for a in failed}))}"
        )
        # A new association after the restart: admission (RPC) and store both work again.
        assert send_raw(late, port=suite.dicom_port, calling="LATESCU") == Status.SUCCESS
        assert wait_catalogued(client, {sop_uid(late)}, timeout=30) == {sop_uid(late)}
    finally:
        suite.stop()


# -- ingestion SIGKILLed mid-burst ---------------------------------------------------------------


def ingestion_process(suite: DevSuite) -> psutil.Process:
    assert suite.process is not None
    for child in psutil.Process(suite.process.pid).children(recursive=True):
        if "edge.ingestion" in child.cmdline():
            return child
    raise LookupError("the suite's ingestion process")


def wait_new_ingestion(suite: DevSuite, old_pid: int, timeout: float) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            process = ingestion_process(suite)
            if process.pid != old_pid:
                return process
        except (LookupError, psutil.NoSuchProcess):
            pass
        time.sleep(0.2)
    raise AssertionError(f"ingestion was not restarted within {timeout}s")


async def bind_study_arrived(amqp_url: str, queue: str) -> None:
    """A subscriber's own durable queue on ``study.arrived``, bound before anything is sent."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE)
        declared = await channel.declare_queue(queue, durable=True)
        await declared.bind(exchange, routing_key=StudyArrived.name)
    finally:
        await connection.close()


async def collect_study_arrived(
    amqp_url: str, queue: str, studies: set[str], timeout: float, linger: float
) -> list[StudyArrived]:
    """Every ``study.arrived`` on ``queue``: until each of ``studies`` has one (or ``timeout``),
    then ``linger`` seconds more, for duplicates."""
    events: list[StudyArrived] = []
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.get_queue(queue)
        deadline = time.monotonic() + timeout
        lingering_until: float | None = None
        while True:
            now = time.monotonic()
            if lingering_until is None and (
                {e.study_uid for e in events} >= studies or now > deadline
            ):
                lingering_until = now + linger
            if lingering_until is not None and now > lingering_until:
                return events
            message = await declared.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.2)
                continue
            event = from_parts(dict(message.headers or {}), message.body)
            assert isinstance(event, StudyArrived)
            events.append(event)
    finally:
        await connection.close()


def test_ingestion_sigkill_mid_burst(tmp_path: Path) -> None:
    studies = [
        generate_ct_study(tmp_path / f"study{i}", series=2, per_series=75, rows=32, cols=32, seed=i)
        for i in range(2)
    ]
    paths = [path for study in studies for path in study]
    study_uids = {
        str(dcmread(study[0], stop_before_pixels=True).StudyInstanceUID) for study in studies
    }
    suite = start_suite(tmp_path / "suite", extra_env={"EDGE_STABLE_AFTER": "2"})
    client = Client(suite)
    try:
        subscriber = f"test.study-arrived.{uuid.uuid4().hex[:8]}"
        asyncio.run(bind_study_arrived(suite.amqp_url, subscriber))
        victim = ingestion_process(suite)

        answers: list[Answer] = []

        def burst() -> None:
            sender = Sender(suite.dicom_port)
            try:
                for path in paths:
                    answer = sender.send(path)
                    if answer is not None:
                        answers.append(answer)
            finally:
                sender.close()

        sending = threading.Thread(target=burst, daemon=True)
        sending.start()
        deadline = time.monotonic() + 60
        while client.instance_count() < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Freeze it first so that the broker has deliveries outstanding to it (prefetch), then
        # kill: those messages are unacked and must be redelivered to the next process.
        victim.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
        killed_mid_burst = sending.is_alive()
        at_kill = client.instance_count()
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)

        # `edge up` restarts a crashed child (after 1 s for a first crash).
        wait_new_ingestion(suite, victim.pid, timeout=30)
        sending.join(120)
        assert not sending.is_alive()
        assert killed_mid_burst, "the burst ended before the kill: send more instances"
        # Confirmed in the queue before the kill yet not committed by the killed process: the
        # messages it held unacked (up to its prefetch) and those behind them.
        outstanding = (
            sum(a.status == Status.SUCCESS and a.at < killed_at for a in answers) - at_kill
        )
        assert outstanding > 0, "nothing was in flight when ingestion died"

        ok = {a.sop_uid for a in answers if a.status == Status.SUCCESS}
        assert len(ok) == len(paths), Counter(a.status for a in answers)
        found = wait_catalogued(client, ok, timeout=60)
        assert found == ok, f"{len(ok - found)} answered success but not catalogued"
        duplicates = client.query(
            "SELECT sop_instance_uid, count(*) FROM instance GROUP BY 1 HAVING count(*) > 1"
        )
        assert duplicates == []
        assert client.instance_count() == len(paths)

        # (Collected first: this also gives the queue statistics below time to catch up.)
        events = asyncio.run(
            collect_study_arrived(suite.amqp_url, subscriber, study_uids, timeout=40, linger=6)
        )

        # Nothing left behind: the redelivered messages were processed, none dead-lettered.
        # (list_queues counts of quorum queues lag by seconds: read them last, poll, bounded.)
        deadline = time.monotonic() + 20
        depths = (-1, -1)
        while time.monotonic() < deadline:
            depths = (
                client.queue_depth(INGESTION_QUEUE),
                client.queue_depth(f"{INGESTION_QUEUE}.dlq"),
            )
            if depths == (0, 0):
                break
            time.sleep(1)
        assert depths == (0, 0)

        # Exactly one study.arrived per study, however often its instances were delivered.
        arrived = Counter(e.study_uid for e in events)
        assert arrived == {uid: 1 for uid in study_uids}, arrived

        print(
            f"\ncatalogued at kill {at_kill}/{len(paths)}, outstanding {outstanding}; "
            f"study.arrived instance counts "
            f"{sorted(e.instance_count for e in events)}"
        )
    finally:
        suite.stop()
