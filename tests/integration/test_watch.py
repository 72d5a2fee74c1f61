"""`edge watch` against the real RabbitMQ: what it prints, what --type lets through, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit
from uuid import uuid4

import aio_pika

from edge.common.bus import EXCHANGE, AioPikaBus
from edge.common.eventdocs import example
from edge.common.events import AeChanged, Event, InstanceStored, StudyArrived

BIND_DEADLINE = 30.0


@dataclass
class Watch:
    process: asyncio.subprocess.Process
    vhost: str

    async def finish(self, timeout: float = 30.0) -> tuple[int, list[str], str]:
        stdout, stderr = await asyncio.wait_for(self.process.communicate(), timeout)
        assert self.process.returncode is not None
        return self.process.returncode, stdout.decode().splitlines(), stderr.decode()


def fresh(cls: type[Event]) -> Event:
    return example(cls).model_copy(update={"id": uuid4()})


async def start_watch(amqp_url: str, *args: str) -> Watch:
    """Run `edge watch ARGS` on the test's vhost; return once its queue is bound."""
    vhost = unquote(urlsplit(amqp_url).path[1:])
    before = await asyncio.to_thread(_bound_queues, vhost)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge.cli.main",
        "watch",
        *args,
        env={**os.environ, "EDGE_AMQP_URL": amqp_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    watch = Watch(process, vhost)
    deadline = time.monotonic() + BIND_DEADLINE
    while time.monotonic() < deadline:
        if process.returncode is not None:
            code, out, err = await watch.finish()
            raise AssertionError(f"edge watch exited {code} before binding: {out} {err}")
        if await asyncio.to_thread(_bound_queues, vhost) - before:
            return watch
        await asyncio.sleep(0.2)
    process.kill()
    raise AssertionError(f"edge watch bound no queue to {EXCHANGE} within {BIND_DEADLINE}s")


def _bound_queues(vhost: str) -> set[str]:
    """Queues bound to edge.events on ``vhost``, as the broker reports them."""
    listing = subprocess.run(
        ["rabbitmqctl", "list_bindings", "-p", vhost, "-s", "source_name", "destination_name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = (line.split("\t") for line in listing.splitlines())
    return {row[1] for row in rows if len(row) == 2 and row[0] == EXCHANGE}


async def publish(amqp_url: str, *events: Event) -> None:
    bus = await AioPikaBus.connect(amqp_url, "/test")
    try:
        for event in events:
            await bus.publish(event, mandatory=False)
    finally:
        await bus.close()


async def test_watch_prints_each_event_as_one_cloudevent_line(amqp_url: str) -> None:
    watch = await start_watch(amqp_url, "--json", "--count", "2", "--timeout", "20")
    events = [fresh(StudyArrived), fresh(AeChanged)]

    await publish(amqp_url, *events)
    code, lines, stderr = await watch.finish()

    assert code == 0, stderr
    printed = [json.loads(line) for line in lines]
    assert [(p["id"], p["type"]) for p in printed] == [(str(e.id), e.ce_type()) for e in events]
    arrived = printed[0]
    assert arrived["specversion"] == "1.0" and arrived["source"] == "/test"
    assert arrived["subject"] == events[0].subject()
    assert arrived["sequence"] == 42  # a number, as in GET /api/changes
    assert arrived["datacontenttype"] == "application/json"
    assert arrived["data"] == events[0].data()


async def test_watch_type_filters_other_events_and_survives_undecodable_ones(
    amqp_url: str,
) -> None:
    watch = await start_watch(
        amqp_url, "--type", "study.arrived", "--json", "--count", "1", "--timeout", "20"
    )
    stored, arrived = fresh(InstanceStored), fresh(StudyArrived)

    await publish(amqp_url, stored)
    await _publish_garbage(amqp_url, routing_key="study.arrived")
    await publish(amqp_url, arrived)
    code, lines, stderr = await watch.finish()

    assert code == 0, stderr
    assert [json.loads(line)["id"] for line in lines] == [str(arrived.id)]
    assert "undecodable" in stderr


async def test_watch_exits_1_when_the_timeout_comes_before_count(amqp_url: str) -> None:
    watch = await start_watch(amqp_url, "--count", "1", "--timeout", "1")

    code, lines, stderr = await watch.finish()

    assert code == 1 and lines == [], stderr


async def test_watch_prints_a_readable_summary_of_a_study(amqp_url: str) -> None:
    watch = await start_watch(amqp_url, "--type", "study.*", "--count", "1", "--timeout", "20")
    arrived = fresh(StudyArrived)

    await publish(amqp_url, arrived)
    code, lines, stderr = await watch.finish()

    assert code == 0, stderr
    (line,) = lines  # one line per event, however long: never wrapped
    assert "study.arrived" in line and str(arrived.subject()) in line and "#42" in line
    assert "121 instances, 2 series, CT/SR, 63.2 MB" in line


async def _publish_garbage(amqp_url: str, routing_key: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE)
        await exchange.publish(
            aio_pika.Message(b"not json", headers={"ce-type": "org.example.nothing.v1"}),
            routing_key=routing_key,
        )
    finally:
        await connection.close()
