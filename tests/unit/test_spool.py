"""Objects read ahead of their C-STORE: verified against the catalog's SHA-256, in memory or in a
file by size, never more than ``depth`` beyond the one handed out, and every spool released."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from edge.common import spool as spool_module
from edge.common.outbound import Instance
from edge.common.spool import IntegrityError, ReadAhead, Spool, fetch
from edge.common.store_memory import InMemoryObjectStore
from edge.common.suboperations import Pacer


def _stored(store: InMemoryObjectStore, n: int, data: bytes) -> Instance:
    key = f"studies/1.2/series/1.2.3/instances/1.2.3.{n}.dcm"
    store.put_bytes(key, data)
    return Instance(
        f"1.2.3.{n}", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", key, len(data),
        hashlib.sha256(data).hexdigest(),
    )  # fmt: skip


def test_small_object_is_held_in_memory_and_verified() -> None:
    store = InMemoryObjectStore()
    instance = _stored(store, 1, b"x" * 1000)
    spool = fetch(store, instance)
    assert spool.data == b"x" * 1000 and spool.path is None


def test_large_object_goes_to_a_file_that_release_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "MEMORY_LIMIT", 100)
    store = InMemoryObjectStore()
    instance = _stored(store, 1, b"y" * 1000)
    spool = fetch(store, instance, tmp_path)
    assert spool.data is None and spool.path is not None
    assert spool.read() == b"y" * 1000
    spool.release()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("limit", [10_000, 100])  # in memory; in a file
def test_object_not_matching_its_catalogued_sha256_is_refused_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    monkeypatch.setattr(spool_module, "MEMORY_LIMIT", limit)
    store = InMemoryObjectStore()
    instance = _stored(store, 1, b"z" * 1000)
    store.put_bytes(instance.object_key, b"w" * 1000)  # changed behind the catalog's back
    with pytest.raises(IntegrityError):
        fetch(store, instance, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_read_ahead_fetches_at_most_depth_beyond_the_one_handed_out() -> None:
    store = InMemoryObjectStore()
    instances = [_stored(store, n, bytes([n]) * 10) for n in range(6)]
    taken: list[str] = []
    items = iter(instances)

    def take() -> Instance | None:
        instance = next(items, None)
        if instance is not None:
            taken.append(instance.sop)
        return instance

    with ThreadPoolExecutor(2) as pool:
        ahead = ReadAhead(take, partial(fetch, store), pool, depth=2)
        first = ahead.next()
        assert first is not None and first[0] is instances[0]
        assert len(taken) == 3  # the one handed out and two being read
        assert first[1].result().data == bytes([0]) * 10
        sent = [first[0]] + [item[0] for item in iter(ahead.next, None)]
    assert sent == instances


def test_closing_returns_what_was_taken_but_not_handed_out_and_releases_it() -> None:
    store = InMemoryObjectStore()
    instances = [_stored(store, n, b"a") for n in range(5)]
    released: list[str] = []
    gate = threading.Event()

    class Tracked(Spool):
        def release(self) -> None:
            released.append("x")
            super().release()

    def slow_fetch(instance: Instance) -> Spool:
        gate.wait(5)
        return Tracked(data=b"a")

    items = iter(instances)
    with ThreadPoolExecutor(1) as pool:
        ahead = ReadAhead(lambda: next(items, None), slow_fetch, pool, depth=3)
        handed = ahead.next()
        assert handed is not None
        left = ahead.close()
        gate.set()
    assert left == instances[1:4]
    # The one handed out is the caller's to release; of the three left, those whose fetch had
    # started are released when it ends, the others never ran.
    assert len(released) <= 3
    assert handed[1].result().data == b"a"


def test_pacer_lets_the_first_pending_through_then_one_per_interval() -> None:
    now = [0.0]
    pacer = Pacer(0.2, clock=lambda: now[0])
    seen = []
    for step in range(10):
        now[0] = step * 0.05
        seen.append(pacer.due())
    assert seen == [True, False, False, False, True, False, False, False, True, False]
