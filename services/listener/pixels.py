"""Pixel work for WADO: transcoding to uncompressed little endian, frames, bulk data values and
rendering (windowing) to JPEG or PNG. Plain functions over one instance's bytes; the network is
elsewhere.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.uid import UID

from edge.listener.negotiate import IMPLICIT_LE, NATIVE

PIXEL_DATA = 0x7FE00010
DEFAULT_THUMBNAIL = (128, 128)
MAX_VIEWPORT = 4096


class PixelError(ValueError):
    """The instance has no pixel data, no such frame, or it cannot be decoded here."""


def read(data: bytes) -> Dataset:
    return dcmread(io.BytesIO(data), force=False)


def transcode(data: bytes, target: str) -> bytes:
    """The Part-10 object ``data`` rewritten in ``target``: uncompressed little endian, or a
    lossless compressed syntax (``negotiate.can_encode``). Compressed pixel data is decoded
    with pydicom's handlers first. The instance keeps its SOP Instance UID: the same image in
    another encoding (pydicom 3 would mint a new one). PixelError when it cannot be done."""
    ds = read(data)
    stored = str(ds.file_meta.TransferSyntaxUID)
    if stored == target:
        return data
    if UID(stored).is_compressed and "PixelData" in ds:
        try:
            # Explicit VR Little Endian, colour as RGB (PS3.5 8.2.1)
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # no plugin, corrupt bitstream
            raise PixelError(f"the pixel data cannot be decoded: {type(exc).__name__}") from exc
    if UID(target).is_compressed:
        return _compressed(ds, UID(target))
    ds.file_meta.TransferSyntaxUID = UID(target)
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=target == IMPLICIT_LE, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def _compressed(ds: Dataset, target: UID) -> bytes:
    if "PixelData" not in ds:
        raise PixelError(f"the instance has no pixel data to encode as {target.name}")
    try:
        ds.compress(target, generate_instance_uid=False)
    except Exception as exc:  # a bit depth or layout the encoder does not take
        raise PixelError(
            f"the pixel data cannot be encoded as {target.name}: {type(exc).__name__}"
        ) from exc
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def frame_numbers(spec: str) -> list[int]:
    """``1,3,5`` -> [1, 3, 5] (PS3.18 8.3.3.1: one-based, comma-separated); ValueError when a
    number is not a positive integer."""
    numbers = []
    for item in spec.split(","):
        item = item.strip()
        if not item.isascii() or not item.isdigit() or int(item) < 1 or len(item) > 9:
            raise ValueError(f"bad frame number {item[:12]!r}")
        numbers.append(int(item))
    if not numbers:
        raise ValueError("no frame number")
    return numbers


def _frame_length(ds: Dataset) -> int:
    bits = int(ds.BitsAllocated)
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    return (pixels * bits + 7) // 8


def frames(ds: Dataset, numbers: list[int], *, decode: bool) -> Iterator[bytes]:
    """The frames ``numbers`` (one-based) of ``ds``: as stored (native bytes or the compressed
    bitstream of each frame), or decoded to native little endian bytes."""
    if "PixelData" not in ds:
        raise PixelError("the instance has no pixel data")
    count = number_of_frames(ds)
    bad = [n for n in numbers if n > count]
    if bad:
        raise PixelError(f"frame {bad[0]} of {count}")
    compressed = ds.file_meta.TransferSyntaxUID not in NATIVE
    if decode and compressed:
        for n in numbers:
            try:
                array = pixel_array(ds, index=n - 1)
            except Exception as exc:  # no plugin, corrupt bitstream
                raise PixelError(f"frame {n} cannot be decoded: {type(exc).__name__}") from exc
            yield np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        return
    if compressed:
        stored = list(generate_frames(ds.PixelData, number_of_frames=count))
        for n in numbers:
            yield stored[n - 1]
        return
    value = ds.PixelData
    if int(ds.BitsAllocated) == 1 and count > 1:
        raise PixelError("frames of 1-bit multi-frame pixel data are not split here")
    length = _frame_length(ds)
    for n in numbers:
        yield bytes(value[(n - 1) * length : n * length])


def find_element(ds: Dataset, tag: int) -> DataElement | None:
    """The element ``tag``: at the top level, else the first one in a sequence item (the
    header's BulkDataURIs name elements by tag alone)."""
    if tag in ds:
        return ds[tag]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                found = find_element(item, tag)
                if found is not None:
                    return found
    return None


def bulk_value(ds: Dataset, tag: int) -> bytes:
    """A binary element's bytes, little endian (PS3.18 8.7.3.5.4 uncompressed bulk data)."""
    elem = find_element(ds, tag)
    if elem is None:
        raise PixelError(f"no element {tag:08X}")
    value = elem.value
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise PixelError(f"element {tag:08X} is not bulk data")


# -- rendering (PS3.18 8.3.5.1.3, PS3.3 C.11.2.1.2) ---------------------------------------------


def _first(value: Any) -> float | None:
    """The first value of a DS element that may be multi-valued."""
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        if isinstance(value, Sequence):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def stored_window(ds: Dataset) -> tuple[float, float] | None:
    """The first Window Center / Window Width pair the instance (or its frame) carries."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None:
        for seq in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            for item in ds.get(seq, [])[:1]:
                for voi in item.get("FrameVOILUTSequence", [])[:1]:
                    center, width = _first(voi.get("WindowCenter")), _first(voi.get("WindowWidth"))
    if center is None or width is None or width < 1:
        return None
    return center, width


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, the LINEAR function, to 0..255."""
    values = values.astype(np.float64)
    if width <= 1:
        return np.where(values <= center - 0.5, 0, 255).astype(np.uint8)
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def min_max_window(values: np.ndarray) -> tuple[float, float]:
    low, high = float(np.min(values)), float(np.max(values))
    return (low + high) / 2 + 0.5, max(high - low + 1, 2.0)


def to_8bit(
    ds: Dataset, frame: np.ndarray, window_override: tuple[float, float] | None
) -> Image.Image:
    """One decoded frame as an 8-bit greyscale or RGB image, ready to encode."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
        photometric = "RGB"
    if frame.ndim == 3 and frame.shape[-1] == 3:
        if frame.dtype != np.uint8:
            top = float(np.max(frame)) or 1.0
            bits = int(ds.get("BitsStored", 8))
            scale = 255.0 / ((1 << bits) - 1) if top < (1 << bits) else 255.0 / top
            frame = np.clip(frame * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(frame), "RGB")
    values = apply_modality_lut(frame, ds).astype(np.float64)
    center_width = window_override or stored_window(ds) or min_max_window(values)
    grey = window(values, *center_width)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return Image.fromarray(np.ascontiguousarray(grey), "L")


def decode_frame(ds: Dataset, number: int) -> np.ndarray:
    if "PixelData" not in ds:
        raise PixelError("the instance has no pixel data")
    count = number_of_frames(ds)
    if not 1 <= number <= count:
        raise PixelError(f"frame {number} of {count}")
    try:
        return pixel_array(ds, index=number - 1)
    except Exception as exc:
        raise PixelError(f"the pixel data cannot be decoded: {type(exc).__name__}") from exc


def render(
    ds: Dataset,
    *,
    frame: int = 1,
    media_type: str = "image/jpeg",
    window_override: tuple[float, float] | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """A frame of ``ds`` as JPEG or PNG: modality LUT, then the requested window, else the
    stored one, else the frame's min/max; MONOCHROME1 inverted; scaled down to fit
    ``viewport`` (aspect ratio kept, never enlarged)."""
    image = to_8bit(ds, decode_frame(ds, frame), window_override)
    if viewport is not None:
        image.thumbnail(viewport, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if media_type == "image/png":
        image.save(out, "PNG")
    else:
        image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def viewport_of(value: str | None, default: tuple[int, int] | None) -> tuple[int, int] | None:
    """``viewport=vw,vh`` (PS3.18 8.3.5.1.3; the optional source rectangle is ignored)."""
    if not value:
        return default
    parts = value.split(",")
    try:
        width, height = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise ValueError("viewport must be width,height") from None
    if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
        raise ValueError(f"viewport sides must be 1..{MAX_VIEWPORT}")
    return width, height


def window_of(value: str | None) -> tuple[float, float] | None:
    """``window=center,width,function`` (PS3.18 8.3.5.1.3; LINEAR only)."""
    if not value:
        return None
    parts = value.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise ValueError("window must be center,width[,function]") from None
    if len(parts) > 2 and parts[2].strip().upper() not in ("", "LINEAR"):
        raise ValueError("only the LINEAR VOI LUT function is supported")
    if not np.isfinite(center) or not np.isfinite(width) or width < 1:
        raise ValueError("window width must be at least 1")
    return center, width
