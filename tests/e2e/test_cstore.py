"""C-STORE end to end: DCMTK's storescu against the running suite, checked in S3 and the catalog.

What storescu puts on the wire is not always the file's bytes (DCMTK re-encodes), so the oracle
for "byte-identical" is DCMTK's own storescp in bit-preserving mode, sent the very same files.
"""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.generate import generate_ct_study
from edge.cli.devsuite import dcmtk, dcmtk_env
from edge.common.netutil import free_ports
from tests.e2e.conftest import Client
from tests.e2e.dicomfiles import (
    STORESCU_OPTION,
    dataset_sha256,
    group_by_storescu_option,
    valid_bundled_instances,
)

pytestmark = pytest.mark.e2e


def reference_copies(
    batches: list[tuple[str, list[Path]]], out: Path
) -> tuple[dict[str, set[str]], list[Path]]:
    """Send ``batches`` to DCMTK storescp (+B keeps the received bytes exactly), one file per
    storescu run so that one unreadable file stops nothing. Return, per SOP Instance UID, the
    SHA-256 of every data set it received, and the files DCMTK could not send."""
    import pydicom

    out.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    scp = subprocess.Popen(
        [dcmtk("storescp"), "+B", "+xa", "+uf", "-od", str(out), "-aet", "REFERENCE", str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    unsendable: list[Path] = []
    try:
        time.sleep(0.5)
        for option, files in batches:
            for path in files:
                sent = subprocess.run(
                    [
                        dcmtk("storescu"),
                        "-aec",
                        "REFERENCE",
                        "-R",
                        option,
                        "127.0.0.1",
                        str(port),
                        str(path),
                    ],
                    env=dcmtk_env(),
                    capture_output=True,
                    timeout=60,
                )
                if sent.returncode != 0:
                    unsendable.append(path)
    finally:
        scp.terminate()
        scp.wait(10)
    shas: dict[str, set[str]] = defaultdict(set)
    for path in out.iterdir():
        data = path.read_bytes()
        uid = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        shas[str(uid.SOPInstanceUID)].add(dataset_sha256(data))
    return shas, unsendable


def test_echoscu_verifies_the_listener(client: Client) -> None:
    result = client.dcmtk("echoscu")
    assert result.returncode == 0, result.stderr


def test_bundled_and_generated_instances_are_stored_byte_identical_once(
    client: Client, tmp_path: Path
) -> None:
    bundled = valid_bundled_instances()
    groups, unsendable = group_by_storescu_option(bundled)
    assert not unsendable, f"no storescu option for {[b.path.name for b in unsendable]}"
    study = generate_ct_study(tmp_path / "ct", series=3, per_series=100, rows=128, cols=128)
    halves = [study[0::2], study[1::2]]
    batches = [(opt, [b.path for b in items]) for opt, items in sorted(groups.items())]
    expected, unsendable = reference_copies(batches, tmp_path / "reference")
    # A few bundled files DCMTK cannot parse (pydicom can): they go by `edge send`, which
    # streams the file's own bytes, so the file itself is the reference.
    by_pynetdicom = [b for b in bundled if b.path in unsendable]
    assert len(by_pynetdicom) < 5, [b.path.name for b in by_pynetdicom]
    for item in by_pynetdicom:
        expected[item.sop_instance_uid].add(dataset_sha256(item.path.read_bytes()))
    batches = [(opt, [p for p in files if p not in unsendable]) for opt, files in batches]
    ct_reference, _ = reference_copies([("-xe", study)], tmp_path / "ct-reference")
    expected.update(ct_reference)
    assert len(expected) == len({b.sop_instance_uid for b in bundled}) + len(study)

    for option, files in batches:
        result = client.storescu(files, option)
        assert result.returncode == 0, f"{option}: {result.stderr[-2000:]}"
    if by_pynetdicom:
        sent = client.suite.edge(
            "send",
            *(str(b.path) for b in by_pynetdicom),
            "--ae",
            client.suite.ae_title,
            "--port",
            str(client.suite.dicom_port),
            "--calling",
            "STORESCU",
            check=False,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
    # The generated study over two associations at once.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda half: client.storescu(half, "-xe"), halves))
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]

    assert client.wait_for_instances(len(expected)) == len(expected)
    rows = client.query("SELECT sop_instance_uid, sha256, size, object_key FROM instance")
    assert len(rows) == len({r[0] for r in rows}) == len(expected)
    for sop_uid, sha256, size, key in rows:
        data = b"".join(client.store.iter_chunks(key))
        assert len(data) == size
        assert __import__("hashlib").sha256(data).hexdigest() == sha256
        assert dataset_sha256(data) in expected[sop_uid], f"{sop_uid} differs from what was sent"
    assert client.object_count() == len(expected)


def test_resending_a_study_changes_nothing(client: Client, tmp_path: Path) -> None:
    study = generate_ct_study(tmp_path / "again", series=1, per_series=20, rows=64, cols=64, seed=7)
    expected = client.instance_count() + len(study)
    first = client.storescu(study, "-xe")
    assert first.returncode == 0, first.stderr
    assert client.wait_for_instances(expected) == expected
    snapshot = client.query("SELECT sop_instance_uid, sha256, updated_at FROM instance ORDER BY 1")
    again = client.storescu(study, "-xe")
    assert again.returncode == 0, again.stderr
    deadline = time.monotonic() + 30
    while client.queue_depth() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert (
        client.query("SELECT sop_instance_uid, sha256, updated_at FROM instance ORDER BY 1")
        == snapshot
    )


def test_suite_options_cover_every_storescu_transfer_syntax() -> None:
    # Guards the table above: a transfer syntax added to the bundled files must be sendable.
    assert set(STORESCU_OPTION) >= {b.transfer_syntax for b in valid_bundled_instances()}
