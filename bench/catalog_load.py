"""Bulk loader for the query benchmark: a catalog of N studies (~10 instances each) written
through the ingestion code path.

    python bench/catalog_load.py [--studies 100000] [--seed 1] [--workers 4] [--batch 500]
                                 [--database-url postgresql://postgres@127.0.0.1:5432/edge_bench_find]
                                 [--reuse | --recreate]

Every instance is a small pydicom header (no pixel data) turned into an ``InstanceRecord`` and
written by ``PsycopgTransaction.upsert``: the SQL and the rows are those of ingestion. The first
instance of each series goes through ``record_from_dataset``; its siblings are that record with
their own UIDs, number, hash, key and per-instance header elements (``header_json`` of those),
which costs a third as much; every chunk checks one study both ways and stops the load if the
records differ. Only the outbox row ingestion adds per instance is left out (queries never
read it). Batches of ``--batch`` instances are one transaction each; ``--workers`` processes,
one connection each, load disjoint sets of patients (no two transactions lock the same rows).

The data is deterministic for a seed: ~18 % of patients have 2-4 studies (~40 % of studies share
their patient), names from a fixed list in which ``SMI*`` matches SMITH, SMITHERS and SMILEY
(~0.15 % of patients) and ``*MIT*`` those plus NESMITH, GOLDSMITH, SCHMITT and MITCHELL
(~0.30 %), study dates over ten years (2016-2025), unique accession numbers, 1-4 series per
study (CT, MR, CR, DX, US, MG, PT, NM, XA, with SR and PR series beside them), 4-16 instances
per study.

The database is created and migrated with ``create_database_if_missing`` and ``migrate``; after
the load the study table is compacted (``VACUUM (FULL) study``, see ``load``) and the whole
database ``VACUUM ANALYZE``d. Its comment records what was loaded; ``--reuse`` keeps a
database loaded with the same parameters and loads nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydicom.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.common.catalog import (  # noqa: E402
    InstanceRecord,
    PsycopgTransaction,
    create_database_if_missing,
    migrate,
    record_from_dataset,
)
from edge.common.catalog.dicomjson import header_json  # noqa: E402
from edge.common.dicom import instance_key  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/edge_bench_find"
UID_ROOT = "1.2.826.0.1.3680043.8.498.4242"  # pydicom's root, an arc of our own below it
EXPLICIT_LE = "1.2.840.10008.1.2.1"
FIRST_DAY, DAYS = date(2016, 1, 1), 3653  # 2016-01-01 .. 2025-12-31

# Family names whose share is fixed, so that the wildcard queries have a known selectivity.
SPECIAL_FAMILIES = {
    "SMITH": 0.0008,
    "SMITHERS": 0.0004,
    "SMILEY": 0.0003,
    "NESMITH": 0.0003,
    "GOLDSMITH": 0.0003,
    "SCHMITT": 0.0004,
    "MITCHELL": 0.0005,
}
FAMILIES = (
    "ADAMS ALLEN ANDERSEN BAKER BANERJEE BARNES BECKER BELL BERG BROWN CAMPBELL CARTER CHEN "
    "CLARK COHEN COLLINS COOPER COSTA CRUZ DAVIES DIAZ DUBOIS EDWARDS EVANS FISCHER FISHER "
    "FOSTER GARCIA GARNIER GONZALEZ GRAY GREEN HALL HANSEN HARRIS HOFFMANN HUGHES IVANOV JACKSON "
    "JAMES JENSEN JOHNSON JONES KELLY KHAN KIM KING KOWALSKI KUMAR LAMBERT LARSEN LEE LEROY LEWIS "
    "LOPEZ MARTIN MARTINEZ MEYER MILLER MOORE MORENO MORGAN MORRIS MULLER MURPHY NAKAMURA NGUYEN "
    "NIELSEN NOVAK OKAFOR OLSEN PARKER PATEL PEREZ PETERSEN PHILLIPS PRICE RAMIREZ REED RICHTER "
    "RIVERA ROBERTS ROBINSON RODRIGUEZ ROSSI RUSSO SANCHEZ SANTOS SATO SCHNEIDER SCHULZ SCOTT "
    "SHAW SILVA SINGH STEWART SUZUKI TAKAHASHI TANAKA TAYLOR THOMAS THOMPSON TURNER WAGNER WALKER "
    "WANG WATSON WEBER WHITE WILLIAMS WILSON WOOD WRIGHT YAMAMOTO YANG YOUNG ZHANG ZIMMERMANN"
).split()
GIVEN = (
    "ADA ALAN ALICE ANNA ARTHUR BEATRICE BEN CARLA CARLOS CLARA DANIEL DAVID EMMA ERIC EVA FELIX "
    "GRACE HANNA HENRY HUGO IDA IRIS JACK JAMES JANE JOHN JULIA KARL LAURA LEO LILY LUCAS MARIA "
    "MARK MARTA MAX MIA NINA NOAH OLGA OSCAR PAUL PETER RITA ROSA RUTH SAM SARA SOFIA TOM VERA "
    "VICTOR WILL YUKI ZOE"
).split()
# The filler names must not touch the wildcards, or their selectivity would not be known.
assert not [n for n in FAMILIES + GIVEN if n.startswith("SMI") or "MIT" in n]
DOCTORS = [f"{f}^{g}" for f, g in zip(FAMILIES[::7], GIVEN[::3], strict=False)]

# modality: (weight as the study's primary modality, SOP Class UID, rows, cols, bytes)
MODALITIES: dict[str, tuple[float, str, int, int, int]] = {
    "CT": (0.28, "1.2.840.10008.5.1.4.1.1.2", 512, 512, 526_000),
    "MR": (0.18, "1.2.840.10008.5.1.4.1.1.4", 256, 256, 133_000),
    "CR": (0.20, "1.2.840.10008.5.1.4.1.1.1", 2048, 2500, 10_240_000),
    "DX": (0.08, "1.2.840.10008.5.1.4.1.1.1.1", 3000, 3000, 18_000_000),
    "US": (0.10, "1.2.840.10008.5.1.4.1.1.6.1", 600, 800, 1_440_000),
    "MG": (0.06, "1.2.840.10008.5.1.4.1.1.1.2", 4096, 3328, 27_300_000),
    "PT": (0.04, "1.2.840.10008.5.1.4.1.1.128", 128, 128, 33_000),
    "NM": (0.02, "1.2.840.10008.5.1.4.1.1.20", 256, 256, 1_000_000),
    "XA": (0.04, "1.2.840.10008.5.1.4.1.1.12.1", 1024, 1024, 20_000_000),
    "SR": (0.0, "1.2.840.10008.5.1.4.1.1.88.22", 0, 0, 24_000),
    "PR": (0.0, "1.2.840.10008.5.1.4.1.1.11.1", 0, 0, 6_000),
}
PRIMARY = [m for m, v in MODALITIES.items() if v[0] > 0]
PRIMARY_WEIGHTS = [MODALITIES[m][0] for m in PRIMARY]
DESCRIPTIONS = {
    "CT": [("CT CHEST W/O CONTRAST", "CHEST"), ("CT HEAD", "HEAD"), ("CT ABDOMEN", "ABDOMEN")],
    "MR": [("MR BRAIN W/WO", "BRAIN"), ("MR KNEE", "KNEE"), ("MR LSPINE", "LSPINE")],
    "CR": [("XR CHEST 2 VIEWS", "CHEST"), ("XR HAND", "HAND")],
    "DX": [("DX CHEST PA", "CHEST"), ("DX FOOT", "FOOT")],
    "US": [("US ABDOMEN", "ABDOMEN"), ("US THYROID", "NECK")],
    "MG": [("MG SCREENING BILATERAL", "BREAST")],
    "PT": [("PET/CT WHOLE BODY", "WHOLEBODY")],
    "NM": [("NM BONE SCAN", "WHOLEBODY")],
    "XA": [("XA CORONARY ANGIO", "HEART")],
}


def _rng(seed: int, kind: str, number: int) -> random.Random:
    return random.Random(f"{seed}:{kind}:{number}")


def studies_per_patient(seed: int, patient: int) -> int:
    """1 for ~82 % of patients, else 2-4: then ~40 % of studies share their patient."""
    rng = _rng(seed, "count", patient)
    return 1 if rng.random() < 0.818 else rng.randint(2, 4)


def plan_patients(studies: int, seed: int) -> list[tuple[int, int, int]]:
    """``(patient number, first study number, study count)`` until ``studies`` are planned."""
    out, next_study, patient = [], 0, 0
    while next_study < studies:
        count = min(studies_per_patient(seed, patient), studies - next_study)
        out.append((patient, next_study, count))
        next_study += count
        patient += 1
    return out


def patient_name(rng: random.Random) -> str:
    roll, family = rng.random(), None
    for name, share in SPECIAL_FAMILIES.items():
        roll -= share
        if roll < 0:
            family = name
            break
    family = family or rng.choice(FAMILIES)
    given = rng.choice(GIVEN)
    name = f"{family}^{given}" + (
        f"^{rng.choice('ABCDEFGHJKLMNPRSTW')}" if rng.random() < 0.2 else ""
    )
    return name if rng.random() < 0.7 else name.title()  # some senders write mixed case


def series_plan(rng: random.Random, primary: str) -> list[tuple[str, int]]:
    """``(modality, instances)`` of each series: 1-4 series, 4-16 instances in the study."""
    count = rng.choices((1, 2, 3, 4), weights=(0.3, 0.3, 0.25, 0.15))[0]
    modalities = [primary]
    for _ in range(count - 1):
        roll = rng.random()
        if roll < 0.3 and "SR" not in modalities:
            modalities.append("SR")
        elif roll < 0.5 and primary in ("CR", "DX", "MG", "US", "XA"):
            modalities.append("PR")
        elif primary == "PT" and "CT" not in modalities:
            modalities.append("CT")
        else:
            modalities.append(primary)
    total = rng.randint(4, 16)
    images = [i for i, m in enumerate(modalities) if m not in ("SR", "PR")]
    counts = [1] * len(modalities)
    for _ in range(max(0, total - len(modalities))):
        counts[rng.choice(images)] += 1
    return list(zip(modalities, counts, strict=True))


def study_datasets(seed: int, patient: int, study: int) -> Iterator[tuple[Dataset, str, int]]:
    """The headers of one study's instances, as a modality would send them, with the SOP
    Class UID's object size. One Dataset is reused: ``record_from_dataset`` copies what it
    reads."""
    prng, rng = _rng(seed, "patient", patient), _rng(seed, "study", study)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name(prng)
    ds.PatientID = f"P{patient:07d}"
    ds.IssuerOfPatientID = "EDGE-BENCH"
    ds.PatientBirthDate = (date(1930, 1, 1) + timedelta(days=prng.randrange(33_000))).strftime(
        "%Y%m%d"
    )
    ds.PatientSex = prng.choice("MF")
    day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day.strftime("%Y%m%d")
    ds.StudyTime = f"{rng.randint(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
    ds.AccessionNumber = f"A{seed % 100:02d}{study:08d}"
    ds.StudyID = str(rng.randint(1, 99_999))
    ds.StudyInstanceUID = f"{UID_ROOT}.{seed}.{study + 1}"
    ds.ReferringPhysicianName = rng.choice(DOCTORS)
    ds.InstitutionName = "EDGE BENCH HOSPITAL"
    ds.Manufacturer = rng.choice(("ACME", "Globex", "Initech"))
    primary = rng.choices(PRIMARY, weights=PRIMARY_WEIGHTS)[0]
    description, body_part = rng.choice(DESCRIPTIONS[primary])
    ds.StudyDescription = description
    for number, (modality, instances) in enumerate(series_plan(rng, primary), start=1):
        _, sop_class, rows, cols, size = MODALITIES[modality]
        ds.SeriesInstanceUID = f"{ds.StudyInstanceUID}.{number}"
        ds.Modality = modality
        ds.SeriesNumber = number
        ds.SeriesDescription = f"{modality} {description.split(' ', 1)[-1]} {number}"
        ds.BodyPartExamined = body_part
        ds.SeriesTime = ds.StudyTime
        ds.SOPClassUID = sop_class
        for tag in ("Rows", "Columns", "BitsAllocated", "ImagePositionPatient"):
            if tag in ds:
                delattr(ds, tag)
        if rows:
            ds.Rows, ds.Columns, ds.BitsAllocated = rows, cols, 16
        for n in range(1, instances + 1):
            ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.{n}"
            ds.InstanceNumber = n
            if modality in ("CT", "MR", "PT"):
                ds.ImagePositionPatient = [0.0, 0.0, float(n)]
            yield ds, sop_class, size


def _record(ds: Dataset, size: int) -> InstanceRecord:
    uid = str(ds.SOPInstanceUID)
    received = datetime.strptime(f"{ds.StudyDate}{ds.StudyTime}", "%Y%m%d%H%M%S")
    return record_from_dataset(
        ds,
        sha256=hashlib.sha256(uid.encode()).hexdigest(),
        size=size,
        object_key=instance_key(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), uid),
        transfer_syntax_uid=EXPLICIT_LE,
        calling_ae=f"{ds.Modality}_SCANNER",
        received_at=(received + timedelta(minutes=5)).replace(tzinfo=UTC),
    )


def _sibling(first: InstanceRecord, ds: Dataset) -> InstanceRecord:
    """The record of another instance of ``first``'s series, built from ``first``: only the
    per-instance elements are read (by ``header_json`` too), a fraction of the cost of
    ``record_from_dataset`` on the whole header. :func:`verify` proves the two identical."""
    uid = str(ds.SOPInstanceUID)
    changed = Dataset()
    for keyword in PER_INSTANCE:
        if keyword in ds:
            setattr(changed, keyword, ds[keyword].value)
    return replace(
        first,
        sop_instance_uid=uid,
        instance_number=int(ds.InstanceNumber),
        sha256=hashlib.sha256(uid.encode()).hexdigest(),
        object_key=instance_key(
            first.study.study_instance_uid, first.series.series_instance_uid, uid
        ),
        header={**first.header, **header_json(changed)},
    )


PER_INSTANCE = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient")


def study_records(
    seed: int, patient: int, study: int, *, full: bool = False
) -> Iterator[InstanceRecord]:
    """What ingestion would catalogue for each instance of one study: ``record_from_dataset``
    on the first instance of each series, and on every instance when ``full``."""
    first: InstanceRecord | None = None
    for ds, _, size in study_datasets(seed, patient, study):
        if full or first is None or first.series.series_instance_uid != ds.SeriesInstanceUID:
            first = _record(ds, size)
            yield first
        else:
            yield _sibling(first, ds)


def verify(seed: int, patient: int, study: int) -> None:
    """Raise unless the shortcut gives exactly what ``record_from_dataset`` gives."""
    fast = list(study_records(seed, patient, study))
    slow = list(study_records(seed, patient, study, full=True))
    if fast != slow or [r.header for r in fast] != [r.header for r in slow]:
        raise AssertionError(f"derived records differ from record_from_dataset (study {study})")


# -- loading ------------------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(database_url: str, seed: int, batch: int) -> None:
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(psycopg.AsyncConnection.connect(database_url, autocommit=True))
    _worker.update(loop=loop, conn=conn, seed=seed, batch=batch)


async def _write(conn: psycopg.AsyncConnection[Any], records: list[InstanceRecord]) -> None:
    async with conn.transaction():  # as PsycopgCatalog.transaction() does
        tx = PsycopgTransaction(conn)
        for rec in records:
            await tx.upsert(rec)


def _load_chunk(chunk: list[tuple[int, int, int]]) -> int:
    """Load the studies of some patients; returns the number of instances written."""
    loop, conn, seed, batch = (_worker[k] for k in ("loop", "conn", "seed", "batch"))
    pending: list[InstanceRecord] = []
    written = 0
    patient, first, _ = chunk[0]
    verify(seed, patient, first)  # one study per chunk, ~1 % of the load
    for patient, first, count in chunk:
        for study in range(first, first + count):
            pending.extend(study_records(seed, patient, study))
        if len(pending) >= batch:
            loop.run_until_complete(_write(conn, pending))
            written, pending = written + len(pending), []
    if pending:
        loop.run_until_complete(_write(conn, pending))
        written += len(pending)
    return written


def load(database_url: str, studies: int, seed: int, workers: int, batch: int) -> dict[str, Any]:
    patients = plan_patients(studies, seed)
    chunk_size = 100
    chunks = [patients[i : i + chunk_size] for i in range(0, len(patients), chunk_size)]
    started = time.monotonic()
    done = 0
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, _init_worker, (database_url, seed, batch)) as pool:
        for n, written in enumerate(pool.imap_unordered(_load_chunk, chunks), start=1):
            done += written
            if n % max(1, len(chunks) // 20) == 0 or n == len(chunks):
                elapsed = time.monotonic() - started
                print(
                    f"  {done:>9,} instances  {elapsed:7.1f} s  {done / elapsed:6.0f}/s",
                    flush=True,
                )
    loaded = time.monotonic() - started
    with psycopg.connect(database_url, autocommit=True) as conn:
        t0 = time.monotonic()
        # Ingestion updates the study row (its timer) once per instance. In one transaction per
        # instance each old version is pruned from its page as the next arrives; in batches of
        # 500 they all stay until the commit, which left the study heap ~8x its live size and
        # every plan that walks it slower. Compacting it gives the layout ingestion leaves.
        conn.execute("VACUUM (FULL) study")
        compact = time.monotonic() - t0
        t0 = time.monotonic()
        conn.execute("VACUUM ANALYZE")
        vacuum = time.monotonic() - t0
    return {
        "studies": studies,
        "patients": len(patients),
        "instances": done,
        "seed": seed,
        "workers": workers,
        "batch": batch,
        "load_s": round(loaded, 1),
        "vacuum_full_study_s": round(compact, 1),
        "vacuum_analyze_s": round(vacuum, 1),
        "loaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def database_comment(database_url: str) -> dict[str, Any] | None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
            " WHERE datname = current_database()"
        ).fetchone()
    try:
        return json.loads(row[0]) if row and row[0] else None
    except ValueError:
        return None


def set_comment(database_url: str, info: dict[str, Any]) -> None:
    name = conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(str(name)), sql.Literal(json.dumps(info))
            )
        )


def drop_database(database_url: str) -> None:
    name = conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(make_conninfo(database_url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )


def ensure_loaded(
    database_url: str,
    *,
    studies: int,
    seed: int,
    workers: int = 4,
    batch: int = 500,
    reuse: bool = True,
    recreate: bool = False,
) -> dict[str, Any]:
    """The load's description (the database comment), loading first if needed."""
    if recreate:
        drop_database(database_url)
    asyncio.run(create_database_if_missing(database_url))
    asyncio.run(migrate(database_url))
    info = database_comment(database_url)
    if info is not None:
        if reuse and (info.get("studies"), info.get("seed")) == (studies, seed):
            print(f"reusing {database_url}: {info}")
            return info
        raise SystemExit(
            f"{database_url} already holds a load ({info}); pass --reuse with the same"
            " --studies/--seed, or --recreate"
        )
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM instance").fetchone()
    if row and row[0]:
        raise SystemExit(f"{database_url} has {row[0]} instances of unknown origin; --recreate")
    print(f"loading {studies:,} studies into {database_url} ({workers} workers)", flush=True)
    info = load(database_url, studies, seed, workers, batch)
    set_comment(database_url, info)
    print(json.dumps(info))
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4, help="loader processes")
    parser.add_argument("--batch", type=int, default=500, help="instances per transaction")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--reuse", action="store_true", help="keep a matching earlier load")
    mode.add_argument("--recreate", action="store_true", help="drop the database first")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_loaded(
        args.database_url,
        studies=args.studies,
        seed=args.seed,
        workers=args.workers,
        batch=args.batch,
        reuse=args.reuse,
        recreate=args.recreate,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
