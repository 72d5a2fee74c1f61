"""The `edge` command against the running suite: send, echo, migrate, ae."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.generate import generate_ct_study
from tests.e2e.conftest import Client

pytestmark = pytest.mark.e2e


def test_edge_send_stores_a_folder_and_summarises_statuses(client: Client, tmp_path: Path) -> None:
    generate_ct_study(tmp_path / "study" / "nested", series=2, per_series=5, rows=32, cols=32)
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    expected = client.instance_count() + 10
    suite = client.suite

    result = suite.edge(
        "send",
        str(tmp_path / "study"),
        "--port",
        str(suite.dicom_port),
        "--calling",
        "STORESCU",
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0x0000" in result.stdout and "10" in result.stdout
    assert "skipped" in result.stdout and "notes.txt" in result.stdout
    assert client.wait_for_instances(expected) == expected


def test_edge_send_exits_non_zero_when_instances_are_refused(
    client: Client, tmp_path: Path
) -> None:
    files = generate_ct_study(tmp_path / "refused", series=1, per_series=2, rows=16, cols=16)
    suite = client.suite
    result = suite.edge(
        "send",
        *map(str, files),
        "--port",
        str(suite.dicom_port),
        "--calling",
        "UNKNOWN",
        check=False,
    )
    assert result.returncode == 1
    assert "association rejected" in result.stdout


def test_edge_echo_succeeds_for_a_registered_ae_and_fails_otherwise(client: Client) -> None:
    suite = client.suite
    ok = suite.edge("echo", "--port", str(suite.dicom_port), "--calling", "STORESCU", check=False)
    assert ok.returncode == 0 and "success" in ok.stdout
    refused = suite.edge(
        "echo", "--port", str(suite.dicom_port), "--calling", "NOBODY", check=False
    )
    assert refused.returncode == 1 and "rejected" in refused.stdout


def test_edge_migrate_is_idempotent(client: Client) -> None:
    result = client.suite.edge("migrate")
    assert "up to date" in result.stdout


def test_edge_ae_list_shows_registered_nodes_and_refuses_bad_titles(client: Client) -> None:
    listing = client.suite.edge("ae", "list")
    assert "STORESCU" in listing.stdout and "echo,store" in listing.stdout
    bad = client.suite.edge(
        "ae", "add", "WAY-TOO-LONG-AE-TITLE", "--host", "127.0.0.1", "--port", "104", check=False
    )
    assert bad.returncode == 2 and "1-16" in bad.stdout
