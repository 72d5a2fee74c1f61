"""WADO-RS and WADO-URI over ASGI, with a fake ``retrieval.locate`` and the in-memory store;
negotiation and rendering decisions as plain functions."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomfiles import add_pixels, bundled, make_dataset, write_part10
from PIL import Image
from pydicom.uid import generate_uid
from starlette.applications import Starlette

from edge.common.catalog.dicomjson import header_json
from edge.common.dicom import instance_key
from edge.common.rpc import RpcTimeout
from edge.common.store_memory import InMemoryObjectStore
from edge.listener import pixels
from edge.listener.multipart import parse_media_type
from edge.listener.negotiate import (
    ANY,
    EXPLICIT_LE,
    IMPLICIT_LE,
    NotAcceptable,
    choose_syntax,
    dicom_syntaxes,
    frame_choice,
    rendered_type,
)
from edge.listener.wado import WadoDeps, wado_routes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
J2K = "1.2.840.10008.1.2.4.90"
ACCEPT_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


# -- negotiation --------------------------------------------------------------------------------


def test_dicom_accept_defaults_to_explicit_little_endian_and_keeps_the_order() -> None:
    assert dicom_syntaxes(None) == [EXPLICIT_LE]
    assert dicom_syntaxes("*/*") == [EXPLICIT_LE]
    assert dicom_syntaxes('multipart/related; type="application/dicom"') == [EXPLICIT_LE]
    header = (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50;'
        ' q=0.5, multipart/related; type="application/dicom"; transfer-syntax=*'
    )
    assert dicom_syntaxes(header) == [ANY, JPEG_BASELINE]
    with pytest.raises(NotAcceptable):
        dicom_syntaxes("application/dicom+json")
    with pytest.raises(NotAcceptable):
        dicom_syntaxes('multipart/related; type="application/octet-stream"')


def test_a_syntax_is_chosen_as_stored_or_decoded_to_uncompressed_or_not_at_all() -> None:
    assert choose_syntax([ANY], JPEG_BASELINE) == JPEG_BASELINE
    assert choose_syntax([EXPLICIT_LE], JPEG_BASELINE) == EXPLICIT_LE
    assert choose_syntax([IMPLICIT_LE], EXPLICIT_LE) == IMPLICIT_LE
    assert choose_syntax([JPEG_BASELINE], EXPLICIT_LE) is None  # no re-compression
    assert choose_syntax([JPEG_BASELINE, EXPLICIT_LE], JPEG_BASELINE) == JPEG_BASELINE
    assert choose_syntax([EXPLICIT_LE], "1.2.840.10008.1.2.4.100") is None  # MPEG2: no decoder


def test_frames_go_as_stored_or_decoded_as_the_accept_header_says() -> None:
    octet = 'multipart/related; type="application/octet-stream"'
    assert frame_choice(None, JPEG_BASELINE).media_type == "image/jpeg"
    assert frame_choice(octet, JPEG_BASELINE).decode is True
    assert frame_choice(octet, EXPLICIT_LE).decode is False
    assert frame_choice('multipart/related; type="image/jpeg"', JPEG_BASELINE).decode is False
    assert frame_choice(f"{octet}; transfer-syntax=*", J2K).transfer_syntax == J2K
    with pytest.raises(NotAcceptable):
        frame_choice('multipart/related; type="image/jp2"', JPEG_BASELINE)


def test_rendered_media_type_is_jpeg_unless_png_is_preferred() -> None:
    assert rendered_type(None) == "image/jpeg"
    assert rendered_type("image/png, image/jpeg;q=0.5") == "image/png"
    assert rendered_type("image/*") == "image/jpeg"
    with pytest.raises(NotAcceptable):
        rendered_type("image/gif")


# -- rendering ----------------------------------------------------------------------------------


def test_linear_window_maps_the_window_to_0_255_and_clips_outside() -> None:
    values = np.array([-1000, 39.5 - 200, 40, 240, 3000], dtype=np.float64)
    out = pixels.window(values, 40, 400)
    assert out[0] == 0 and out[-1] == 255
    assert out[1] == 0 and abs(int(out[2]) - 128) <= 1 and out[3] == 255


def test_render_uses_the_stored_window_and_inverts_monochrome1() -> None:
    ds = add_pixels(make_dataset(), 4, 4)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ramp = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100  # 0..1500
    ds.PixelData = ramp.tobytes()
    ds.WindowCenter, ds.WindowWidth = 750, 2
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
    png = np.array(Image.open(io.BytesIO(pixels.render(ds, media_type="image/png"))))
    assert set(np.unique(png)) == {0, 255}  # a 2-wide window is a threshold at 750
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = np.array(Image.open(io.BytesIO(pixels.render(ds, media_type="image/png"))))
    assert (inverted == 255 - png).all()
    del ds.WindowCenter, ds.WindowWidth  # min/max: the whole ramp spread over 0..255
    spread = np.array(Image.open(io.BytesIO(pixels.render(ds, media_type="image/png"))))
    assert spread.min() == 0 and spread.max() == 255 and len(np.unique(spread)) == 16


def test_parameters_are_checked() -> None:
    assert pixels.frame_numbers("1, 3,2") == [1, 3, 2]
    for bad in ("0", "a", "1,,2", "-1"):
        with pytest.raises(ValueError):
            pixels.frame_numbers(bad)
    assert pixels.viewport_of("64,32", None) == (64, 32)
    assert pixels.window_of("40,400,LINEAR") == (40.0, 400.0)
    for bad_window in ("40", "40,0", "1,2,SIGMOID"):
        with pytest.raises(ValueError):
            pixels.window_of(bad_window)


# -- routes -------------------------------------------------------------------------------------


class Catalog:
    """The instances put in the in-memory store, answered the way retrieval.locate does."""

    def __init__(self) -> None:
        self.store = InMemoryObjectStore()
        self.instances: list[dict[str, Any]] = []
        self.asked: list[dict[str, Any]] = []
        self.fail: Exception | None = None

    def add(self, path: Path) -> dict[str, Any]:
        data = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        self.store.put_bytes(key, data)
        instance = {
            "study": ds.StudyInstanceUID,
            "series": ds.SeriesInstanceUID,
            "sop": ds.SOPInstanceUID,
            "sop_class": ds.SOPClassUID,
            "transfer_syntax": ds.file_meta.TransferSyntaxUID,
            "object_key": key,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "number": ds.get("InstanceNumber"),
            "header": header_json(ds),
        }
        self.instances.append(instance)
        return instance

    async def locate(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(payload)
        if self.fail:
            raise self.fail
        found = [
            i
            for i in self.instances
            if i["study"] == payload["study"]
            and payload.get("series") in (None, i["series"])
            and payload.get("sop") in (None, i["sop"])
        ]
        start = int(payload.get("after") or 0)
        page = found[start : start + payload["limit"]]
        if not payload["with_header"]:
            page = [{k: v for k, v in i.items() if k != "header"} for i in page]
        more = start + payload["limit"] < len(found)
        return {"instances": page, "next": start + payload["limit"] if more else None}

    async def get(self, url: str, accept: str | None = None, **options: Any) -> httpx.Response:
        options = {"page": 2, "prefetch": 2} | options
        deps = WadoDeps(locate=self.locate, store=lambda: self.store, **options)
        transport = httpx.ASGITransport(app=Starlette(routes=wado_routes(deps)))
        headers = {"accept": accept} if accept else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            return await client.get(url, headers=headers)


def split_multipart(response: httpx.Response) -> list[tuple[str, bytes]]:
    media, params = parse_media_type(response.headers["content-type"])
    assert media == "multipart/related"
    boundary = params["boundary"].encode()
    body = response.content
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    chunks = body.split(b"--" + boundary)[1:-1]
    parts = []
    for chunk in chunks:
        head, _, data = chunk.partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        fields = dict(
            line.split(": ", 1) for line in head.decode().strip().split("\r\n") if ": " in line
        )
        parts.append((fields["Content-Type"], data))
    return parts


@pytest.fixture
def study(tmp_path: Path) -> tuple[Catalog, str, list[bytes]]:
    catalog, study_uid, series = Catalog(), generate_uid(), [generate_uid(), generate_uid()]
    datas = []
    for n in range(5):
        ds = add_pixels(
            make_dataset(
                StudyInstanceUID=study_uid, SeriesInstanceUID=series[n % 2], InstanceNumber=n
            ),
            8,
            8,
            fill=n,
        )
        path = write_part10(tmp_path / f"{n}.dcm", ds)
        catalog.add(path)
        datas.append(path.read_bytes())
    return catalog, study_uid, datas


async def test_a_study_streams_every_instance_byte_for_byte_across_pages(
    study: tuple[Catalog, str, list[bytes]],
) -> None:
    catalog, study_uid, datas = study
    response = await catalog.get(f"/dicom-web/studies/{study_uid}", ACCEPT_ANY)
    assert response.status_code == 200
    assert 'type="application/dicom"' in response.headers["content-type"]
    parts = split_multipart(response)
    assert [hashlib.sha256(d).hexdigest() for _, d in parts] == [
        i["sha256"] for i in catalog.instances
    ]
    assert all(t == f"application/dicom; transfer-syntax={EXPLICIT_LE}" for t, _ in parts)
    assert [p.get("after") for p in catalog.asked] == [None, 2, 4]


async def test_series_and_instance_retrieval_name_only_theirs(
    study: tuple[Catalog, str, list[bytes]],
) -> None:
    catalog, study_uid, datas = study
    first = catalog.instances[0]
    series = await catalog.get(f"/dicom-web/studies/{study_uid}/series/{first['series']}")
    assert len(split_multipart(series)) == 3
    one = await catalog.get(
        f"/dicom-web/studies/{study_uid}/series/{first['series']}/instances/{first['sop']}"
    )
    assert [d for _, d in split_multipart(one)] == [datas[0]]


async def test_implicit_vr_is_asked_for_and_transcoded(
    study: tuple[Catalog, str, list[bytes]],
) -> None:
    catalog, study_uid, _ = study
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={IMPLICIT_LE}'
    [(media, data)] = split_multipart(
        await catalog.get(
            f"/dicom-web/studies/{study_uid}/series/{catalog.instances[0]['series']}"
            f"/instances/{catalog.instances[0]['sop']}",
            accept,
        )
    )
    assert media.endswith(IMPLICIT_LE)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == IMPLICIT_LE and ds.PixelData == bytes([0]) * 64


async def test_a_jpeg_instance_is_decompressed_for_the_default_syntax(tmp_path: Path) -> None:
    catalog = Catalog()
    jpeg = catalog.add(bundled("SC_rgb_jpeg_dcmtk.dcm"))
    base = f"/dicom-web/studies/{jpeg['study']}/series/{jpeg['series']}/instances/{jpeg['sop']}"
    [(media, data)] = split_multipart(await catalog.get(base))
    ds = pydicom.dcmread(io.BytesIO(data))
    assert media.endswith(EXPLICIT_LE) and ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns, 3)
    [(media, data)] = split_multipart(await catalog.get(base, ACCEPT_ANY))
    assert media.endswith(JPEG_BASELINE) and data == bundled("SC_rgb_jpeg_dcmtk.dcm").read_bytes()
    # Frames: pass-through as image/jpeg, or decoded.
    frames = split_multipart(await catalog.get(base + "/frames/1"))
    assert frames[0][0].startswith("image/jpeg") and frames[0][1][:2] == b"\xff\xd8"
    decoded = split_multipart(
        await catalog.get(base + "/frames/1", 'multipart/related; type="application/octet-stream"')
    )
    assert len(decoded[0][1]) == ds.Rows * ds.Columns * 3


async def test_frames_of_an_uncompressed_instance_are_its_pixel_bytes(tmp_path: Path) -> None:
    catalog = Catalog()
    ds = add_pixels(make_dataset(), 4, 4)
    ds.NumberOfFrames = 3
    ds.PixelData = bytes(range(48))
    info = catalog.add(write_part10(tmp_path / "mf.dcm", ds))
    base = f"/dicom-web/studies/{info['study']}/series/{info['series']}/instances/{info['sop']}"
    parts = split_multipart(await catalog.get(base + "/frames/3,1"))
    assert [d for _, d in parts] == [bytes(range(32, 48)), bytes(range(16))]
    assert parts[0][0].startswith("application/octet-stream")
    assert (await catalog.get(base + "/frames/4")).status_code == 404
    assert (await catalog.get(base + "/frames/x")).status_code == 400


async def test_metadata_has_absolute_bulk_data_uris_and_the_pixel_data_uri(
    study: tuple[Catalog, str, list[bytes]],
) -> None:
    catalog, study_uid, _ = study
    response = await catalog.get(f"/dicom-web/studies/{study_uid}/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    items = response.json()
    assert len(items) == 5
    first = catalog.instances[0]
    url = (
        f"http://edge/dicom-web/studies/{study_uid}/series/{first['series']}"
        f"/instances/{first['sop']}"
    )
    assert items[0]["7FE00010"] == {"vr": "OB", "BulkDataURI": f"{url}/bulkdata/7FE00010"}
    assert items[0]["00083002"]["Value"] == [EXPLICIT_LE]
    assert items[0]["00080018"]["Value"] == [first["sop"]]
    pixel = split_multipart(
        await catalog.get(url.removeprefix("http://edge") + "/bulkdata/7FE00010")
    )
    assert pixel[0][1] == bytes([0]) * 64


async def test_rendered_and_thumbnail_are_images_of_the_asked_size(tmp_path: Path) -> None:
    catalog = Catalog()
    ds = add_pixels(make_dataset(), 64, 32)
    info = catalog.add(write_part10(tmp_path / "r.dcm", ds))
    base = f"/dicom-web/studies/{info['study']}/series/{info['series']}/instances/{info['sop']}"
    jpeg = await catalog.get(base + "/rendered")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (32, 64)
    png = await catalog.get(base + "/thumbnail?viewport=16,16", "image/png")
    assert Image.open(io.BytesIO(png.content)).size == (8, 16)
    study_thumb = await catalog.get(f"/dicom-web/studies/{info['study']}/thumbnail")
    assert Image.open(io.BytesIO(study_thumb.content)).size == (32, 64)
    assert (await catalog.get(base + "/rendered?window=1,0")).status_code == 400
    assert (await catalog.get(base + "/rendered", "image/gif")).status_code == 406


async def test_wado_uri_gives_the_dicom_object_or_a_jpeg(
    study: tuple[Catalog, str, list[bytes]],
) -> None:
    catalog, study_uid, datas = study
    i = catalog.instances[0]
    query = f"requestType=WADO&studyUID={study_uid}&seriesUID={i['series']}&objectUID={i['sop']}"
    dicom = await catalog.get(f"/dicom-web/wado?{query}&contentType=application/dicom")
    assert dicom.headers["content-type"] == "application/dicom" and dicom.content == datas[0]
    jpeg = await catalog.get(f"/dicom-web/wado?{query}&rows=4")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (4, 4)
    assert (await catalog.get(f"/dicom-web/wado?{query[18:]}")).status_code == 400
    bad = await catalog.get(f"/dicom-web/wado?{query}&contentType=text/html")
    assert bad.status_code == 406


async def test_failures_are_problem_responses(study: tuple[Catalog, str, list[bytes]]) -> None:
    catalog, study_uid, _ = study
    assert (await catalog.get("/dicom-web/studies/1.2.x")).status_code == 400
    assert catalog.asked == []  # a bad UID never reaches the retrieval service
    assert (await catalog.get(f"/dicom-web/studies/{generate_uid()}")).status_code == 404
    refused = await catalog.get(f"/dicom-web/studies/{study_uid}", "application/json")
    assert refused.status_code == 406
    catalog.fail = RpcTimeout("down")
    down = await catalog.get(f"/dicom-web/studies/{study_uid}")
    assert down.status_code == 503
    assert down.headers["content-type"] == "application/problem+json"
    catalog.fail = None
    catalog.store.objects.clear()  # S3 lost the bytes the catalog names
    assert (await catalog.get(f"/dicom-web/studies/{study_uid}")).status_code == 404


async def test_a_large_object_is_streamed_in_chunks_not_fetched_whole(
    study: tuple[Catalog, str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge.listener.wado as wado

    catalog, study_uid, datas = study
    monkeypatch.setattr(wado, "WHOLE_OBJECT_LIMIT", 100)  # every object counts as large
    whole_reads: list[str] = []
    get_range = catalog.store.get_range
    monkeypatch.setattr(
        catalog.store,
        "get_range",
        lambda key, *a: whole_reads.append(key) or get_range(key, *a),  # type: ignore[func-returns-value]
    )
    response = await catalog.get(f"/dicom-web/studies/{study_uid}", ACCEPT_ANY)
    assert [d for _, d in split_multipart(response)] == datas
    assert whole_reads == []


async def test_the_read_ahead_window_is_bounded_by_bytes_as_well_as_by_objects(
    study: tuple[Catalog, str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge.listener.wado as wado

    catalog, study_uid, datas = study
    events: list[str] = []
    fetch, part_head = wado.fetch, wado.part_head

    async def counted_fetch(*args: Any) -> bytes:
        events.append("fetch")
        return await fetch(*args)

    def counted_part_head(*args: Any) -> bytes:
        events.append("part")
        return part_head(*args)

    monkeypatch.setattr(wado, "fetch", counted_fetch)
    monkeypatch.setattr(wado, "part_head", counted_part_head)

    def most_ahead() -> int:
        """The most objects fetched beyond the parts sent, when a part starts."""
        fetched = sent = ahead = 0
        for event in events:
            fetched += event == "fetch"
            sent += event == "part"
            ahead = max(ahead, fetched - sent) if event == "part" else ahead
        return ahead

    largest = max(len(d) for d in datas)
    url = f"/dicom-web/studies/{study_uid}"
    bounded = await catalog.get(url, ACCEPT_ANY, prefetch=16, prefetch_bytes=largest)
    assert [d for _, d in split_multipart(bounded)] == datas
    assert most_ahead() == 1  # two objects exceed the bytes: one is sent, one is read ahead
    events.clear()
    by_count = await catalog.get(url, ACCEPT_ANY, prefetch=16)
    assert [d for _, d in split_multipart(by_count)] == datas
    assert most_ahead() == len(datas) - 1  # 32 MiB hold the whole small study
