"""WADO-RS (PS3.18 10.4) and WADO-URI (PS3.18 9), under ``/dicom-web``.

The listener keeps no catalog: the ``retrieval.locate`` RPC says which instances a request names
and where their bytes are (page by page), and the bytes come straight from S3. Study and series
retrieval stream one instance after another as ``multipart/related`` parts, with objects fetched
ahead (``EDGE_WADO_PREFETCH`` objects, at most ``EDGE_WADO_PREFETCH_BYTES`` of them) so S3's
latency overlaps the sending; nothing holds more than that window in memory. Metadata comes from
the catalog's header (DICOM JSON without bulk data) with absolute BulkDataURIs; frames, bulk data
and rendered images read one instance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from edge.common.audit import Auditor
from edge.common.dicom import is_valid_uid
from edge.common.http import problem
from edge.common.rpc import RpcError, RpcTimeout
from edge.common.store import ObjectNotFound, ObjectStore, ObjectStoreError
from edge.common.tracing import carry_context, safe_attributes
from edge.listener import pixels
from edge.listener.auditing import http_requester, retrieved
from edge.listener.dicomxml import native_model
from edge.listener.multipart import closing, encode, new_boundary, part_head, related
from edge.listener.negotiate import (
    DEFAULT_SYNTAX,
    DICOM,
    DICOM_JSON,
    DICOM_XML,
    OCTET_STREAM,
    NotAcceptable,
    choose_syntax,
    dicom_syntaxes,
    frame_choice,
    metadata_type,
    rendered_type,
)
from edge.listener.qido import PREFIX

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

AVAILABLE_TRANSFER_SYNTAX = "00083002"
PIXEL_DATA_KEY = "7FE00010"
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
# Objects larger than this are streamed chunk by chunk rather than fetched ahead whole.
WHOLE_OBJECT_LIMIT = 64 << 20

WADO_SECONDS = Histogram(
    "edge_wado_seconds",
    "WADO-RS / WADO-URI handling time until the response starts, by resource and HTTP status",
    ["resource", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WADO_BYTES = Counter("edge_wado_instance_bytes_total", "Instance bytes sent by WADO-RS/URI")
WADO_INSTANCES = Counter("edge_wado_instances_total", "Instances sent by WADO-RS/URI")

# Call ``retrieval.locate`` with a payload and return its reply; raises RpcTimeout or RpcError.
Locate = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class HttpProblem(Exception):
    """A request answered with a problem response (RFC 9457)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail

    def response(self) -> Response:
        return problem(self.status, self.title, self.detail)


@dataclass
class WadoDeps:
    locate: Locate
    store: Callable[[], ObjectStore | None]  # the listener's store, once it has started
    page: int = 500  # instances per retrieval.locate page
    prefetch: int = 16  # objects fetched ahead of the one being sent
    # ... and, beyond the first of them, at most this many bytes (their stored sizes)
    prefetch_bytes: int = 32 << 20
    # Threads for S3 reads, so retrievals neither wait behind nor starve the default executor
    # (STOW-RS, pixel work); None: the default executor.
    readers: Executor | None = None


def _uid(value: str | None, name: str) -> str:
    if value is None or not is_valid_uid(value):
        raise HttpProblem(400, "Bad retrieve request", f"{name} is not a UID")
    return value


class Located:
    """The instances a request names, page by page from ``retrieval.locate``; the first page is
    read by :meth:`open` so that "nothing there" is a 404 before any byte is sent."""

    def __init__(self, deps: WadoDeps, payload: dict[str, Any]) -> None:
        self.deps, self.payload = deps, payload
        self.first: list[dict[str, Any]] = []
        self.next: Any = None

    @classmethod
    async def open(
        cls,
        deps: WadoDeps,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        *,
        with_header: bool = False,
        limit: int | None = None,
    ) -> Located:
        payload = {
            "study": _uid(study, "StudyInstanceUID"),
            "series": None if series is None else _uid(series, "SeriesInstanceUID"),
            "sop": None if sop is None else _uid(sop, "SOPInstanceUID"),
            "with_header": with_header,
            "limit": limit or deps.page,
        }
        located = cls(deps, payload)
        located.first, located.next = await located._page(None)
        if not located.first:
            raise HttpProblem(404, "Not found", "no such instance, series or study")
        return located

    async def _page(self, after: Any) -> tuple[list[dict[str, Any]], Any]:
        payload = dict(self.payload)
        if after is not None:
            payload["after"] = after
        try:
            reply = await self.deps.locate(payload)
        except RpcTimeout:
            raise HttpProblem(
                503, "Retrieve unavailable", "the retrieval service did not answer in time"
            ) from None
        except RpcError:
            log.exception("WADO: retrieval.locate failed")
            raise HttpProblem(503, "Retrieve unavailable", "the retrieval service failed") from None
        if reply.get("error"):
            status = int(reply["error"].get("status", 0))
            comment = str(reply["error"].get("comment", ""))
            if status >> 8 == 0xA7:
                raise HttpProblem(503, "Retrieve unavailable", comment or "catalog busy")
            raise HttpProblem(400, "Bad retrieve request", comment)
        return list(reply.get("instances") or []), reply.get("next")

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        for instance in self.first:
            yield instance
        cursor = self.next
        while cursor is not None:
            page, cursor = await self._page(cursor)
            for instance in page:
                yield instance


def window_full(deps: WadoDeps, count: int, held: int) -> bool:
    """Whether ``count`` fetches under way, holding ``held`` bytes, are as many as one
    retrieval may have: ``deps.prefetch`` objects, or ``deps.prefetch_bytes`` (one object
    always goes, however large), so memory is bounded by the window, not by the study."""
    return count > deps.prefetch or (count > 1 and held > deps.prefetch_bytes)


def streamed(instance: dict[str, Any], syntax: str) -> bool:
    """Whether the object is streamed from S3 at its turn (a large one sent as stored) rather
    than fetched whole ahead of it."""
    return syntax == instance["transfer_syntax"] and int(instance["size"]) > WHOLE_OBJECT_LIMIT


def held_size(instance: dict[str, Any], syntax: str) -> int:
    """Bytes a fetch ahead holds: the whole object, none for one streamed at its turn."""
    return 0 if streamed(instance, syntax) else int(instance["size"])


def _store(deps: WadoDeps) -> ObjectStore:
    store = deps.store()
    if store is None:
        raise HttpProblem(503, "Retrieve unavailable", "the listener has not started")
    return store


async def fetch(deps: WadoDeps, instance: dict[str, Any]) -> bytes:
    """One whole object (a worker thread does the GET)."""
    store = _store(deps)
    try:
        read = carry_context(store.get_range)
        return await asyncio.get_running_loop().run_in_executor(
            deps.readers, read, instance["object_key"], 0, int(instance["size"])
        )
    except ObjectNotFound:
        log.error("WADO: catalogued object missing: %s", instance["object_key"])
        raise HttpProblem(404, "Not found", "the instance's bytes are missing") from None
    except ObjectStoreError as exc:
        log.error("WADO: S3 read failed: %s", exc)
        raise HttpProblem(503, "Retrieve unavailable", "object store unavailable") from None


async def _fetch_for(deps: WadoDeps, instance: dict[str, Any], syntax: str) -> bytes | None:
    """The object as ``syntax``; None for a large object sent as stored (streamed instead)."""
    if streamed(instance, syntax):
        return None
    data = await fetch(deps, instance)
    if syntax != instance["transfer_syntax"]:
        data = await asyncio.to_thread(pixels.transcode, data, syntax)
    return data


async def _dicom_body(
    deps: WadoDeps, located: Located, options: list[str], boundary: str
) -> AsyncIterator[bytes]:
    """The multipart body: each deliverable instance as an ``application/dicom`` part, in the
    catalog's order, with the window of :func:`window_full` in flight ahead of the one sent."""
    pending: deque[tuple[dict[str, Any], str, asyncio.Task[bytes | None]]] = deque()
    held = 0  # bytes the pending fetches hold or will
    first = True

    async def send(instance: dict[str, Any], syntax: str, task: asyncio.Task[bytes | None]):  # type: ignore[no-untyped-def]
        nonlocal first
        try:
            data = await task
        except pixels.PixelError as exc:  # PS3.18 8.7.3.5.2: left out; the others still go
            log.warning("WADO-RS: %s left out: %s", instance["sop"], exc)
            return
        yield (b"" if first else b"\r\n") + part_head(
            boundary, f"{DICOM}; transfer-syntax={syntax}"
        )
        first = False
        if data is not None:
            yield data
            size = len(data)
        else:  # large and as stored: chunk by chunk
            size = 0
            chunks = _store(deps).iter_chunks(instance["object_key"])
            async for chunk in iterate_in_threadpool(chunks):
                size += len(chunk)
                yield chunk
        WADO_BYTES.inc(size)
        WADO_INSTANCES.inc()

    try:
        async for instance in located:
            syntax = choose_syntax(options, instance["transfer_syntax"])
            if syntax is None:  # PS3.18 8.7.3.5.2: left out; the others still go
                log.warning(
                    "WADO-RS: %s cannot be sent in any accepted transfer syntax", instance["sop"]
                )
                continue
            task = asyncio.create_task(_fetch_for(deps, instance, syntax))
            pending.append((instance, syntax, task))
            held += held_size(instance, syntax)
            while window_full(deps, len(pending), held):
                oldest = pending.popleft()
                held -= held_size(oldest[0], oldest[1])
                async for piece in send(*oldest):
                    yield piece
        while pending:
            async for piece in send(*pending.popleft()):
                yield piece
        yield closing(boundary)
    finally:
        for _, _, task in pending:
            task.cancel()


async def _started(
    body: AsyncIterator[bytes], *, empty: bytes | None = None, problem: HttpProblem | None = None
) -> AsyncIterator[bytes]:
    """``body`` with its first piece already produced, so a failure before any byte was sent
    (S3 down, the first object missing) is still a proper problem response. A first piece
    equal to ``empty`` (a multipart body without parts) raises ``problem``."""
    first = await body.__anext__()
    if problem is not None and first == empty:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
        raise problem

    async def chained() -> AsyncIterator[bytes]:
        yield first
        async for piece in body:
            yield piece

    return chained()


async def retrieve(request: Request, deps: WadoDeps) -> Response:
    """Study, series or instance retrieval (PS3.18 10.4.1.1.1-3)."""
    params = request.path_params
    try:
        options = dicom_syntaxes(request.headers.get("accept"))
    except NotAcceptable as exc:
        raise HttpProblem(406, "Not acceptable", str(exc)) from None
    located = await Located.open(deps, params["study"], params.get("series"), params.get("sop"))
    if not any(choose_syntax(options, i["transfer_syntax"]) for i in located.first):
        raise HttpProblem(
            406, "Not acceptable", "no instance can be sent in an accepted transfer syntax"
        )
    boundary = new_boundary()
    body = await _started(
        _dicom_body(deps, located, options, boundary),
        empty=closing(boundary),
        problem=HttpProblem(
            406, "Not acceptable", "no instance can be encoded in an accepted transfer syntax"
        ),
    )
    return StreamingResponse(body, media_type=related(boundary, DICOM))


def _absolute_bulk_uris(node: Any, base: str) -> Any:
    """Relative ``bulkdata/<tag>`` URIs of the catalog header made absolute against ``base``."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "BulkDataURI" and isinstance(value, str) and not value.startswith("http"):
                out[key] = f"{base}/{value}"
            else:
                out[key] = _absolute_bulk_uris(value, base)
        return out
    if isinstance(node, list):
        return [_absolute_bulk_uris(v, base) for v in node]
    return node


def instance_url(service: str, instance: dict[str, Any]) -> str:
    return (
        f"{service}/studies/{instance['study']}/series/{instance['series']}"
        f"/instances/{instance['sop']}"
    )


def instance_metadata(instance: dict[str, Any], service: str) -> dict[str, Any]:
    """PS3.18 10.4.1.1.4: the instance's attributes as DICOM JSON, bulk data by BulkDataURI.

    The catalog's header has no pixel data; an image (Rows present) gets a Pixel Data element
    whose BulkDataURI this service resolves, and the stored transfer syntax is given as
    Available Transfer Syntax UID (PS3.18 10.4.1.1.4, Table 10.4.1-? informative).
    """
    url = instance_url(service, instance)
    header = _absolute_bulk_uris(instance.get("header") or {}, url)
    if "00280010" in header:
        bits = (header.get("00280100", {}).get("Value") or [8])[0]
        native = instance["transfer_syntax"] in {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
        header[PIXEL_DATA_KEY] = {
            "vr": "OW" if native and bits and int(bits) > 8 else "OB",
            "BulkDataURI": f"{url}/bulkdata/{PIXEL_DATA_KEY}",
        }
    header[AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [instance["transfer_syntax"]]}
    return dict(sorted(header.items()))


async def metadata(request: Request, deps: WadoDeps) -> Response:
    """Study, series or instance metadata (PS3.18 10.4.1.1.4), streamed page by page: a DICOM
    JSON array, or one PS3.19 XML document per instance as multipart/related parts."""
    try:
        media_type = metadata_type(request.headers.get("accept"))
    except NotAcceptable as exc:
        raise HttpProblem(406, "Not acceptable", str(exc)) from None
    params = request.path_params
    located = await Located.open(
        deps, params["study"], params.get("series"), params.get("sop"), with_header=True
    )
    service = str(request.base_url).rstrip("/") + PREFIX
    if media_type == DICOM_XML:
        boundary = new_boundary()

        async def parts() -> AsyncIterator[bytes]:
            separator = b""
            async for instance in located:
                document = native_model(instance_metadata(instance, service))
                yield separator + part_head(boundary, DICOM_XML) + document
                separator = b"\r\n"
            yield closing(boundary)

        return StreamingResponse(await _started(parts()), media_type=related(boundary, DICOM_XML))

    async def body() -> AsyncIterator[bytes]:
        separator = b"["
        async for instance in located:
            yield separator + json.dumps(instance_metadata(instance, service)).encode()
            separator = b","
        yield b"]"

    return StreamingResponse(await _started(body()), media_type=DICOM_JSON)


async def _one(request: Request, deps: WadoDeps) -> dict[str, Any]:
    params = request.path_params
    located = await Located.open(deps, params["study"], params["series"], params["sop"], limit=1)
    return located.first[0]


def _pixel_problem(exc: pixels.PixelError) -> HttpProblem:
    detail = str(exc)
    if "decoded" in detail or "encoded" in detail:
        return HttpProblem(406, "Not acceptable", detail)
    return HttpProblem(404, "Not found", detail)


async def _frames_response(
    deps: WadoDeps, instance: dict[str, Any], accept: str | None, numbers: list[int] | None
) -> Response:
    try:
        choice = frame_choice(accept, instance["transfer_syntax"])
    except NotAcceptable as exc:
        raise HttpProblem(406, "Not acceptable", str(exc)) from None
    data = await fetch(deps, instance)

    def cut() -> list[bytes]:
        ds = pixels.read(data)
        wanted = numbers or list(range(1, pixels.number_of_frames(ds) + 1))
        return list(pixels.frames(ds, wanted, decode=choice.decode))

    try:
        parts = await asyncio.to_thread(cut)
    except pixels.PixelError as exc:
        raise _pixel_problem(exc) from None
    boundary = new_boundary()
    part_type = f"{choice.media_type}; transfer-syntax={choice.transfer_syntax}"
    return Response(
        encode([(part_type, p) for p in parts], boundary),
        media_type=related(boundary, choice.media_type),
    )


async def frames(request: Request, deps: WadoDeps) -> Response:
    """Frames of an instance (PS3.18 10.4.1.1.6)."""
    try:
        numbers = pixels.frame_numbers(request.path_params["frames"])
    except ValueError as exc:
        raise HttpProblem(400, "Bad retrieve request", str(exc)) from None
    instance = await _one(request, deps)
    return await _frames_response(deps, instance, request.headers.get("accept"), numbers)


async def bulkdata(request: Request, deps: WadoDeps) -> Response:
    """A BulkDataURI of the metadata (PS3.18 10.4.1.1.5): pixel data as its frames, any other
    element's value as one application/octet-stream part."""
    tag = request.path_params["tag"]
    if not _TAG.match(tag):
        raise HttpProblem(400, "Bad retrieve request", "the bulk data tag is not 8 hex digits")
    instance = await _one(request, deps)
    accept = request.headers.get("accept")
    if tag.upper() == PIXEL_DATA_KEY:
        return await _frames_response(deps, instance, accept, None)
    if accept and not any(
        r in accept for r in ("*/*", "multipart/related", "multipart/*", OCTET_STREAM)
    ):
        raise HttpProblem(406, "Not acceptable", f"bulk data is {OCTET_STREAM} in multipart")
    data = await fetch(deps, instance)
    try:
        value = await asyncio.to_thread(lambda: pixels.bulk_value(pixels.read(data), int(tag, 16)))
    except pixels.PixelError as exc:
        raise HttpProblem(404, "Not found", str(exc)) from None
    boundary = new_boundary()
    return Response(
        encode([(OCTET_STREAM, value)], boundary), media_type=related(boundary, OCTET_STREAM)
    )


def _render_params(
    query: Any, *, thumbnail: bool
) -> tuple[tuple[float, float] | None, tuple[int, int] | None, int]:
    try:
        window = pixels.window_of(query.get("window"))
        default = pixels.DEFAULT_THUMBNAIL if thumbnail else None
        viewport = pixels.viewport_of(query.get("viewport"), default)
        quality = int(query.get("quality", "90"))
        if not 1 <= quality <= 100:
            raise ValueError("quality must be 1..100")
    except ValueError as exc:
        raise HttpProblem(400, "Bad retrieve request", str(exc)) from None
    return window, viewport, quality


async def _render(
    deps: WadoDeps,
    instance: dict[str, Any],
    *,
    media_type: str,
    frame: int,
    window: tuple[float, float] | None,
    viewport: tuple[int, int] | None,
    quality: int,
) -> Response:
    data = await fetch(deps, instance)
    try:
        image = await asyncio.to_thread(
            lambda: pixels.render(
                pixels.read(data),
                frame=frame,
                media_type=media_type,
                window_override=window,
                viewport=viewport,
                quality=quality,
            )
        )
    except pixels.PixelError as exc:
        raise _pixel_problem(exc) from None
    return Response(image, media_type=media_type)


async def rendered(request: Request, deps: WadoDeps, *, thumbnail: bool = False) -> Response:
    """Rendered instance or frame (PS3.18 10.4.1.1.7) and thumbnails (10.4.1.1.8): a study's
    or series' thumbnail is that of its middle instance; a multi-frame instance renders its
    first frame (or the first frame of the list)."""
    try:
        media_type = rendered_type(request.headers.get("accept"))
    except NotAcceptable as exc:
        raise HttpProblem(406, "Not acceptable", str(exc)) from None
    params = request.path_params
    window, viewport, quality = _render_params(request.query_params, thumbnail=thumbnail)
    frame = 1
    if "frames" in params:
        try:
            frame = pixels.frame_numbers(params["frames"])[0]
        except ValueError as exc:
            raise HttpProblem(400, "Bad retrieve request", str(exc)) from None
    if "sop" in params:
        instance = await _one(request, deps)
    else:
        located = await Located.open(deps, params["study"], params.get("series"))
        instance = located.first[len(located.first) // 2]
    return await _render(
        deps,
        instance,
        media_type=media_type,
        frame=frame,
        window=window,
        viewport=viewport,
        quality=quality,
    )


# -- WADO-URI (PS3.18 9) -----------------------------------------------------------------------


def _float(query: Any, name: str) -> float | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise HttpProblem(400, "Bad WADO request", f"{name} must be a number") from None


async def wado_uri(request: Request, deps: WadoDeps) -> Response:
    """``GET /wado?requestType=WADO&studyUID=&seriesUID=&objectUID=[&contentType=]``: one
    instance as application/dicom, or rendered as image/jpeg (the default) or image/png."""
    query = request.query_params
    if query.get("requestType") != "WADO":
        raise HttpProblem(400, "Bad WADO request", "requestType must be WADO")
    study = _uid(query.get("studyUID"), "studyUID")
    series = _uid(query.get("seriesUID"), "seriesUID")
    sop = _uid(query.get("objectUID"), "objectUID")
    wanted = [t.split(";")[0].strip().lower() for t in query.get("contentType", "").split(",")]
    wanted = [t for t in wanted if t] or ["image/jpeg"]
    supported = [t for t in wanted if t in (DICOM, "image/jpeg", "image/png", "*/*")]
    if not supported:
        raise HttpProblem(406, "Not acceptable", "contentType may be application/dicom, image/*")
    content_type = "image/jpeg" if supported[0] == "*/*" else supported[0]
    located = await Located.open(deps, study, series, sop, limit=1)
    instance = located.first[0]
    if content_type == DICOM:
        target = query.get("transferSyntax") or DEFAULT_SYNTAX
        syntax = choose_syntax([target], instance["transfer_syntax"])
        if syntax is None:
            raise HttpProblem(406, "Not acceptable", f"cannot send this instance in {target}")
        try:
            data = await _fetch_for(deps, instance, syntax)
        except pixels.PixelError as exc:
            raise _pixel_problem(exc) from None
        if data is None:
            data = await fetch(deps, instance)
        WADO_BYTES.inc(len(data))
        WADO_INSTANCES.inc()
        return Response(data, media_type=DICOM)
    frame = query.get("frameNumber", "1")
    if not frame.isdigit() or int(frame) < 1:
        raise HttpProblem(400, "Bad WADO request", "frameNumber must be a positive integer")
    rows, columns = _float(query, "rows"), _float(query, "columns")
    # PS3.18 9.1.2 rows/columns: one of them alone keeps the aspect ratio.
    viewport = None
    if rows or columns:
        big = pixels.MAX_VIEWPORT
        viewport = (int(columns) if columns else big, int(rows) if rows else big)
        if not (0 < viewport[0] <= big and 0 < viewport[1] <= big):
            raise HttpProblem(400, "Bad WADO request", f"rows and columns must be 1..{big}")
    center, width = _float(query, "windowCenter"), _float(query, "windowWidth")
    window = (center, width) if center is not None and width is not None and width >= 1 else None
    quality = int(_float(query, "imageQuality") or 90)
    return await _render(
        deps,
        instance,
        media_type=content_type,
        frame=int(frame),
        window=window,
        viewport=viewport,
        quality=max(1, min(quality, 100)),
    )


# Requests that hand out a study's instances or headers, audited one by one. Frames, bulk data,
# renderings and thumbnails are not: a viewer asks for hundreds of them after the metadata
# request that is audited (the trail records who opened the study, not each frame).
AUDITED = frozenset({"study", "series", "instance", "metadata", "wado-uri"})


def audit_retrieval(audit: Auditor | None, request: Request, resource: str, status: int) -> None:
    """A WADO retrieval in the audit trail: DICOM Instances Transferred (R) to the requester."""
    if audit is None or resource not in AUDITED:
        return
    study = request.path_params.get("study") or request.query_params.get("studyUID") or ""
    requester = http_requester(request)
    retrieved(
        audit,
        requester=requester,
        destination=requester,
        identifier={"0020000D": {"vr": "UI", "Value": [study]}} if study else {},
        status=0 if status < 400 else (0xA700 if status >= 500 else 0xC000),
        reason=f"HTTP {status}" if status >= 400 else "",
    )


def wado_routes(deps: WadoDeps, audit: Auditor | None = None) -> list[BaseRoute]:
    """The retrieve resources of the Studies Service (PS3.18 10.4.1) and WADO-URI."""
    from edge.listener.rendered import rendered_many  # it builds on this module

    def route(path: str, resource: str, handler: Any, **options: Any) -> Route:
        async def endpoint(request: Request) -> Response:
            started = time.monotonic()
            with tracer.start_as_current_span(
                f"WADO {resource}",
                kind=SpanKind.SERVER,
                attributes=safe_attributes({"http.route": PREFIX + path}),
                record_exception=False,
            ) as span:
                try:
                    response = await handler(request, deps, **options)
                except HttpProblem as exc:
                    response = exc.response()
                span.set_attributes(
                    safe_attributes({"http.response.status_code": response.status_code})
                )
            WADO_SECONDS.labels(resource, str(response.status_code)).observe(
                time.monotonic() - started
            )
            audit_retrieval(audit, request, resource, response.status_code)
            return response

        return Route(PREFIX + path, endpoint, methods=["GET"])

    study = "/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{sop}"
    return [
        route(study, "study", retrieve),
        route(series, "series", retrieve),
        route(instance, "instance", retrieve),
        route(study + "/metadata", "metadata", metadata),
        route(series + "/metadata", "metadata", metadata),
        route(instance + "/metadata", "metadata", metadata),
        route(instance + "/frames/{frames}", "frames", frames),
        route(instance + "/bulkdata/{tag}", "bulkdata", bulkdata),
        route(study + "/rendered", "rendered", rendered_many),
        route(series + "/rendered", "rendered", rendered_many),
        route(instance + "/rendered", "rendered", rendered),
        route(instance + "/frames/{frames}/rendered", "rendered", rendered),
        route(study + "/thumbnail", "thumbnail", rendered, thumbnail=True),
        route(series + "/thumbnail", "thumbnail", rendered, thumbnail=True),
        route(instance + "/thumbnail", "thumbnail", rendered, thumbnail=True),
        route(instance + "/frames/{frames}/thumbnail", "thumbnail", rendered, thumbnail=True),
        route("/wado", "wado-uri", wado_uri),
    ]
