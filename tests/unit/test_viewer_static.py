"""The OHIF viewer's routes over ASGI, against a small dist/ shaped like @ohif/app's: the
generated app-config.js, the assets rebased under /viewer, the single-page fallback, and the
problem answered when the package is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from edge.listener.viewer import HOW_TO_FETCH, Viewer, app_config, rebase, viewer_routes

INDEX = (
    b'<!doctype html><html><head><link rel="manifest" href="/manifest.json">'
    b'<script src="/app-config.js"></script><title>OHIF Viewer</title>'
    b'<script>function browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"</script>'
    b'<script defer src="/app.bundle.0f6159c501addfe9.js"></script>'
    b'<link href="/app.bundle.css" rel="stylesheet"><a href="//elsewhere/x">x</a></head></html>'
)
BUNDLE = (
    b'(() => { __webpack_require__.p = "/"; })();'
    b"browserImportFunction('/dicom-microscopy-viewer/dicomMicroscopyViewer.min.js');"
)


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    folder = tmp_path / "dist"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_bytes(INDEX)
    (folder / "app-config.js").write_text("window.config = {dataSources: ['public demo']};")
    (folder / "app.bundle.0f6159c501addfe9.js").write_bytes(BUNDLE)
    (folder / "app.bundle.css").write_bytes(b"@font-face{src:url(/a34f9d1faa5f3315.woff2)}")
    (folder / "34b1e6b1deb5828e.wasm").write_bytes(b"\0asm")
    (folder / "assets" / "favicon.ico").write_bytes(b"icon")
    (tmp_path / "secret.txt").write_text("outside dist")
    return folder


async def get(viewer: Viewer, url: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=Starlette(routes=viewer_routes(viewer)))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        return await client.get(url, headers=headers)


def test_app_config_has_one_dicomweb_source_on_this_origin() -> None:
    text = app_config(request_options={"headers": {"X-Probe": "1"}})
    config = json.loads(text.split("window.config = ", 1)[1].split(";\n", 1)[0])
    assert config["routerBasename"] == "/viewer"
    assert config["defaultDataSourceName"] == "edge"
    (source,) = config["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    settings = source["configuration"]
    assert {settings[k] for k in ("qidoRoot", "wadoRoot", "wadoUriRoot")} == {"/dicom-web"}
    assert settings["imageRendering"] == "wadors" and settings["staticWado"] is False
    assert settings["requestOptions"] == {"headers": {"X-Probe": "1"}}
    # Resolved against the page in the browser: same origin, whatever the host name.
    assert "new URL(source[key], window.location.href)" in text


def test_rebase_moves_the_builds_root_references_under_the_prefix() -> None:
    index = rebase("index.html", INDEX)
    assert b'window.PUBLIC_URL="/viewer/"' in index
    assert b'src="/viewer/app.bundle.0f6159c501addfe9.js"' in index
    assert b'href="/viewer/app.bundle.css"' in index and b'href="/viewer/manifest.json"' in index
    assert b'href="//elsewhere/x"' in index  # protocol-relative: left alone
    bundle = rebase("app.bundle.0f6159c501addfe9.js", BUNDLE)
    assert b'__webpack_require__.p = "/viewer/";' in bundle
    assert b"'/viewer/dicom-microscopy-viewer/" in bundle
    css = rebase("app.bundle.css", b"src:url(/a.woff2);b:url('/b.png');c:url(//cdn/x)")
    assert css == b"src:url(/viewer/a.woff2);b:url('/viewer/b.png');c:url(//cdn/x)"
    assert rebase("x.wasm", b"/") == b"/"


async def test_assets_are_served_rebased_with_their_types(dist: Path) -> None:
    viewer = Viewer(dist)
    bundle = await get(viewer, "/viewer/app.bundle.0f6159c501addfe9.js")
    assert bundle.status_code == 200
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert b'"/viewer/"' in bundle.content
    assert "immutable" in bundle.headers["cache-control"]
    wasm = await get(viewer, "/viewer/34b1e6b1deb5828e.wasm")
    assert (wasm.status_code, wasm.headers["content-type"]) == (200, "application/wasm")
    css = await get(viewer, "/viewer/app.bundle.css")
    assert b"url(/viewer/a34f9d1faa5f3315.woff2)" in css.content
    icon = await get(viewer, "/viewer/assets/favicon.ico")
    assert icon.content == b"icon"
    # The package's own app-config.js (a public demo server) is never what is sent.
    config = await get(viewer, "/viewer/app-config.js")
    assert b"public demo" not in config.content and b'"/dicom-web"' in config.content
    assert config.headers["cache-control"] == "no-cache"


async def test_routes_of_the_app_fall_back_to_index_html(dist: Path) -> None:
    viewer = Viewer(dist)
    for url in ("/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/viewer/dicomweb"):
        page = await get(viewer, url)
        assert page.status_code == 200, url
        assert page.headers["content-type"].startswith("text/html")
        assert b'window.PUBLIC_URL="/viewer/"' in page.content
    redirect = await get(viewer, "/viewer?StudyInstanceUIDs=1.2.3")
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "/viewer/?StudyInstanceUIDs=1.2.3"


async def test_a_missing_asset_is_a_404_and_nothing_outside_dist_is_served(dist: Path) -> None:
    viewer = Viewer(dist)
    missing = await get(viewer, "/viewer/9999.bundle.0123456789abcdef.js")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    for url in (
        "/viewer/../secret.txt",
        "/viewer/%2e%2e/secret.txt",
        "/viewer/assets/../../secret.txt",
    ):
        answer = await get(viewer, url)
        assert b"outside dist" not in answer.content, url


@pytest.mark.parametrize("configured", [None, "missing"])
async def test_without_the_package_the_viewer_answers_503_saying_how_to_fetch_it(
    tmp_path: Path, configured: str | None
) -> None:
    viewer = Viewer(None if configured is None else tmp_path / configured)
    for url in ("/viewer", "/viewer/", "/viewer/app-config.js", "/viewer/viewer?x=1"):
        answer = await get(viewer, url)
        assert answer.status_code == 503, url
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["detail"] == HOW_TO_FETCH
        assert "make viewer" in HOW_TO_FETCH and "EDGE_VIEWER_DIR" in HOW_TO_FETCH
