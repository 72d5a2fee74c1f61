"""InMemoryObjectStore keeps the ObjectStore contract that handlers' unit tests rely on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edge.common.store import (
    ChecksumMismatch,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    sha256_file,
    validate_key,
)
from edge.common.store_memory import InMemoryObjectStore

KEY = "studies/1.2/series/1.2.3/instances/1.2.3.4.dcm"


def test_is_an_object_store():
    store: ObjectStore = InMemoryObjectStore()
    store.ensure_bucket()
    store.ping()


def test_put_file_round_trips_with_sha256(tmp_path: Path):
    path = tmp_path / "i.dcm"
    path.write_bytes(b"0123456789")
    sha = sha256_file(path)
    store = InMemoryObjectStore()

    put = store.put_file(KEY, path, sha256=sha)

    assert put == store.stat(KEY)
    assert (put.size, put.sha256) == (10, hashlib.sha256(b"0123456789").hexdigest())
    assert store.get_range(KEY, 2, 3) == b"234"
    assert store.get_range(KEY, 8, 100) == b"89"
    assert store.get_range(KEY, 10, 5) == b""
    assert list(store.iter_chunks(KEY, chunk_size=4)) == [b"0123", b"4567", b"89"]


def test_sha256_mismatch_is_refused(tmp_path: Path):
    path = tmp_path / "i.dcm"
    path.write_bytes(b"abc")
    store = InMemoryObjectStore()
    with pytest.raises(ChecksumMismatch):
        store.put_file(KEY, path, sha256="0" * 64)
    with pytest.raises(ChecksumMismatch):
        store.put_bytes(KEY, b"abc", sha256="0" * 64)
    assert store.stat(KEY) is None


def test_absent_object():
    store = InMemoryObjectStore()
    assert store.stat(KEY) is None
    with pytest.raises(ObjectNotFound):
        store.get_range(KEY, 0, 1)
    with pytest.raises(ObjectNotFound):
        list(store.iter_chunks(KEY))
    store.delete(KEY)


def test_list_by_prefix_and_delete():
    store = InMemoryObjectStore()
    for key in ("studies/1/a.dcm", "studies/1/b.dcm", "studies/12/c.dcm"):
        store.put_bytes(key, b"x")
    assert [o.key for o in store.list("studies/1/")] == ["studies/1/a.dcm", "studies/1/b.dcm"]
    store.delete("studies/1/a.dcm")
    assert [o.key for o in store.list("studies/1/")] == ["studies/1/b.dcm"]


@pytest.mark.parametrize("key", ["../x", "a//b", "a\x00b", "a b", "a/./b", "/a", ""])
def test_bad_keys_are_refused(key: str):
    store = InMemoryObjectStore()
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.stat(key)
    with pytest.raises(ValueError):
        validate_key(key)


def test_valid_instance_key_is_accepted():
    assert validate_key(KEY) == KEY


def test_fail_next_raises_once():
    store = InMemoryObjectStore()
    store.fail_next = ObjectStoreError("boom")
    with pytest.raises(ObjectStoreError, match="boom"):
        store.put_bytes(KEY, b"x")
    assert store.stat(KEY) is None
    store.put_bytes(KEY, b"x")
    assert store.stat(KEY) is not None


def test_broken_store_fails_every_call():
    store = InMemoryObjectStore()
    store.put_bytes(KEY, b"x")
    store.broken = True
    for call in (
        store.ping,
        store.ensure_bucket,
        lambda: store.stat(KEY),
        lambda: store.get_range(KEY, 0, 1),
        lambda: store.put_bytes(KEY, b"y"),
        lambda: store.delete(KEY),
        lambda: list(store.list("")),
    ):
        with pytest.raises(ObjectStoreError):
            call()
