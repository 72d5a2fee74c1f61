"""The OHIF viewer that the listener serves at /viewer, in a real browser: a CT study stored with
DCMTK's storescu shows in OHIF's study list, and the viewer opened on it renders a slice.

Debian's headless Chromium is driven by the npm package playwright-core from a small Node script
(viewer_browser.cjs), launched once for the module; the tests read its report and its
screenshots (kept in the pytest temp directory). Needs `make viewer browser` (the package and the
driver) and `apt-get install chromium` (.ci/run installs it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from edge.cli.devsuite import DevSuite
from tests.e2e.conftest import Client, start_suite
from tests.unit.dicomfiles import bundled

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
VIEWER_DIR = Path(os.environ.get("EDGE_VIEWER_DIR") or REPO / ".run/ohif/dist")
PLAYWRIGHT = REPO / ".run/node/node_modules/playwright-core"
CHROMIUM = Path("/usr/bin/chromium")
SCRIPT = Path(__file__).with_name("viewer_browser.cjs")
SLICES = 5
# Each browser step (study list, then the viewer) gets this long; the whole run twice that and
# the browser's start. A slow first load is OHIF's 17 MB bundle parsed on a busy machine.
STEP_TIMEOUT = 45.0
# Standard deviation of the luminance (0..255) of the viewport's middle half: a blank or uniform
# viewport is ~0; CT_small's slices give ~50.
MIN_SPREAD = 10.0


def _missing() -> str | None:
    if not (VIEWER_DIR / "index.html").is_file():
        return f"OHIF is not fetched into {VIEWER_DIR}: run `make viewer` (or set EDGE_VIEWER_DIR)"
    if not (PLAYWRIGHT / "package.json").is_file():
        return f"playwright-core is not in {PLAYWRIGHT.parent}: run `make browser`"
    if not CHROMIUM.is_file():
        return "Debian's chromium is not installed: apt-get install chromium (.ci/run does)"
    if shutil.which("node") is None:
        return "node is not installed: apt-get install nodejs npm (.ci/run does)"
    return None


def ct_series(folder: Path) -> tuple[str, str, list[Path]]:
    """pydicom's CT_small.dcm and SLICES - 1 slices made from it below it, one series: each
    slice its own SOP Instance UID, position and (shifted) pixels."""
    source = pydicom.dcmread(bundled("CT_small.dcm"))
    pixels = source.pixel_array
    x, y, z = (float(v) for v in source.ImagePositionPatient)
    spacing = float(source.SliceThickness)
    paths = []
    for number in range(SLICES):
        ds = pydicom.dcmread(bundled("CT_small.dcm"))  # a copy of its own, file meta included
        if number:
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = number + 1
            ds.ImagePositionPatient = [x, y, z - spacing * number]
            ds.PixelData = np.roll(pixels, 7 * number, axis=0).tobytes()
        path = folder / f"ct{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return str(source.StudyInstanceUID), str(source.PatientName), paths


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSuite]:
    if (reason := _missing()) is not None:
        pytest.fail(reason)
    started = start_suite(
        tmp_path_factory.mktemp("suite"), extra_env={"EDGE_VIEWER_DIR": str(VIEWER_DIR)}
    )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def study(client: Client, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    study_uid, patient, paths = ct_series(tmp_path_factory.mktemp("ct"))
    sent = client.storescu(paths)
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert client.wait_for_instances(SLICES) == SLICES
    return study_uid, patient


@pytest.fixture(scope="module")
def browser(
    suite: DevSuite, study: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The report of one browser run over the study list and the viewer."""
    study_uid, patient = study
    out = tmp_path_factory.mktemp("screenshots")
    options = {
        "playwright": str(PLAYWRIGHT),
        "chromium": str(CHROMIUM),
        "base": f"http://127.0.0.1:{suite.http_port}",
        "study": study_uid,
        "patient": patient.split("^")[0],  # OHIF shows "Family, Given"
        "outDir": str(out),
        "timeoutMs": int(STEP_TIMEOUT * 1000),
        "minSpread": MIN_SPREAD,
        # Issue 6: with authentication on, a bearer token for OHIF's DICOMweb requests.
        "token": suite.token("radiologist"),
    }
    try:
        run = subprocess.run(
            ["node", str(SCRIPT), json.dumps(options)],
            capture_output=True,
            text=True,
            timeout=3 * STEP_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the browser run did not end in {3 * STEP_TIMEOUT:.0f}s: {exc.stderr!r}")
    lines = run.stdout.strip().splitlines()
    if not lines:
        pytest.fail(f"the browser script printed nothing (exit {run.returncode}): {run.stderr}")
    report: dict[str, Any] = json.loads(lines[-1])
    if "fatal" in report:
        pytest.fail(f"the browser script failed: {report['fatal']}\n{run.stderr[-2000:]}")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    report["dir"] = str(out)
    return report


def _context(report: dict[str, Any]) -> str:
    """What the browser saw, for a failure message."""
    return (
        f"\nscreenshots and report.json in {report['dir']}"
        f"\nrequests: {report['dicomweb'][-15:]}"
        f"\nconsole errors: {report['console'][-10:]}"
        f"\nfailed requests: {report['failedRequests'][-10:]}"
    )


def spread(path: Path) -> float:
    """Standard deviation of the luminance of the image's middle half (0..255)."""
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    h, w = pixels.shape
    return float(pixels[h // 4 : h - h // 4, w // 4 : w - w // 4].std())


def test_study_list_shows_the_stored_study(browser: dict[str, Any], study: tuple[str, str]) -> None:
    step = browser["steps"]["studyList"]
    family, given = study[1].split("^")
    assert step["ok"], f"the study list did not show {family!r}: {step.get('error')}" + _context(
        browser
    )
    row = step["rowText"]
    assert family in row and given in row, row
    assert "CT" in row.split(), row
    assert str(SLICES) in row.split(), f"{SLICES} instances expected in the row: {row!r}"
    searches = [r for r in browser["dicomweb"] if "/dicom-web/studies?" in r]
    assert searches and all(r.startswith("200 ") for r in searches), _context(browser)


def test_viewer_renders_a_ct_slice(browser: dict[str, Any]) -> None:
    step = browser["steps"]["viewer"]
    shot = step.get("viewportScreenshot")
    assert step["ok"] and shot, (
        f"the viewer showed no image within {STEP_TIMEOUT:.0f}s ({step.get('error')}; canvas"
        f" spread {step.get('spreadInPage')})" + _context(browser)
    )
    measured = spread(Path(shot))
    assert measured > MIN_SPREAD, (
        f"the viewport screenshot is blank (luminance spread {measured:.1f} <="
        f" {MIN_SPREAD}): {shot}" + _context(browser)
    )
    # Frames came from our WADO-RS, and nothing the viewer asked of /dicom-web failed.
    frames = [r for r in browser["dicomweb"] if "/frames/" in r]
    assert frames and all(r.startswith("200 ") for r in frames), _context(browser)
    failed = [r for r in browser["dicomweb"] if "/dicom-web/" in r and not r.startswith("2")]
    assert not failed, f"DICOMweb requests failed: {failed}" + _context(browser)


def test_ohif_finds_the_series_metadata_sound(browser: dict[str, Any]) -> None:
    """OHIF checks a series' WADO-RS metadata (positions, orientation, spacing, dimensions)
    before it builds a volume, and flags what it finds wanting on the thumbnail."""
    step = browser["steps"]["viewer"]
    assert step["ok"], _context(browser)
    assert step["seriesWarnings"] == [], step["seriesWarnings"]
