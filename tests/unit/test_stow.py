"""STOW-RS over ASGI with the in-memory store: every part takes the C-STORE decision, and the
response is PS3.18's (200/202/409, Referenced and Failed SOP Sequences)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomfiles import add_pixels, make_dataset, write_part10
from starlette.applications import Starlette

from edge.common.events import InstanceReceived
from edge.common.store_memory import InMemoryObjectStore
from edge.listener.multipart import encode
from edge.listener.storage_scp import StoreRequest, StoreResult, store_instance
from edge.listener.stow import stow_routes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BOUNDARY = "stow-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


class Harness:
    def __init__(self, fail_publish: bool = False) -> None:
        self.store = InMemoryObjectStore()
        self.events: list[InstanceReceived] = []
        self.fail_publish = fail_publish
        self.requests: list[StoreRequest] = []

    def publish(self, event: InstanceReceived, timeout: float) -> None:
        if self.fail_publish:
            raise TimeoutError
        self.events.append(event)

    def store_one(self, request: StoreRequest) -> StoreResult:
        self.requests.append(request)
        return store_instance(
            request, store=self.store, publish=self.publish, max_size=1 << 20, deadline=10
        )

    async def post(
        self, path: str, body: bytes, content_type: str = CONTENT_TYPE, **headers: str
    ) -> httpx.Response:
        app = Starlette(
            routes=stow_routes(self.store_one, called_ae="EDGE", max_size=1 << 20, spool_dir=None)
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge:8080") as client:
            return await client.post(
                path, content=body, headers={"content-type": content_type, **headers}
            )


def instance(tmp_path: Path, study: str | None = None) -> tuple[bytes, pydicom.Dataset]:
    ds = add_pixels(make_dataset(**({"StudyInstanceUID": study} if study else {})), 16, 16)
    path = write_part10(tmp_path / f"{ds.SOPInstanceUID}.dcm", ds)
    return path.read_bytes(), ds


def body(*datas: bytes) -> bytes:
    return encode([("application/dicom", d) for d in datas], BOUNDARY)


def items(response: httpx.Response, tag: str) -> list[dict[str, Any]]:
    return response.json().get(tag, {}).get("Value", [])


async def test_every_instance_stored_is_200_with_a_retrieve_url_each(tmp_path: Path) -> None:
    study = pydicom.uid.generate_uid()
    (a, ds_a), (b, ds_b) = instance(tmp_path, study), instance(tmp_path, study)
    harness = Harness()
    response = await harness.post(f"/dicom-web/studies/{study}", body(a, b))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    refs = items(response, "00081199")
    assert [r["00081155"]["Value"][0] for r in refs] == [ds_a.SOPInstanceUID, ds_b.SOPInstanceUID]
    assert refs[0]["00081150"]["Value"] == [ds_a.SOPClassUID]
    assert refs[0]["00081190"]["Value"] == [
        f"http://edge:8080/dicom-web/studies/{study}/series/{ds_a.SeriesInstanceUID}"
        f"/instances/{ds_a.SOPInstanceUID}"
    ]
    assert response.json()["00081190"]["Value"] == [f"http://edge:8080/dicom-web/studies/{study}"]
    assert "00081198" not in response.json()
    stored = {hashlib.sha256(o.data).hexdigest() for o in harness.store.objects.values()}
    assert stored == {hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()}
    assert [e.calling_ae for e in harness.events] == ["STOW-RS", "STOW-RS"]


async def test_an_instance_of_another_study_fails_with_A900_beside_the_stored_one(
    tmp_path: Path,
) -> None:
    study = pydicom.uid.generate_uid()
    (good, ds_good), (other, ds_other) = instance(tmp_path, study), instance(tmp_path)
    harness = Harness()
    response = await harness.post(f"/dicom-web/studies/{study}", body(good, other))

    assert response.status_code == 202
    [ref] = items(response, "00081199")
    [failed] = items(response, "00081198")
    assert ref["00081155"]["Value"] == [ds_good.SOPInstanceUID]
    assert failed["00081155"]["Value"] == [ds_other.SOPInstanceUID]
    assert failed["00081150"]["Value"] == [ds_other.SOPClassUID]
    assert failed["00081197"] == {"vr": "US", "Value": [0xA900]}
    assert len(harness.store.objects) == 1 and len(harness.events) == 1


async def test_nothing_stored_is_409_with_the_reasons(tmp_path: Path) -> None:
    data, ds = instance(tmp_path)
    harness = Harness()
    response = await harness.post("/dicom-web/studies", body(b"not dicom at all", data[:-100]))

    assert response.status_code == 409
    reasons = [f["00081197"]["Value"][0] for f in items(response, "00081198")]
    assert reasons == [0xC000, 0xC000]
    # The cut instance still names itself; the garbage cannot.
    assert items(response, "00081198")[1]["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert items(response, "00081198")[0]["00081155"] == {"vr": "UI"}
    assert harness.store.objects == {}


async def test_an_unconfirmed_announcement_is_A700_and_never_success(tmp_path: Path) -> None:
    data, _ = instance(tmp_path)
    response = await Harness(fail_publish=True).post("/dicom-web/studies", body(data))
    assert response.status_code == 409
    assert items(response, "00081198")[0]["00081197"]["Value"] == [0xA700]


async def test_a_part_of_another_media_type_fails_alone(tmp_path: Path) -> None:
    data, _ = instance(tmp_path)
    payload = encode([("application/dicom+json", b"{}"), ("application/dicom", data)], BOUNDARY)
    response = await Harness().post("/dicom-web/studies", payload)
    assert response.status_code == 202
    assert items(response, "00081198")[0]["00081197"]["Value"] == [0xC000]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        f'multipart/related; type="application/dicom+json"; boundary="{BOUNDARY}"',
        f"multipart/form-data; boundary={BOUNDARY}",
    ],
)
async def test_other_media_types_are_415(tmp_path: Path, content_type: str) -> None:
    data, _ = instance(tmp_path)
    response = await Harness().post("/dicom-web/studies", body(data), content_type)
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "payload",
    [b"", b"garbage without a boundary", f"--{BOUNDARY}\r\n\r\ncut short".encode()],
    ids=["empty", "garbage", "no-close"],
)
async def test_malformed_bodies_are_400(payload: bytes) -> None:
    harness = Harness()
    response = await harness.post("/dicom-web/studies", payload)
    assert response.status_code == 400
    assert harness.store.objects == {}


async def test_a_bad_study_uid_in_the_path_is_400_and_reads_nothing(tmp_path: Path) -> None:
    data, _ = instance(tmp_path)
    harness = Harness()
    response = await harness.post("/dicom-web/studies/1.2.abc", body(data))
    assert response.status_code == 400
    assert harness.requests == []


async def test_a_closed_body_without_parts_is_400() -> None:
    response = await Harness().post("/dicom-web/studies", f"--{BOUNDARY}--".encode())
    assert response.status_code == 400
