"""WADO-RS in other encodings: instances transcoded to a lossless compressed syntax (encoders),
metadata as PS3.19 XML, and studies and series rendered as multipart; over ASGI with the fake
catalog of ``test_wado``."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pydicom
import pytest
from dicomfiles import add_pixels, bundled, make_dataset, write_part10
from PIL import Image
from pydicom.uid import generate_uid
from test_wado import Catalog, split_multipart

from edge.listener import pixels
from edge.listener.dicomxml import NAMESPACE, native_model
from edge.listener.negotiate import (
    DICOM_JSON,
    DICOM_XML,
    EXPLICIT_LE,
    J2K_LOSSLESS,
    RLE_LOSSLESS,
    NotAcceptable,
    can_encode,
    choose_syntax,
    metadata_type,
    rendered_parts_type,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
NS = {"d": NAMESPACE}


def _ct(tmp_path: Path, name: str = "ct.dcm", **attrs: object) -> Path:
    # 64 x 48: openjpeg's default six resolutions need sides of 32 or more.
    ds = add_pixels(make_dataset(**attrs), 64, 48)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = (np.arange(64 * 48, dtype=np.uint16)).tobytes()
    return write_part10(tmp_path / name, ds)


# -- encoders -----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [RLE_LOSSLESS, J2K_LOSSLESS])
def test_transcoding_to_a_lossless_syntax_keeps_pixels_and_uid(tmp_path: Path, target: str) -> None:
    assert can_encode(target)
    source = _ct(tmp_path)
    original = pydicom.dcmread(source)
    encoded = pydicom.dcmread(io.BytesIO(pixels.transcode(source.read_bytes(), target)))
    assert encoded.file_meta.TransferSyntaxUID == target
    assert encoded.SOPInstanceUID == original.SOPInstanceUID
    assert (encoded.pixel_array == original.pixel_array).all()


def test_a_compressed_instance_is_decoded_then_encoded_as_rle() -> None:
    source = bundled("SC_rgb_jpeg_dcmtk.dcm")
    original = pydicom.dcmread(source)
    encoded = pydicom.dcmread(io.BytesIO(pixels.transcode(source.read_bytes(), RLE_LOSSLESS)))
    assert encoded.file_meta.TransferSyntaxUID == RLE_LOSSLESS
    assert encoded.SOPInstanceUID == original.SOPInstanceUID
    assert encoded.PhotometricInterpretation == "RGB"
    assert encoded.pixel_array.shape == (original.Rows, original.Columns, 3)


def test_an_instance_without_pixel_data_cannot_be_compressed(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "sr.dcm", make_dataset())
    with pytest.raises(pixels.PixelError, match="no pixel data"):
        pixels.transcode(path.read_bytes(), RLE_LOSSLESS)


def test_only_lossless_syntaxes_with_an_installed_encoder_are_offered() -> None:
    assert choose_syntax([RLE_LOSSLESS], EXPLICIT_LE) == RLE_LOSSLESS
    assert choose_syntax([RLE_LOSSLESS], JPEG_BASELINE) == RLE_LOSSLESS  # decoded, re-encoded
    assert not can_encode(JPEG_BASELINE)  # lossy: never
    assert not can_encode("1.2.840.10008.1.2.4.91")
    assert choose_syntax([JPEG_BASELINE], EXPLICIT_LE) is None


# -- negotiation --------------------------------------------------------------------------------


def test_metadata_is_json_unless_multipart_xml_is_preferred() -> None:
    assert metadata_type(None) == DICOM_JSON
    assert metadata_type("application/dicom+json") == DICOM_JSON
    assert metadata_type(f'multipart/related; type="{DICOM_XML}"') == DICOM_XML
    assert metadata_type(f'multipart/related; type="{DICOM_XML}", */*;q=0.1') == DICOM_XML
    with pytest.raises(NotAcceptable):
        metadata_type("application/dicom+xml")  # XML metadata is multipart (PS3.18 8.7.3.3)
    with pytest.raises(NotAcceptable):
        metadata_type("text/html")


def test_rendered_parts_are_jpeg_unless_png_is_asked() -> None:
    assert rendered_parts_type(None) == "image/jpeg"
    assert rendered_parts_type('multipart/related; type="image/png"') == "image/png"
    assert rendered_parts_type("image/png") == "image/png"
    with pytest.raises(NotAcceptable):
        rendered_parts_type('multipart/related; type="image/gif"')


# -- PS3.19 XML ---------------------------------------------------------------------------------


def test_native_model_carries_values_names_sequences_bulk_data_and_private_creators() -> None:
    header = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane^^Dr"}]},
        "00280010": {"vr": "US", "Value": [512]},
        "00200032": {"vr": "DS", "Value": [-1.5, 2.0, None]},
        "00081115": {"vr": "SQ", "Value": [{"0020000E": {"vr": "UI", "Value": ["1.2.3"]}}]},
        "7FE00010": {"vr": "OW", "BulkDataURI": "http://edge/bulk"},
        "00090010": {"vr": "LO", "Value": ["ACME"]},
        "00091001": {"vr": "LO", "Value": ["secret sauce"]},
    }
    root = ET.fromstring(native_model(header))
    assert root.tag == f"{{{NAMESPACE}}}NativeDicomModel"
    tags = [str(a.get("tag")) for a in root.findall("d:DicomAttribute", NS)]
    assert tags == sorted(tags)
    name = root.find("d:DicomAttribute[@tag='00100010']", NS)
    assert name is not None and name.get("keyword") == "PatientName"
    alphabetic = name.find("d:PersonName[@number='1']/d:Alphabetic", NS)
    assert alphabetic is not None
    assert [(c.tag.split("}")[1], c.text) for c in alphabetic] == [
        ("FamilyName", "Doe"),
        ("GivenName", "Jane"),
        ("NamePrefix", "Dr"),
    ]
    position = root.findall("d:DicomAttribute[@tag='00200032']/d:Value", NS)
    assert [(v.get("number"), v.text) for v in position] == [("1", "-1.5"), ("2", "2"), ("3", None)]
    item = root.find("d:DicomAttribute[@tag='00081115']/d:Item[@number='1']", NS)
    assert item is not None
    assert item.findtext("d:DicomAttribute[@tag='0020000E']/d:Value", namespaces=NS) == "1.2.3"
    bulk = root.find("d:DicomAttribute[@tag='7FE00010']/d:BulkData", NS)
    assert bulk is not None and bulk.get("uri") == "http://edge/bulk"
    private = root.find("d:DicomAttribute[@tag='00091001']", NS)
    assert private is not None and private.get("privateCreator") == "ACME"


# -- over ASGI ----------------------------------------------------------------------------------


@pytest.fixture
def catalog(tmp_path: Path) -> tuple[Catalog, str, str, list[dict[str, object]]]:
    catalog, study, series = Catalog(), generate_uid(), generate_uid()
    added = [
        catalog.add(_ct(tmp_path, f"{n}.dcm", StudyInstanceUID=study, SeriesInstanceUID=series))
        for n in range(3)
    ]
    # No pixel data: left out of renderings and of compressed retrievals.
    report = make_dataset(StudyInstanceUID=study, SeriesInstanceUID=series)
    added.append(catalog.add(write_part10(tmp_path / "sr.dcm", report)))
    return catalog, study, series, added


def test_study_and_series_render_one_part_per_frame_with_pixels(
    catalog: tuple[Catalog, str, str, list[dict[str, object]]],
) -> None:
    fake, study, series, _ = catalog
    for url in (
        f"/dicom-web/studies/{study}/rendered",
        f"/dicom-web/studies/{study}/series/{series}/rendered",
    ):
        response = asyncio.run(fake.get(url, 'multipart/related; type="image/png"'))
        assert response.status_code == 200, response.text
        parts = split_multipart(response)
        assert [media for media, _ in parts] == ["image/png"] * 3
        assert {Image.open(io.BytesIO(data)).size for _, data in parts} == {(48, 64)}
    refused = asyncio.run(fake.get(f"/dicom-web/studies/{study}/rendered", "image/gif"))
    assert refused.status_code == 406


def test_metadata_as_xml_is_one_document_per_instance(
    catalog: tuple[Catalog, str, str, list[dict[str, object]]],
) -> None:
    fake, study, _, added = catalog
    response = asyncio.run(
        fake.get(f"/dicom-web/studies/{study}/metadata", f'multipart/related; type="{DICOM_XML}"')
    )
    assert response.status_code == 200
    parts = split_multipart(response)
    assert [media for media, _ in parts] == [DICOM_XML] * 4
    sops = [
        ET.fromstring(data).findtext("d:DicomAttribute[@tag='00080018']/d:Value", namespaces=NS)
        for _, data in parts
    ]
    assert sops == [i["sop"] for i in added]


def test_compressed_retrieval_leaves_out_what_cannot_be_encoded_and_is_406_when_nothing_can(
    catalog: tuple[Catalog, str, str, list[dict[str, object]]],
) -> None:
    fake, study, series, added = catalog
    rle = f'multipart/related; type="application/dicom"; transfer-syntax={RLE_LOSSLESS}'
    response = asyncio.run(fake.get(f"/dicom-web/studies/{study}", rle))
    assert response.status_code == 200
    parts = split_multipart(response)
    assert len(parts) == 3
    assert all(media.endswith(f"transfer-syntax={RLE_LOSSLESS}") for media, _ in parts)
    assert pydicom.dcmread(io.BytesIO(parts[0][1])).file_meta.TransferSyntaxUID == RLE_LOSSLESS
    report = added[-1]
    lone = f"/dicom-web/studies/{study}/series/{series}/instances/{report['sop']}"
    assert asyncio.run(fake.get(lone, rle)).status_code == 406
    lossy = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'
    assert asyncio.run(fake.get(f"/dicom-web/studies/{study}", lossy)).status_code == 406
