"""Rendered study and series (PS3.18 10.4.1.1.7): every frame of every instance with pixel data,
rendered as in ``/instances/{sop}/rendered`` (window, viewport, quality), one
``multipart/related`` part each, in the catalog's order. Objects are fetched ahead
(``EDGE_WADO_PREFETCH`` objects, at most ``EDGE_WADO_PREFETCH_BYTES``) and rendered one frame at
a time on a worker thread: memory holds that window and one image, whatever the study's size.
Instances without pixel data, or whose pixel data cannot be decoded here, are left out; a study
with nothing to render is 404.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from edge.listener import pixels
from edge.listener.multipart import closing, new_boundary, part_head, related
from edge.listener.negotiate import NotAcceptable, rendered_parts_type
from edge.listener.wado import (
    HttpProblem,
    Located,
    WadoDeps,
    _render_params,
    _started,
    fetch,
    window_full,
)

log = logging.getLogger(__name__)


async def _fetched(
    deps: WadoDeps, located: Located
) -> AsyncIterator[tuple[dict[str, Any], asyncio.Task[bytes]]]:
    """Each instance with its object's fetch, the window of ``window_full`` under way ahead."""
    pending: deque[tuple[dict[str, Any], asyncio.Task[bytes]]] = deque()
    held = 0
    try:
        async for instance in located:
            pending.append((instance, asyncio.create_task(fetch(deps, instance))))
            held += int(instance["size"])
            while window_full(deps, len(pending), held):
                oldest = pending.popleft()
                held -= int(oldest[0]["size"])
                yield oldest
        while pending:
            yield pending.popleft()
    finally:
        for _, task in pending:
            task.cancel()


async def rendered_many(request: Request, deps: WadoDeps) -> Response:
    """``/studies/{study}/rendered`` and ``/studies/{study}/series/{series}/rendered``."""
    try:
        media_type = rendered_parts_type(request.headers.get("accept"))
    except NotAcceptable as exc:
        raise HttpProblem(406, "Not acceptable", str(exc)) from None
    window, viewport, quality = _render_params(request.query_params, thumbnail=False)
    params = request.path_params
    located = await Located.open(deps, params["study"], params.get("series"))
    boundary = new_boundary()

    async def body() -> AsyncIterator[bytes]:
        separator = b""
        async for instance, task in _fetched(deps, located):
            data = await task
            try:
                ds = await asyncio.to_thread(pixels.read, data)
                if "PixelData" not in ds:
                    continue
                for frame in range(1, pixels.number_of_frames(ds) + 1):
                    image = await asyncio.to_thread(
                        pixels.render,
                        ds,
                        frame=frame,
                        media_type=media_type,
                        window_override=window,
                        viewport=viewport,
                        quality=quality,
                    )
                    yield separator + part_head(boundary, media_type) + image
                    separator = b"\r\n"
            except pixels.PixelError as exc:
                log.warning("WADO-RS rendered: %s left out: %s", instance["sop"], exc)
            except Exception as exc:  # not a readable DICOM object
                log.warning(
                    "WADO-RS rendered: %s left out: %s", instance["sop"], type(exc).__name__
                )
        yield closing(boundary)

    pieces = await _started(
        body(),
        empty=closing(boundary),
        problem=HttpProblem(404, "Not found", "nothing here has pixel data that can be rendered"),
    )
    return StreamingResponse(pieces, media_type=related(boundary, media_type))
