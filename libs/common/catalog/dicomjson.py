"""The instance header as DICOM JSON (PS3.18 F.2) without bulk data, safe to store as jsonb."""

from __future__ import annotations

import math
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

# PS3.18 F.2.7: binary values longer than this (base64 characters) become a BulkDataURI.
BULK_DATA_THRESHOLD = 1024

# Pixel data is never part of the header, at any depth (icon images in sequences included):
# WADO-RS serves it from the stored object.
PIXEL_DATA_KEYS = frozenset({"7FE00008", "7FE00009", "7FE00010"})


def bulk_data_uri(elem: DataElement) -> str:
    """The relative BulkDataURI of a binary element too large to inline (resolved by WADO-RS
    against the instance's URL)."""
    return f"bulkdata/{int(elem.tag):08X}"


def clean_text(value: str) -> str:
    """Text Postgres accepts: jsonb and text refuse NUL, and UTF-8 refuses lone surrogates
    (which a mis-declared character set can produce)."""
    value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        return {clean_text(str(k)): _clean(v) for k, v in node.items() if k not in PIXEL_DATA_KEYS}
    if isinstance(node, list | tuple):
        return [_clean(v) for v in node]
    if isinstance(node, str):
        return clean_text(node)
    if isinstance(node, float) and not math.isfinite(node):
        # JSON has no NaN or Infinity; a null value is what PS3.18 F.2.5 uses for "no value".
        return None
    return node


def _dataset_json(ds: Dataset) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for tag in ds.keys():
        key = f"{int(tag):08X}"
        if key in PIXEL_DATA_KEYS:
            continue
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                # Items are walked here rather than by pydicom, so one bad value deep in a
                # sequence loses that value only, not the whole sequence.
                items = [_dataset_json(item) for item in elem.value or []]
                result[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            else:
                result[key] = elem.to_json_dict(bulk_data_uri, BULK_DATA_THRESHOLD)
        except Exception:  # an unconvertible value is dropped, and not logged (it may be PHI)
            continue
    return result


def header_json(ds: Dataset) -> dict[str, Any]:
    """``ds`` as a DICOM JSON object: bulk data as ``BulkDataURI``, pixel data absent at any
    depth, elements whose value does not conform to their VR dropped (never raises for bad
    values), strings cleaned for jsonb."""
    with config.strict_reading():
        raw = _dataset_json(ds)
    cleaned: dict[str, Any] = _clean(raw)
    return cleaned
