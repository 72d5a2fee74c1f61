"""``InMemoryObjectStore``: the dict-backed ``ObjectStore`` that unit tests of handlers use."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from edge.common.store import (
    CHUNK,
    SHA256_METADATA,
    ChecksumMismatch,
    ObjectNotFound,
    ObjectStoreError,
    StoredObject,
    check_range,
    validate_key,
    validate_prefix,
)


@dataclass(frozen=True)
class MemoryObject:
    data: bytes
    content_type: str
    metadata: Mapping[str, str]
    last_modified: datetime


@dataclass
class InMemoryObjectStore:
    """Dict-backed ``ObjectStore`` for unit tests of handlers.

    Set ``fail_next`` to raise that exception from the next call, or ``broken = True`` to make
    every call raise ``ObjectStoreError`` (as an unreachable server would).
    """

    objects: dict[str, MemoryObject] = field(default_factory=dict)
    fail_next: Exception | None = None
    broken: bool = False
    bucket_created: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _check(self) -> None:
        with self._lock:
            exc, self.fail_next = self.fail_next, None
        if exc is not None:
            raise exc
        if self.broken:
            raise ObjectStoreError("in-memory store is broken")

    def ensure_bucket(self) -> None:
        self._check()
        self.bucket_created = True

    def ping(self) -> None:
        self._check()

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: str | None = None,
        content_type: str = "application/dicom",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        return self.put_bytes(
            key, path.read_bytes(), sha256=sha256, content_type=content_type, metadata=metadata
        )

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        sha256: str | None = None,
        content_type: str = "application/dicom",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        validate_key(key)
        self._check()
        actual = hashlib.sha256(data).hexdigest()
        if sha256 is not None and sha256 != actual:
            raise ChecksumMismatch(f"data for {key} does not match sha256 {sha256}")
        meta = {**(metadata or {}), SHA256_METADATA: actual}
        obj = MemoryObject(bytes(data), content_type, meta, datetime.now(UTC))
        with self._lock:
            self.objects[key] = obj
        return self._described(key, obj)

    @staticmethod
    def _described(key: str, obj: MemoryObject) -> StoredObject:
        etag = hashlib.md5(obj.data, usedforsecurity=False).hexdigest()
        return StoredObject(
            key, len(obj.data), obj.metadata[SHA256_METADATA], etag, obj.last_modified
        )

    def _get(self, key: str) -> MemoryObject:
        validate_key(key)
        self._check()
        with self._lock:
            obj = self.objects.get(key)
        if obj is None:
            raise ObjectNotFound(key)
        return obj

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        return self._get(key).data[offset : offset + length]

    def read_head(self, key: str, length: int) -> tuple[bytes, StoredObject]:
        obj = self._get(key)
        return obj.data[:length], self._described(key, obj)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        data = self._get(key).data
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    def stat(self, key: str) -> StoredObject | None:
        try:
            obj = self._get(key)
        except ObjectNotFound:
            return None
        return replace(self._described(key, obj), metadata=dict(obj.metadata))

    def delete(self, key: str) -> None:
        validate_key(key)
        self._check()
        with self._lock:
            self.objects.pop(key, None)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        validate_prefix(prefix)
        self._check()
        with self._lock:
            items = sorted((k, o) for k, o in self.objects.items() if k.startswith(prefix))
        for key, obj in items:
            yield StoredObject(key, len(obj.data), None, None, obj.last_modified)
