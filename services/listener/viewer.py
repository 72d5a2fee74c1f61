"""The OHIF viewer under ``/viewer``: the prebuilt ``dist/`` of the npm package ``@ohif/app``,
served as it ships, pointed at this server's ``/dicom-web``.

Nothing of the package is edited on disk (``make viewer`` fetches it; ``EDGE_VIEWER_DIR`` names
its ``dist/``). Three things are decided when a request is served:

- ``app-config.js`` is generated (:func:`app_config`): one DICOMweb data source whose QIDO-RS,
  WADO-RS and WADO-URI roots are this origin's ``/dicom-web``, and ``routerBasename`` ``/viewer``.
- The published build assumes it is served from ``/``: ``index.html`` names its assets as
  ``/…`` and sets ``window.PUBLIC_URL="/"``, each webpack runtime (the app's and its workers')
  loads its chunks, WebAssembly codecs and workers from ``__webpack_require__.p = "/"``, the
  style sheet takes its font from ``url(/…)`` and the app imports the microscopy viewer from
  ``'/dicom-microscopy-viewer/…'``. Those few strings are rewritten to ``/viewer/…`` in what is
  sent (:func:`rebase`), so the viewer lives under one prefix and the server's root stays the
  API's. (The service worker, ``sw.js``, is never registered: OHIF's registration script only
  runs inside a worker.)
- A path that names no file is a route of the single-page app (``/viewer/viewer?StudyInstance
  UIDs=…``, ``/viewer/``) and gets ``index.html``; a missing asset (a name with an extension and
  no ``text/html`` in Accept) is a 404, so a broken build fails loudly rather than parsing HTML
  as JavaScript.

Without the package the viewer's paths answer a 503 problem that says how to fetch it; every
other route of the listener is unaffected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from edge.common.http import problem

log = logging.getLogger(__name__)

PREFIX = "/viewer"
HOW_TO_FETCH = (
    "the OHIF viewer is not installed: run `make viewer` (it fetches the pinned @ohif/app into "
    ".run/ohif/) and set EDGE_VIEWER_DIR to its dist/ directory (`make run` does both)"
)
# The webpack runtime's public path in the published bundles (app, chunks and workers), and the
# one root-relative import of the app bundle.
_PUBLIC_PATH = b'__webpack_require__.p = "/";'
_MICROSCOPY = b"'/dicom-microscopy-viewer/"
# Style sheets: url(/font.woff2).
_CSS_ROOT_URL = re.compile(rb"url\((['\"]?)/(?!/)")
# index.html: the public URL script and every root-relative src/href.
_INDEX_PUBLIC_URL = re.compile(rb'window\.PUBLIC_URL="/"')
_INDEX_ROOT_REFS = re.compile(rb'((?:src|href)=")/(?!/)')
# Content-hashed file names (app.bundle.0f6159c501addfe9.js, 34b1e6b1deb5828e.wasm): immutable.
_HASHED = re.compile(r"(^|\.)[0-9a-f]{16}\.")
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}


def app_config(
    *, prefix: str = PREFIX, dicomweb_root: str = "/dicom-web", request_options: Mapping[str, Any]
) -> str:
    """OHIF's ``app-config.js``: ``window.config`` with one DICOMweb data source.

    ``dicomweb_root`` may be relative: the browser resolves it against the page's own URL, so
    the viewer asks the origin it came from (no CORS) under whatever host name the user typed.
    ``request_options`` goes to the data source as OHIF's ``requestOptions``; OHIF takes the
    ``Authorization`` header of its DICOMweb requests from its user-authentication service
    (an ``oidc`` entry of the config, or ``?token=`` on the viewer's URL).
    """
    source = {
        "friendlyName": "DICOM Edge",
        "name": "edge",
        "qidoRoot": dicomweb_root,
        "wadoRoot": dicomweb_root,
        "wadoUriRoot": dicomweb_root,
        "qidoSupportsIncludeField": True,
        "supportsReject": False,
        "supportsStow": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True},
        "omitQuotationForMultipartRequest": True,
        "requestOptions": dict(request_options),
    }
    config = {
        "name": "dicom-edge",
        "routerBasename": prefix,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "edge",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "edge",
                "configuration": source,
            }
        ],
    }
    roots = ("qidoRoot", "wadoRoot", "wadoUriRoot")
    return (
        "/* Generated by DICOM Edge's listener (edge.listener.viewer), not part of @ohif/app. */\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        "(function (source) {\n"
        "  // Absolute roots on this page's origin: the viewer asks the server it came from.\n"
        f"  {json.dumps(list(roots))}.forEach(function (key) {{\n"
        "    source[key] = new URL(source[key], window.location.href).href.replace(/\\/$/, '');\n"
        "  });\n"
        "})(window.config.dataSources[0].configuration);\n"
    )


def rebase(name: str, data: bytes, prefix: str = PREFIX) -> bytes:
    """``data`` of the dist file ``name`` as served under ``prefix`` instead of ``/``."""
    base = prefix.rstrip("/").encode() + b"/"
    if name == "index.html":
        data = _INDEX_PUBLIC_URL.sub(b'window.PUBLIC_URL="' + base + b'"', data)
        return _INDEX_ROOT_REFS.sub(lambda m: m.group(1) + base, data)
    if name.endswith(".js"):
        data = data.replace(_PUBLIC_PATH, b'__webpack_require__.p = "' + base + b'";')
        return data.replace(_MICROSCOPY, b"'" + base + b"dicom-microscopy-viewer/")
    if name.endswith(".css"):
        return _CSS_ROOT_URL.sub(lambda m: b"url(" + m.group(1) + base, data)
    return data


@dataclass
class Viewer:
    """The installed viewer: its ``dist/`` directory, and the files sent rebased, kept once
    read (the app bundle is ~17 MB; the others that need it are small)."""

    dist: Path | None
    prefix: str = PREFIX
    request_options: Mapping[str, Any] = field(default_factory=dict)
    _rebased: dict[str, bytes | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def installed(self) -> bool:
        return self.dist is not None and (self.dist / "index.html").is_file()

    def locate(self, path: str) -> Path | None:
        """The file ``path`` names inside dist, or None (also for anything escaping it)."""
        assert self.dist is not None
        parts = PurePosixPath(path).parts
        if any(p in ("..", "") or p.startswith("/") for p in parts):
            return None
        candidate = self.dist.joinpath(*parts)
        return candidate if candidate.is_file() else None

    def rebased(self, file: Path) -> bytes | None:
        """The file's bytes as served under the prefix, or None when they need no change."""
        assert self.dist is not None
        key = file.relative_to(self.dist).as_posix()
        with self._lock:
            if key in self._rebased:
                return self._rebased[key]
            data = file.read_bytes()
            out = rebase(key, data, self.prefix)
            self._rebased[key] = out if out != data else None
            return self._rebased[key]


def _cache_headers(name: str) -> dict[str, str]:
    if _HASHED.search(PurePosixPath(name).name):
        return {"Cache-Control": "public, max-age=31536000, immutable"}
    return {"Cache-Control": "no-cache"}


def _media_type(file: Path) -> str:
    guessed = mimetypes.guess_type(file.name)[0]
    return _TYPES.get(file.suffix) or guessed or "application/octet-stream"


async def _send(viewer: Viewer, file: Path, *, name: str) -> Response:
    headers = _cache_headers(name)
    if file.suffix in (".js", ".css", ".html"):
        data = await asyncio.to_thread(viewer.rebased, file)
        if data is not None:
            return Response(data, media_type=_media_type(file), headers=headers)
    return FileResponse(file, media_type=_media_type(file), headers=headers)


def _wants_page(request: Request, path: str) -> bool:
    """A route of the app rather than an asset: no extension, or a browser asking for HTML."""
    if "." not in PurePosixPath(path).name:
        return True
    return "text/html" in request.headers.get("accept", "")


def viewer_routes(viewer: Viewer) -> list[BaseRoute]:
    prefix = viewer.prefix.rstrip("/")

    async def root(request: Request) -> Response:
        if not viewer.installed():
            return problem(503, "Viewer not installed", HOW_TO_FETCH)
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"{prefix}/{query}", status_code=308)

    async def config(_: Request) -> Response:
        if not viewer.installed():
            return problem(503, "Viewer not installed", HOW_TO_FETCH)
        body = app_config(prefix=prefix, request_options=viewer.request_options)
        return Response(body, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    async def asset(request: Request) -> Response:
        if not viewer.installed():
            return problem(503, "Viewer not installed", HOW_TO_FETCH)
        assert viewer.dist is not None
        path = request.path_params["path"]
        file = viewer.locate(path) if path else None
        if file is not None:
            return await _send(viewer, file, name=path)
        if _wants_page(request, path):
            return await _send(viewer, viewer.dist / "index.html", name="index.html")
        return problem(404, "Not found", f"the viewer has no file {path[:200]!r}")

    return [
        Route(prefix, root, methods=["GET", "HEAD"]),
        Route(f"{prefix}/app-config.js", config, methods=["GET", "HEAD"]),
        Route(prefix + "/{path:path}", asset, methods=["GET", "HEAD"]),
    ]
