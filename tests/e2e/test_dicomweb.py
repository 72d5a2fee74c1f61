"""STOW-RS, WADO-RS and WADO-URI end to end: instances stored with the ``dicomweb-client``
package through the listener, catalogued by ingestion, located by the retrieval service and read
back from S3. One suite for the module; every expectation comes from the files built here."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from xml.etree import ElementTree as ET

import httpx
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from edge.cli.devsuite import DevSuite
from edge.listener.multipart import parse_media_type
from tests.e2e.conftest import Client, http_client, web_session
from tests.unit.dicomfiles import add_pixels, bundled, make_dataset, write_part10

pytestmark = pytest.mark.e2e

STUDY = generate_uid()
SERIES = (generate_uid(), generate_uid())
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
NATIVE_DICOM = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"


def multiframe(folder: Path) -> Path:
    """Three 16-bit frames of 8 x 8 with a stored window, in series 0."""
    ds = add_pixels(
        make_dataset(StudyInstanceUID=STUDY, SeriesInstanceUID=SERIES[0], InstanceNumber=1),
        8,
        8,
    )
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.NumberOfFrames = 3
    ds.PixelData = b"".join(bytes([n, 0]) * 64 for n in (10, 20, 30))
    ds.WindowCenter, ds.WindowWidth = 20, 10
    return write_part10(folder / "multiframe.dcm", ds)


def plain(folder: Path, number: int) -> Path:
    ds = add_pixels(
        make_dataset(
            StudyInstanceUID=STUDY, SeriesInstanceUID=SERIES[0], InstanceNumber=number + 1
        ),
        64,
        48,
        fill=number * 40,
    )
    return write_part10(folder / f"plain{number}.dcm", ds)


def compressed(folder: Path, name: str, number: int) -> Path:
    """A bundled compressed file moved into series 1 of our study, its pixel data untouched."""
    ds = pydicom.dcmread(bundled(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES[1]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dicomweb")
    return {
        "plain0": plain(folder, 0),
        "plain1": plain(folder, 1),
        "multiframe": multiframe(folder),
        "jpeg": compressed(folder, "SC_rgb_jpeg_dcmtk.dcm", 1),
        "j2k": compressed(folder, "JPEG2000.dcm", 2),
        # Of another study: refused when posted to /studies/STUDY.
        "stranger": write_part10(folder / "stranger.dcm", add_pixels(make_dataset(), 8, 8)),
    }


@pytest.fixture(scope="module")
def service(suite: DevSuite) -> str:
    return f"http://127.0.0.1:{suite.http_port}/dicom-web"


@pytest.fixture(scope="module")
def web(suite: DevSuite, service: str) -> DICOMwebClient:
    return DICOMwebClient(url=service, session=web_session(suite))


@pytest.fixture(scope="module")
def http(suite: DevSuite) -> Iterator[httpx.Client]:
    with http_client(suite) as client:
        yield client


@pytest.fixture(scope="module")
def stowed(
    web: DICOMwebClient, client: Client, files: dict[str, Path]
) -> tuple[Dataset, dict[str, Dataset]]:
    datasets = {name: pydicom.dcmread(path) for name, path in files.items()}
    order = ["plain0", "stranger", "plain1", "multiframe", "jpeg", "j2k"]
    answer = web.store_instances([datasets[n] for n in order], study_instance_uid=STUDY)
    assert client.wait_for_instances(len(order) - 1) == len(order) - 1
    return answer, datasets


def sop(ds: Dataset) -> str:
    return str(ds.SOPInstanceUID)


def url_of(service: str, ds: Dataset) -> str:
    return f"{service}/studies/{STUDY}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def path_of(url: str) -> str:
    """The path of a URL the suite built. Its authority is the request's Host header, and
    dicomweb-client sends that without the port."""
    return urlsplit(url).path


def on_service(service: str, url: str) -> str:
    return urlunsplit(urlsplit(service)[:2] + urlsplit(url)[2:])


def parts(response: httpx.Response) -> Iterator[tuple[str, bytes]]:
    """The parts of a multipart/related response, as (Content-Type, bytes)."""
    media, params = parse_media_type(response.headers["content-type"])
    assert media == "multipart/related", response.text[:200]
    boundary = b"--" + params["boundary"].encode()
    for chunk in response.content.split(boundary)[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
        yield fields["Content-Type"], data.removesuffix(b"\r\n")


def test_stow_stores_the_study_and_refuses_the_stranger_in_the_same_request(
    stowed: tuple[Dataset, dict[str, Dataset]], client: Client, service: str
) -> None:
    answer, datasets = stowed
    referenced = {str(item.ReferencedSOPInstanceUID): item for item in answer.ReferencedSOPSequence}
    [failed] = answer.FailedSOPSequence
    assert set(referenced) == {sop(ds) for n, ds in datasets.items() if n != "stranger"}
    assert str(failed.ReferencedSOPInstanceUID) == sop(datasets["stranger"])
    assert failed.FailureReason == 0xA900
    assert path_of(answer.RetrieveURL) == path_of(f"{service}/studies/{STUDY}")
    plain0 = datasets["plain0"]
    assert path_of(referenced[sop(plain0)].RetrieveURL) == path_of(url_of(service, plain0))
    # Rule 1: what was acknowledged is in S3 and catalogued; the stranger is nowhere.
    rows = client.query("SELECT sop_instance_uid, sha256 FROM instance")
    assert {r[0] for r in rows} == set(referenced)


def test_stow_answers_202_for_a_partial_store_and_409_when_nothing_is_stored(
    stowed: tuple[Dataset, dict[str, Dataset]],
    files: dict[str, Path],
    service: str,
    http: httpx.Client,
) -> None:
    boundary = "e2e-boundary"
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'

    def post(*datas: bytes) -> httpx.Response:
        body = b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + d + b"\r\n"
            for d in datas
        )
        return http.post(
            f"{service}/studies/{STUDY}",
            content=body + f"--{boundary}--".encode(),
            headers={"content-type": content_type},
            timeout=60,
        )

    stranger = files["stranger"].read_bytes()
    assert post(files["plain0"].read_bytes(), stranger).status_code == 202  # a resend: stored
    assert post(stranger).status_code == 409
    wrong = http.post(f"{service}/studies", content=b"x", headers={"content-type": "text/plain"})
    assert wrong.status_code == 415


def test_study_series_and_instance_come_back_byte_for_byte(
    stowed: tuple[Dataset, dict[str, Dataset]],
    client: Client,
    service: str,
    web: DICOMwebClient,
    http: httpx.Client,
) -> None:
    stored = {r[0]: r[1] for r in client.query("SELECT sop_instance_uid, sha256 FROM instance")}
    as_stored = {"accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    study = list(parts(http.get(f"{service}/studies/{STUDY}", headers=as_stored, timeout=60)))
    got = {
        sop(pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True)): hashlib.sha256(d).hexdigest()
        for _, d in study
    }
    assert got == stored
    for name in ("jpeg", "j2k"):  # compressed as stored, with their own syntax
        ds = stowed[1][name]
        [(media, _)] = parts(http.get(url_of(service, ds), headers=as_stored, timeout=60))
        assert media.endswith(str(ds.file_meta.TransferSyntaxUID))
    series = web.retrieve_series(STUDY, SERIES[0], media_types=(("application/dicom", "*"),))
    assert {sop(ds) for ds in series} == {
        sop(stowed[1][n]) for n in ("plain0", "plain1", "multiframe")
    }
    # Explicit VR Little Endian (also what no transfer-syntax parameter means): the JPEG
    # instance is decompressed for it.
    jpeg = stowed[1]["jpeg"]
    decoded = web.retrieve_instance(
        STUDY,
        str(jpeg.SeriesInstanceUID),
        sop(jpeg),
        media_types=(("application/dicom", EXPLICIT_LE),),
    )
    assert decoded.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert decoded.pixel_array.shape == (jpeg.Rows, jpeg.Columns, 3)


def test_metadata_at_every_level_with_bulk_data_uris(
    stowed: tuple[Dataset, dict[str, Dataset]], web: DICOMwebClient, service: str
) -> None:
    datasets = stowed[1]
    study = web.retrieve_study_metadata(STUDY)
    assert len(study) == 5
    series = web.retrieve_series_metadata(STUDY, SERIES[1])
    assert {m["00080018"]["Value"][0] for m in series} == {
        sop(datasets["jpeg"]),
        sop(datasets["j2k"]),
    }
    mf = datasets["multiframe"]
    meta = web.retrieve_instance_metadata(STUDY, SERIES[0], sop(mf))
    assert meta["00280008"]["Value"] == [3]
    pixel_uri = meta["7FE00010"]["BulkDataURI"]
    assert path_of(pixel_uri) == path_of(url_of(service, mf) + "/bulkdata/7FE00010")
    frames = web.retrieve_bulkdata(on_service(service, pixel_uri))
    assert b"".join(frames) == mf.PixelData


def test_frames_uncompressed_and_compressed_pass_through(
    stowed: tuple[Dataset, dict[str, Dataset]], web: DICOMwebClient
) -> None:
    datasets = stowed[1]
    mf = datasets["multiframe"]
    octet = ("application/octet-stream",)
    frames = web.retrieve_instance_frames(STUDY, SERIES[0], sop(mf), [3, 1], media_types=octet)
    assert frames == [bytes([30, 0]) * 64, bytes([10, 0]) * 64]
    jpeg = datasets["jpeg"]
    [bitstream] = web.retrieve_instance_frames(
        STUDY, SERIES[1], sop(jpeg), [1], media_types=("image/jpeg",)
    )
    assert bitstream == next(pydicom.encaps.generate_frames(jpeg.PixelData, number_of_frames=1))
    assert Image.open(io.BytesIO(bitstream)).size == (jpeg.Columns, jpeg.Rows)
    j2k = datasets["j2k"]
    [j2k_frame] = web.retrieve_instance_frames(
        STUDY, SERIES[1], sop(j2k), [1], media_types=("image/jp2",)
    )
    assert j2k_frame == next(pydicom.encaps.generate_frames(j2k.PixelData, number_of_frames=1))
    [raw] = web.retrieve_instance_frames(STUDY, SERIES[1], sop(j2k), [1], media_types=octet)
    assert raw == j2k.pixel_array.tobytes()


def image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_rendered_and_thumbnails_decode_as_images_of_the_right_size(
    stowed: tuple[Dataset, dict[str, Dataset]],
    web: DICOMwebClient,
    service: str,
    http: httpx.Client,
) -> None:
    datasets = stowed[1]
    plain0, mf, jpeg = datasets["plain0"], datasets["multiframe"], datasets["jpeg"]
    grey = image(web.retrieve_instance_rendered(STUDY, SERIES[0], sop(plain0)))
    assert (grey.format, grey.size, grey.mode) == ("JPEG", (48, 64), "L")
    colour = image(
        web.retrieve_instance_rendered(STUDY, SERIES[1], sop(jpeg), media_types=("image/png",))
    )
    assert (colour.format, colour.size, colour.mode) == ("PNG", (jpeg.Columns, jpeg.Rows), "RGB")
    # Frame 3 of the multi-frame: value 30 over the stored window 20/10 is white.
    frame = image(
        web.retrieve_instance_frames_rendered(
            STUDY, SERIES[0], sop(mf), [3], media_types=("image/png",)
        )
    )
    assert frame.getextrema() == (255, 255)
    thumb = http.get(f"{url_of(service, plain0)}/thumbnail", params={"viewport": "32,32"})
    assert image(thumb.content).size == (24, 32)
    study_thumb = http.get(f"{service}/studies/{STUDY}/thumbnail", headers={"accept": "image/png"})
    assert study_thumb.status_code == 200 and image(study_thumb.content).format == "PNG"


def test_rendered_study_xml_metadata_and_lossless_transcoding(
    stowed: tuple[Dataset, dict[str, Dataset]],
    web: DICOMwebClient,
    service: str,
    http: httpx.Client,
) -> None:
    datasets = stowed[1]
    # Every frame of every instance: plain0, plain1, the three frames of multiframe, jpeg, j2k.
    study = http.get(
        f"{service}/studies/{STUDY}/rendered",
        headers={"accept": 'multipart/related; type="image/png"'},
        params={"viewport": "32,32"},
        timeout=60,
    )
    rendered = list(parts(study))
    assert [media for media, _ in rendered] == ["image/png"] * 7
    assert all(max(image(data).size) <= 32 for _, data in rendered)
    xml = http.get(
        f"{service}/studies/{STUDY}/series/{SERIES[1]}/metadata",
        headers={"accept": 'multipart/related; type="application/dicom+xml"'},
    )
    documents = [ET.fromstring(data) for _, data in parts(xml)]
    assert {
        d.findtext(f"{NATIVE_DICOM}DicomAttribute[@tag='00080018']/{NATIVE_DICOM}Value")
        for d in documents
    } == {sop(datasets["jpeg"]), sop(datasets["j2k"])}
    plain0 = datasets["plain0"]
    rle = web.retrieve_instance(
        STUDY, SERIES[0], sop(plain0), media_types=(("application/dicom", RLE_LOSSLESS),)
    )
    assert rle.file_meta.TransferSyntaxUID == RLE_LOSSLESS and sop(rle) == sop(plain0)
    assert (rle.pixel_array == plain0.pixel_array).all()
    lossy = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS_NEAR_LOSSLESS}'
    assert http.get(url_of(service, plain0), headers={"accept": lossy}).status_code == 406


def test_wado_uri_gives_the_object_and_a_jpeg(
    stowed: tuple[Dataset, dict[str, Dataset]],
    files: dict[str, Path],
    service: str,
    http: httpx.Client,
) -> None:
    plain1 = stowed[1]["plain1"]
    params: dict[str, Any] = {
        "requestType": "WADO",
        "studyUID": STUDY,
        "seriesUID": str(plain1.SeriesInstanceUID),
        "objectUID": sop(plain1),
    }
    dicom = http.get(f"{service}/wado", params={**params, "contentType": "application/dicom"})
    assert dicom.headers["content-type"] == "application/dicom"
    assert dicom.content == files["plain1"].read_bytes()
    jpeg = http.get(f"{service}/wado", params={**params, "columns": "24"})
    assert image(jpeg.content).size == (24, 32)


def test_unknown_resources_and_bad_requests_are_problems(
    stowed: tuple[Dataset, dict[str, Dataset]], service: str, http: httpx.Client
) -> None:
    missing = http.get(f"{service}/studies/{generate_uid()}")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert http.get(f"{service}/studies/1.2.abc/metadata").status_code == 400
    refused = http.get(f"{service}/studies/{STUDY}", headers={"accept": "application/zip"})
    assert refused.status_code == 406
