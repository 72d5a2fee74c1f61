"""Generated CT studies for benchmarks and e2e tests: Part-10 files written with pydicom.

Every file is CT Image Storage in explicit VR little endian with 16-bit pixel data of random
bytes (incompressible, so sizes are honest: 512x512 is about 0.5 MB). Patient, study, series and
instance attributes are filled so the catalog has something real to index.
"""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path

from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)


def _random_bytes(rng: random.Random, n: int, chunk: int = 1 << 20) -> bytes:
    """``n`` reproducible random bytes (``randbytes`` overflows above 256 MiB in one call)."""
    if n <= chunk:
        return rng.randbytes(n)
    return b"".join(rng.randbytes(min(chunk, n - i)) for i in range(0, n, chunk))


def _dataset(
    *,
    rng: random.Random,
    study_uid: str,
    series_uid: str,
    series_number: int,
    instance_number: int,
    rows: int,
    cols: int,
    frames: int,
    patient_id: str,
    accession: str,
) -> FileDataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName = "Bench^Generated"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    today = date.today().strftime("%Y%m%d")
    ds.StudyDate = today
    ds.StudyTime = "120000"
    ds.SeriesDate = today
    ds.ContentDate = today
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.StudyDescription = "Generated CT study"
    ds.SeriesDescription = f"Generated series {series_number}"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.Manufacturer = "DICOM Edge bench"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0.0, 0.0, float(instance_number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness = 1.0
    ds.PixelSpacing = [0.7, 0.7]
    ds.KVP = 120
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = _random_bytes(rng, rows * cols * 2 * frames)
    return ds


def generate_ct_study(
    out_dir: Path,
    *,
    study_uid: str | None = None,
    series: int = 3,
    per_series: int = 100,
    rows: int = 512,
    cols: int = 512,
    seed: int = 0,
) -> list[Path]:
    """Write ``series * per_series`` CT instances of one study under ``out_dir``; return the paths.

    ``seed`` makes the pixel bytes reproducible (UIDs are always fresh).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    study_uid = study_uid or generate_uid()
    patient_id = f"BENCH{seed:06d}"
    accession = f"ACC{rng.randrange(10**8):08d}"
    paths: list[Path] = []
    for s in range(1, series + 1):
        series_uid = generate_uid()
        for i in range(1, per_series + 1):
            ds = _dataset(
                rng=rng,
                study_uid=study_uid,
                series_uid=series_uid,
                series_number=s,
                instance_number=i,
                rows=rows,
                cols=cols,
                frames=1,
                patient_id=patient_id,
                accession=accession,
            )
            path = out_dir / f"s{s:03d}_i{i:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def generate_big_instance(
    out_path: Path, *, rows: int = 10000, cols: int = 15000, seed: int = 0
) -> Path:
    """One single-frame CT instance with ``rows * cols * 2`` bytes of pixels (300 MB by default)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    study_uid = generate_uid()
    ds = _dataset(
        rng=rng,
        study_uid=study_uid,
        series_uid=generate_uid(),
        series_number=1,
        instance_number=1,
        rows=rows,
        cols=cols,
        frames=1,
        patient_id=f"BIG{seed:06d}",
        accession="BIG0001",
    )
    ds.save_as(out_path, enforce_file_format=True)
    return out_path


__all__ = ["generate_ct_study", "generate_big_instance"]
