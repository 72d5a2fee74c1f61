"""The `edge` command against the running suite: send, echo (plain and DICOM TLS), migrate, ae."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.generate import generate_ct_study
from edge.common.tls import ensure_dev_pki
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


def test_edge_echo_over_tls_verifies_the_node_and_presents_a_client_certificate(
    client: Client,
) -> None:
    suite = client.suite
    cert, key = suite.client_certificate("STORESCU")
    result = suite.edge(
        "echo", "--tls", "--port", str(suite.tls_port), "--calling", "STORESCU",
        "--ca", str(suite.pki.ca), "--cert", str(cert), "--key", str(key),
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(TLS): success" in result.stdout


def test_edge_echo_and_send_refuse_a_node_their_ca_did_not_sign(
    client: Client, tmp_path: Path
) -> None:
    suite = client.suite
    other_ca = ensure_dev_pki(tmp_path / "other-ca").ca
    [ct] = generate_ct_study(tmp_path / "ct", series=1, per_series=1, rows=16, cols=16)
    tls = ["--tls", "--port", str(suite.tls_port), "--calling", "STORESCU", "--ca", str(other_ca)]

    echo = suite.edge("echo", *tls, check=False)
    send = suite.edge("send", str(ct), *tls, check=False)

    for result in (echo, send):
        assert result.returncode == 1, result.stdout + result.stderr
        # the handshake's reason, as OpenSSL gives it (rich wraps long lines: unwrap)
        assert "certificate verify failed" in " ".join(result.stdout.split()), result.stdout
    assert "no association with EDGE@127.0.0.1" in echo.stdout
    assert "association failed" in send.stdout
    missing = suite.edge("echo", *tls[:-1], str(tmp_path / "nowhere.pem"), check=False)
    assert missing.returncode == 2 and "no such file" in missing.stdout


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
