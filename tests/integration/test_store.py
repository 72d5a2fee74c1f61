"""MinioObjectStore against a real SeaweedFS on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from edge.common.settings import CommonSettings
from edge.common.store import (
    ChecksumMismatch,
    MinioObjectStore,
    ObjectNotFound,
    ObjectStoreError,
    sha256_file,
)
from tests.fixtures.s3 import S3Endpoint, start_seaweed, unique_bucket

KEY = "studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5.dcm"
MiB = 1 << 20


def write_random(path: Path, size: int) -> str:
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, MiB))
            f.write(chunk)
            remaining -= len(chunk)
    return sha256_file(path)


def test_put_file_round_trips_bytes_and_sha256(object_store: MinioObjectStore, tmp_path: Path):
    path = tmp_path / "i.dcm"
    sha = write_random(path, 300_000)
    data = path.read_bytes()

    put = object_store.put_file(KEY, path, sha256=sha, metadata={"study": "1.2.3"})
    stat = object_store.stat(KEY)

    assert put.size == 300_000 and put.sha256 == sha and put.etag
    assert stat is not None
    assert (stat.size, stat.sha256, stat.etag) == (300_000, sha, put.etag)
    assert stat.last_modified is not None
    assert object_store.get_range(KEY, 1000, 5000) == data[1000:6000]
    assert object_store.get_range(KEY, 299_990, 100) == data[299_990:]
    assert object_store.get_range(KEY, 300_000, 10) == b""
    chunks = list(object_store.iter_chunks(KEY, chunk_size=64 * 1024))
    assert max(len(c) for c in chunks) <= 64 * 1024
    assert hashlib.sha256(b"".join(chunks)).hexdigest() == sha


def test_put_bytes_records_computed_sha256(object_store: MinioObjectStore):
    put = object_store.put_bytes("a/b.dcm", b"DICM-bytes")
    stat = object_store.stat("a/b.dcm")
    assert stat is not None
    assert stat.sha256 == put.sha256 == hashlib.sha256(b"DICM-bytes").hexdigest()


def test_large_file_uploads_multipart_with_bounded_memory(
    object_store: MinioObjectStore, tmp_path: Path
):
    path = tmp_path / "big.dcm"
    sha = write_random(path, 40 * MiB)

    tracemalloc.start()
    try:
        put = object_store.put_file(KEY, path, sha256=sha)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # One 16 MiB part in flight measures ~32 MiB (the part plus the SDK's working copy); holding
    # the whole 40 MiB file, or parallel parts, would exceed the file's own size.
    assert peak < 40 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert put.etag is not None and put.etag.endswith("-3")  # 16+16+8 MiB parts
    stat = object_store.stat(KEY)
    assert stat is not None and (stat.size, stat.sha256) == (40 * MiB, sha)
    streamed = hashlib.sha256()
    for chunk in object_store.iter_chunks(KEY):
        streamed.update(chunk)
    assert streamed.hexdigest() == sha


@pytest.mark.parametrize("size", [1000, 6 * MiB], ids=["single-put", "multipart"])
def test_server_rejects_a_body_altered_after_signing(s3_server: S3Endpoint, size: int):
    store = s3_server.store(unique_bucket(), part_size=5 * MiB)
    store.ensure_bucket()
    real_urlopen = store._http.urlopen
    corrupted: list[str] = []

    def corrupt_first_body(method: str, url: str, body: Any = None, **kw: Any) -> Any:
        if method == "PUT" and body and not corrupted:
            corrupted.append(url)
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        return real_urlopen(method, url, body=body, **kw)

    store._http.urlopen = corrupt_first_body  # type: ignore[method-assign]
    with pytest.raises(ObjectStoreError, match="BadDigest"):
        store.put_bytes(KEY, os.urandom(size))
    store._http.urlopen = real_urlopen  # type: ignore[method-assign]

    assert corrupted
    assert store.stat(KEY) is None


def test_put_file_refuses_a_file_that_changed_since_hashing(
    object_store: MinioObjectStore, tmp_path: Path
):
    path = tmp_path / "i.dcm"
    path.write_bytes(b"original")
    stale = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ChecksumMismatch):
        object_store.put_file(KEY, path, sha256=stale)
    assert object_store.stat(KEY) is None


@pytest.mark.parametrize(
    "key", ["../x", "a//b", "a\x00b", "a b", "/a", "a/", "a/./b", "a/../b", ".", "", "é"]
)
def test_bad_keys_are_refused_before_any_request(key: str, tmp_path: Path):
    # Port 1 refuses connections: any request would raise ObjectStoreError, not ValueError.
    store = MinioObjectStore("127.0.0.1:1", "x", "y", "no-bucket")
    path = tmp_path / "f"
    path.write_bytes(b"x")
    calls = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_file(key, path, sha256=sha256_file(path)),
        lambda: store.get_range(key, 0, 1),
        lambda: next(store.iter_chunks(key)),
        lambda: store.stat(key),
        lambda: store.delete(key),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_wrong_secret_key_is_rejected(s3_server: S3Endpoint):
    store = MinioObjectStore(s3_server.endpoint, s3_server.access_key, "wrong", unique_bucket())
    with pytest.raises(ObjectStoreError, match="s3://"):
        store.ping()
    with pytest.raises(ObjectStoreError):
        store.put_bytes("a.dcm", b"x")


def test_stopped_server_fails_fast_with_object_store_error(tmp_path: Path):
    server = start_seaweed(tmp_path / "seaweed")
    try:
        store = MinioObjectStore(server.endpoint, server.access_key, server.secret_key, "b-stop")
        store.ensure_bucket()
        store.put_bytes("a.dcm", b"x")
        server.stop()

        for call in (store.ping, lambda: store.stat("a.dcm"), lambda: store.put_bytes("b", b"y")):
            started = time.monotonic()
            with pytest.raises(ObjectStoreError):
                call()
            assert time.monotonic() - started < 5
    finally:
        server.stop()


def test_ping_fails_when_bucket_is_missing(s3_server: S3Endpoint):
    with pytest.raises(ObjectStoreError, match="does not exist"):
        s3_server.store(unique_bucket()).ping()


def test_absent_object_stat_is_none_and_reads_raise_not_found(object_store: MinioObjectStore):
    assert object_store.stat("studies/9/absent.dcm") is None
    with pytest.raises(ObjectNotFound):
        object_store.get_range("studies/9/absent.dcm", 0, 10)
    with pytest.raises(ObjectNotFound):
        list(object_store.iter_chunks("studies/9/absent.dcm"))


def test_list_by_prefix_and_delete(object_store: MinioObjectStore):
    for key in ("studies/1/a.dcm", "studies/1/b.dcm", "studies/12/c.dcm", "other/d.dcm"):
        object_store.put_bytes(key, key.encode())

    listed = {o.key: o for o in object_store.list("studies/1/")}
    assert sorted(listed) == ["studies/1/a.dcm", "studies/1/b.dcm"]
    assert listed["studies/1/a.dcm"].size == len(b"studies/1/a.dcm")
    assert len(list(object_store.list("studies/"))) == 3

    object_store.delete("studies/1/a.dcm")
    object_store.delete("studies/1/a.dcm")  # absent is fine
    assert object_store.stat("studies/1/a.dcm") is None
    assert [o.key for o in object_store.list("studies/1/")] == ["studies/1/b.dcm"]


def test_from_settings_reaches_the_server(s3_server: S3Endpoint):
    bucket = unique_bucket()
    settings = CommonSettings(
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,  # type: ignore[arg-type]
        s3_bucket=bucket,
    )
    store = MinioObjectStore.from_settings(settings)
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.ping()
    assert store.bucket == bucket


def test_read_head_returns_prefix_size_and_sha256_in_one_request(
    object_store: MinioObjectStore, tmp_path: Path
):
    data = os.urandom(300_000)
    path = tmp_path / "head.dcm"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    object_store.put_file("studies/1/series/2/instances/3.dcm", path, sha256=digest)

    head, described = object_store.read_head("studies/1/series/2/instances/3.dcm", 65536)

    assert head == data[:65536]
    assert (described.size, described.sha256) == (len(data), digest)
    small, whole = object_store.read_head("studies/1/series/2/instances/3.dcm", 1 << 20)
    assert small == data and whole.size == len(data)
    with pytest.raises(ObjectNotFound):
        object_store.read_head("studies/1/series/2/instances/404.dcm", 10)
