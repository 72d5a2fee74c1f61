"""Reading an instance's header (the data set up to its pixel data) out of the object store
with ranged reads, never the whole object: ingestion indexes it, the storage scrub re-announces
from it, retrieval's metadata will answer from it."""

from __future__ import annotations

import io

from pydicom import dcmread
from pydicom.dataset import Dataset

from edge.common.part10 import IncompleteDataset, header_length
from edge.common.store import ObjectStore

FIRST_READ = 64 << 10
MAX_HEADER = 64 << 20  # a header past this is not a header we will index


class HeaderTooLarge(ValueError):
    """The header runs past :data:`MAX_HEADER` bytes."""


def read_header(store: ObjectStore, key: str, first: bytes, size: int) -> Dataset:
    """The data set up to its pixel data, from ``first`` (the object's first bytes) and, when
    the header is longer, ranged GETs growing fourfold from the start of the object.

    What is read past the header is at most the last read's size, never the whole object.
    Raises :class:`HeaderTooLarge`, pydicom's errors on unparsable bytes, and the store's.
    """
    data, length = first, max(len(first), 1)
    while True:
        if len(data) >= size:
            return dcmread(io.BytesIO(data), stop_before_pixels=True)
        try:
            end = header_length(io.BytesIO(data), len(data))
        except IncompleteDataset:
            end = len(data)
        if end is not None and end < len(data):
            return dcmread(io.BytesIO(data[:end]), stop_before_pixels=True)
        if length >= MAX_HEADER:
            raise HeaderTooLarge(f"header of {key} exceeds {MAX_HEADER} bytes")
        length = size if end is None else length * 4
        data = store.get_range(key, 0, min(length, size))
