"""The object store port (``ObjectStore``) and its S3 adapter (the minio SDK).

The in-memory fake for unit tests is ``edge.common.store_memory.InMemoryObjectStore``.

The port is synchronous on purpose: pynetdicom calls handlers from its own threads, and async code
reaches it through ``asyncio.to_thread``. Every infrastructure failure surfaces as
``ObjectStoreError`` so callers can map it to one DICOM or HTTP failure status; a missing object is
not a failure of the store and surfaces as ``None`` (``stat``) or ``ObjectNotFound``.

Each call of the S3 adapter that touches an object is a CLIENT span ``S3.<Operation>``
(``S3.PutObject``, ``S3.GetObject``...) carrying the bucket, the key and the size.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

import certifi
import urllib3
from minio import Minio
from minio import time as minio_time
from minio.error import MinioException, S3Error
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from edge.common.tracing import AttributeValue, record_failure, safe_attributes

if TYPE_CHECKING:
    from edge.common.settings import CommonSettings

_KEY = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_MAX_KEY_BYTES = 1024  # S3 limit on object key length
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})
CHUNK = 1 << 20
SHA256_METADATA = "sha256"  # sent as x-amz-meta-sha256
# What the listener records with each instance (x-amz-meta-*), read back by the storage scrub.
OBJECT_META_CALLING_AE = "calling-ae"
OBJECT_META_CALLED_AE = "called-ae"
OBJECT_META_TRANSFER_SYNTAX = "transfer-syntax"
_META_PREFIX = "x-amz-meta-"
_Headers = dict[str, str | list[str] | tuple[str]]  # the SDK's metadata type
tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class StoredObject:
    """What the store knows about one object. ``sha256`` is None where the listing omits it."""

    key: str
    size: int
    sha256: str | None
    etag: str | None
    last_modified: datetime | None
    # User metadata (names without the x-amz-meta- prefix); filled by ``stat`` only.
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)


class ObjectStoreError(Exception):
    """The store failed: connection refused, timeout, authentication, 5xx, bad response."""


class ChecksumMismatch(ObjectStoreError):
    """The bytes uploaded do not hash to the SHA-256 the caller declared."""


class ObjectNotFound(KeyError):
    """The object does not exist (reads only; ``stat`` answers None instead)."""


class ObjectStore(Protocol):
    """Where instance bytes live. Synchronous; implementations must be thread-safe."""

    def ensure_bucket(self) -> None: ...
    def ping(self) -> None: ...
    def put_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: str | None = None,
        content_type: str = "application/dicom",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject: ...
    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        sha256: str | None = None,
        content_type: str = "application/dicom",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject: ...
    def get_range(self, key: str, offset: int, length: int) -> bytes: ...
    def read_head(self, key: str, length: int) -> tuple[bytes, StoredObject]: ...
    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]: ...
    def stat(self, key: str) -> StoredObject | None: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> Iterator[StoredObject]: ...


def validate_key(key: str) -> str:
    """Refuse any key that could escape its prefix or confuse an S3 implementation.

    Keys are built from validated UIDs (``edge.common.dicom.instance_key``); this is the last line
    of defence, so it is strict: ASCII letters, digits, ``._-``, single slashes, no ``.``/``..``.
    """
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"invalid object key {key!r}")
    if any(segment in {".", ".."} for segment in key.split("/")):
        raise ValueError(f"object key {key!r} has a relative path segment")
    if len(key.encode()) > _MAX_KEY_BYTES:
        raise ValueError("object key longer than 1024 bytes")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a valid key optionally ending in ``/``."""
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"invalid range offset={offset} length={length}")


class _HashingReader:
    """Hashes what the SDK reads, so the upload is checked against the declared ``sha256``."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.digest.update(data)
        return data


# S3 "flexible checksum" header: the server refuses the body unless its SHA-256 matches.
CHECKSUM_SHA256_HEADER = "x-amz-checksum-sha256"


def _strip_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None


class _VerifiedMinio(Minio):
    """The minio client with every request body checked by the server, and hashed only once.

    ``Minio._build_headers`` (``minio/api.py``, 7.2) signs the body's real SHA-256 as
    ``x-amz-content-sha256`` over plain HTTP. SeaweedFS 4.x does not check that value against the
    body (a body altered after signing is stored), but does refuse a wrong ``Content-MD5`` or
    ``x-amz-checksum-sha256`` (BadDigest), as AWS S3 and MinIO do. So every body carries one of
    those two (the SHA-256 when the caller already knows it, else an MD5), as a signed header
    that cannot be swapped in transit, and the payload itself is sent ``UNSIGNED-PAYLOAD``:
    hashing it again for the signature would check nothing more.
    """

    def _build_headers(  # type: ignore[no-untyped-def]
        self, host, headers=None, body=None, creds=None
    ):
        headers = dict(headers or {})
        if body and not (headers.get("Content-MD5") or headers.get(CHECKSUM_SHA256_HEADER)):
            digest = hashlib.md5(body, usedforsecurity=False).digest()
            headers["Content-MD5"] = base64.b64encode(digest).decode()
        headers["Host"] = host
        headers["User-Agent"] = self._user_agent
        if body:
            headers["Content-Length"] = str(len(body))
        if creds:
            headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
            if creds.session_token:
                headers["X-Amz-Security-Token"] = creds.session_token
        date = minio_time.utcnow()
        headers["x-amz-date"] = minio_time.to_amz_date(date)
        return headers, date


class MinioObjectStore:
    """``ObjectStore`` on any S3 API (SeaweedFS in tests, MinIO or S3 in deployment).

    Upload integrity is checked by the server on every request and every multipart part, see
    ``_VerifiedMinio``. On top, ``put_file`` hashes what it reads and refuses the object if the
    file no longer matches the SHA-256 computed on receipt.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
        part_size: int = 16 << 20,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        pool_size: int = 16,
    ) -> None:
        self.bucket = bucket
        self.endpoint = endpoint
        self.part_size = part_size
        # Our own pool so a dead server fails fast: bounded connect/read timeouts and two retries
        # (minio's default is five with backoff). PoolManager is thread-safe; maxsize matches the
        # ~16 threads (pynetdicom associations + to_thread workers) that share one store.
        self._http = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool_size,
            timeout=urllib3.Timeout(connect=min(connect_timeout, timeout), read=timeout),
            retries=urllib3.Retry(
                total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)
            ),
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
        )
        # A fixed region avoids a GetBucketLocation round trip before the first request.
        self._client = _VerifiedMinio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=self._http,
        )

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> MinioObjectStore:
        """Build the store from the ``EDGE_S3_*`` settings."""
        return cls(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key.get_secret_value(),
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            part_size=settings.s3_part_size,
        )

    def _span_attributes(
        self, operation: str, key: str, size: int | None = None
    ) -> dict[str, AttributeValue]:
        return safe_attributes(
            {
                "rpc.system": "aws-api",
                "rpc.service": "S3",
                "rpc.method": operation,
                "aws.s3.bucket": self.bucket,
                "aws.s3.key": key,
                "edge.object.size": size,
            }
        )

    @contextmanager
    def _span(self, operation: str, key: str, size: int | None = None) -> Iterator[Span]:
        """A CLIENT span for one S3 operation on ``key``; failures marked by exception type."""
        with tracer.start_as_current_span(
            f"S3.{operation}",
            kind=SpanKind.CLIENT,
            attributes=self._span_attributes(operation, key, size),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except ObjectNotFound:
                raise  # an answer, not a failure of the store
            except Exception as exc:
                record_failure(span, exc)
                raise

    @contextmanager
    def _errors(self, action: str, key: str = "") -> Iterator[None]:
        where = f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"
        try:
            yield
        except S3Error as exc:
            raise ObjectStoreError(
                f"{action} {where} at {self.endpoint}: {exc.code}: {exc.message}"
            ) from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            # MaxRetryError, ProtocolError, timeouts, ConnectionError and non-XML 5xx answers.
            raise ObjectStoreError(f"{action} {where} at {self.endpoint} failed: {exc}") from exc

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (a concurrent creator is fine)."""
        with self._errors("create bucket"):
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    def ping(self) -> None:
        """Raise ``ObjectStoreError`` unless the bucket answers (readiness probe)."""
        with self._errors("ping"):
            exists = self._client.bucket_exists(self.bucket)
        if not exists:
            raise ObjectStoreError(f"bucket {self.bucket!r} does not exist at {self.endpoint}")

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: str | None = None,
        content_type: str = "application/dicom",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Store a file; above ``part_size`` as a multipart upload, one part in memory.

        A file of one part is read once and hashed once; that SHA-256 goes to the server as
        the request's checksum. ``sha256``, when given, must match (else ChecksumMismatch).
        """
        validate_key(key)
        size = path.stat().st_size
        with self._span("PutObject", key, size):
            if size <= self.part_size:
                return self._put_bytes(key, path.read_bytes(), sha256, content_type, metadata)
            return self._put_large_file(key, path, size, sha256, content_type, metadata)

    def _put_large_file(
        self,
        key: str,
        path: Path,
        size: int,
        sha256: str | None,
        content_type: str,
        metadata: Mapping[str, str] | None,
    ) -> StoredObject:
        if sha256 is None:
            sha256 = sha256_file(path)
        with open(path, "rb") as f:
            reader = _HashingReader(f)
            with self._errors("put", key):
                # One part at a time: parallel parts would hold up to 4 parts per upload in memory
                # and start 3 threads per call, times ~16 concurrent callers.
                result = self._client.put_object(
                    self.bucket,
                    key,
                    cast(BinaryIO, reader),
                    size,
                    content_type=content_type,
                    metadata=self._metadata(sha256, metadata),
                    part_size=self.part_size,
                    num_parallel_uploads=1,
                )
        if reader.digest.hexdigest() != sha256:
            self.delete(key)
            raise ChecksumMismatch(f"{path} no longer matches sha256 {sha256}; upload discarded")
        return StoredObject(key, size, sha256, _strip_etag(result.etag), None)

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        sha256: str | None = None,
        content_type: str = "application/dicom",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Store bytes already in memory; ``sha256`` is computed when not given."""
        validate_key(key)
        with self._span("PutObject", key, len(data)):
            return self._put_bytes(key, data, sha256, content_type, metadata)

    def _put_bytes(
        self,
        key: str,
        data: bytes,
        sha256: str | None,
        content_type: str,
        metadata: Mapping[str, str] | None,
    ) -> StoredObject:
        digest = hashlib.sha256(data).digest()
        actual = digest.hex()
        if sha256 is not None and sha256 != actual:
            raise ChecksumMismatch(f"data for {key} does not match sha256 {sha256}")
        headers = self._metadata(actual, metadata)
        if len(data) <= self.part_size:
            # One request: the server checks the body against the SHA-256 we already have.
            headers[CHECKSUM_SHA256_HEADER] = base64.b64encode(digest).decode()
        with self._errors("put", key):
            result = self._client.put_object(
                self.bucket,
                key,
                cast(BinaryIO, _BytesReader(data)),
                len(data),
                content_type=content_type,
                metadata=headers,
                part_size=self.part_size,
                num_parallel_uploads=1,
            )
        return StoredObject(key, len(data), actual, _strip_etag(result.etag), None)

    @staticmethod
    def _metadata(sha256: str, extra: Mapping[str, str] | None) -> _Headers:
        # The SDK prefixes plain names with x-amz-meta-.
        return {**(extra or {}), SHA256_METADATA: sha256}

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; fewer at the end of the object, b"" past it."""
        validate_key(key)
        check_range(offset, length)
        if length == 0:
            return b""  # the SDK reads length=0 as "to the end"
        with self._span("GetObject", key), self._errors("get", key):
            try:
                response = self._client.get_object(self.bucket, key, offset=offset, length=length)
            except S3Error as exc:
                if exc.code in _NOT_FOUND_CODES:
                    raise ObjectNotFound(key) from exc
                if exc.code == "InvalidRange":
                    return b""
                raise
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

    def read_head(self, key: str, length: int) -> tuple[bytes, StoredObject]:
        """The first ``length`` bytes and the object's description, in one request.

        Saves the HEAD a ``stat`` would cost: the ranged GET's answer carries the total size
        (``Content-Range``) and the user metadata.
        """
        validate_key(key)
        check_range(1, length)
        with self._span("GetObject", key), self._errors("get", key):
            try:
                response = self._client.get_object(self.bucket, key, offset=0, length=length)
            except S3Error as exc:
                if exc.code in _NOT_FOUND_CODES:
                    raise ObjectNotFound(key) from exc
                raise
            try:
                data = bytes(response.read())
                headers = response.headers
            finally:
                response.close()
                response.release_conn()
        total = headers.get("Content-Range", "").rpartition("/")[2]
        size = int(total) if total.isdigit() else len(data)
        return data, StoredObject(
            key=key,
            size=size,
            sha256=headers.get(f"x-amz-meta-{SHA256_METADATA}"),
            etag=_strip_etag(headers.get("ETag")),
            last_modified=None,
        )

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Stream the whole object; the connection goes back to the pool when the loop ends."""
        validate_key(key)
        # Not the current span: a generator that yields while a context is attached would leak
        # it into the consumer's code between chunks.
        span = tracer.start_span(
            "S3.GetObject", kind=SpanKind.CLIENT, attributes=self._span_attributes("GetObject", key)
        )
        try:
            yield from self._iter_chunks(key, chunk_size)
        except ObjectNotFound:
            raise
        except Exception as exc:
            record_failure(span, exc)
            raise
        finally:
            span.end()

    def _iter_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        with self._errors("get", key):
            try:
                response = self._client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _NOT_FOUND_CODES:
                    raise ObjectNotFound(key) from exc
                raise
            try:
                yield from response.stream(chunk_size)
            finally:
                response.close()
                response.release_conn()

    def stat(self, key: str) -> StoredObject | None:
        """The object's size, checksum and date, or None when it does not exist."""
        validate_key(key)
        with self._span("HeadObject", key), self._errors("stat", key):
            try:
                obj = self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _NOT_FOUND_CODES:
                    return None
                raise
        meta = {
            name.lower().removeprefix(_META_PREFIX): str(value)
            for name, value in (obj.metadata or {}).items()
            if name.lower().startswith(_META_PREFIX)
        }
        return StoredObject(
            key=key,
            size=obj.size or 0,
            sha256=meta.get(SHA256_METADATA),
            etag=_strip_etag(obj.etag),
            last_modified=obj.last_modified,
            metadata=meta,
        )

    def delete(self, key: str) -> None:
        """Remove the object; an absent object is not an error (S3 semantics)."""
        validate_key(key)
        with self._span("DeleteObject", key), self._errors("delete", key):
            self._client.remove_object(self.bucket, key)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under ``prefix`` (recursive). Listings carry no checksum: sha256 is None."""
        validate_prefix(prefix)
        with self._errors("list", prefix):
            for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.is_dir or obj.object_name is None:
                    continue
                yield StoredObject(
                    obj.object_name, obj.size or 0, None, _strip_etag(obj.etag), obj.last_modified
                )


class _BytesReader:
    """Minimal ``read`` over bytes without the copy ``io.BytesIO`` would make."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else self._pos + size
        chunk = self._view[self._pos : end]
        self._pos += len(chunk)
        return bytes(chunk)
