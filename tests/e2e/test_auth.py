"""Users, tokens and the role policy end to end: real HTTP against a running suite.

The table below is the policy as the README states it; each role (and no token, and a forged
token) is sent to each API route and must get exactly the expected status."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from edge.cli.devsuite import DevSuite
from edge.listener.multipart import parse_media_type
from tests.e2e.conftest import Client, start_suite
from tests.unit.dicomfiles import add_pixels, make_dataset, write_part10

pytestmark = pytest.mark.e2e

STUDY, SERIES, SOP = generate_uid(), generate_uid(), generate_uid()
ROLES = ("admin", "radiologist", "him", "requester", "service")
# Who may do what (README, "Users, roles and tokens").
ALLOWED = {
    "search": {"admin", "radiologist", "service"},
    "retrieve": {"admin", "radiologist", "service"},
    "store": {"admin", "radiologist", "service"},
    "changes": {"admin", "service"},
    "admin": {"admin"},
    "open": {None, *ROLES},
}


@dataclass(frozen=True)
class Api:
    name: str
    service: str  # the DevSuite port attribute
    method: str
    path: str
    permission: str
    ok: int = 200
    accept: str | None = None


INSTANCE = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
APIS = (
    Api("qido studies", "http_port", "GET", "/dicom-web/studies", "search"),
    Api("qido series", "http_port", "GET", "/dicom-web/series", "search"),
    Api("qido instances", "http_port", "GET", "/dicom-web/instances", "search"),
    Api("qido study series", "http_port", "GET", f"/dicom-web/studies/{STUDY}/series", "search"),
    Api(
        "qido study instances",
        "http_port",
        "GET",
        f"/dicom-web/studies/{STUDY}/instances",
        "search",
    ),
    Api(
        "qido series instances",
        "http_port",
        "GET",
        f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances",
        "search",
    ),
    Api(
        "wado study",
        "http_port",
        "GET",
        f"/dicom-web/studies/{STUDY}",
        "retrieve",
        accept='multipart/related; type="application/dicom"; transfer-syntax=*',
    ),
    Api("wado metadata", "http_port", "GET", f"/dicom-web/studies/{STUDY}/metadata", "retrieve"),
    Api("wado instance metadata", "http_port", "GET", INSTANCE + "/metadata", "retrieve"),
    Api("wado frames", "http_port", "GET", INSTANCE + "/frames/1", "retrieve"),
    Api("wado rendered", "http_port", "GET", INSTANCE + "/rendered", "retrieve"),
    Api("wado thumbnail", "http_port", "GET", f"/dicom-web/studies/{STUDY}/thumbnail", "retrieve"),
    Api(
        "wado-uri",
        "http_port",
        "GET",
        f"/dicom-web/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={SOP}"
        "&contentType=application/dicom",
        "retrieve",
    ),
    Api("stow", "http_port", "POST", "/dicom-web/studies", "store"),
    Api("stow study", "http_port", "POST", f"/dicom-web/studies/{STUDY}", "store"),
    Api("change feed", "ingestion_port", "GET", "/api/changes?after=0&limit=5", "changes"),
    Api("scrub", "storage_port", "POST", "/api/scrub", "admin"),
    Api("unknown api", "http_port", "GET", "/api/nothing-here", "admin", ok=404),
    Api("jwks", "auth_port", "GET", "/api/auth/jwks", "open"),
    Api("token endpoint", "auth_port", "POST", "/api/auth/token", "open", ok=400),
)
PORTS = ("http_port", "ingestion_port", "storage_port", "auth_port", "query_port", "retrieval_port")


def expected(api: Api, role: str | None) -> int:
    if role in ALLOWED[api.permission]:
        return api.ok
    return 401 if role is None else 403


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSuite]:
    started = start_suite(tmp_path_factory.mktemp("auth"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def instance(suite: DevSuite, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One stored and catalogued instance the retrieve routes can find."""
    ds = make_dataset(StudyInstanceUID=STUDY, SeriesInstanceUID=SERIES, SOPInstanceUID=SOP)
    path = write_part10(tmp_path_factory.mktemp("dcm") / "one.dcm", add_pixels(ds, 16, 16))
    result = Client(suite).storescu([path])
    assert result.returncode == 0, result.stderr
    assert Client(suite).wait_for_instances(1) == 1
    return Path(path).read_bytes()


def stow_body(data: bytes) -> tuple[bytes, str]:
    boundary = "auth-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def call(suite: DevSuite, api: Api, headers: dict[str, str], instance: bytes) -> httpx.Response:
    url = f"http://127.0.0.1:{getattr(suite, api.service)}{api.path}"
    headers = dict(headers)
    if api.accept:
        headers["Accept"] = api.accept
    if api.method == "POST" and api.path.startswith("/dicom-web"):
        body, content_type = stow_body(instance)
        headers["Content-Type"] = content_type
        return httpx.post(url, content=body, headers=headers, timeout=60)
    return httpx.request(api.method, url, headers=headers, timeout=60)


@pytest.mark.parametrize("role", [None, *ROLES], ids=lambda r: r or "no-token")
@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
def test_each_role_gets_exactly_its_status_on_each_api(
    suite: DevSuite, instance: bytes, api: Api, role: str | None
) -> None:
    headers = suite.auth_headers(role) if role else {}
    response = call(suite, api, headers, instance)
    assert response.status_code == expected(api, role), response.text[:300]
    if response.status_code in (401, 403):
        assert parse_media_type(response.headers["content-type"])[0] == "application/problem+json"
    if response.status_code == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("port", PORTS)
def test_health_and_metrics_stay_open(suite: DevSuite, port: str) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        response = httpx.get(f"http://127.0.0.1:{getattr(suite, port)}{path}", timeout=30)
        assert response.status_code == 200, (path, response.text[:200])


def test_forged_and_tampered_tokens_are_refused(suite: DevSuite) -> None:
    url = f"http://127.0.0.1:{suite.http_port}/dicom-web/studies"
    head, body, signature = suite.token("requester").split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["role"] = "admin"
    raised = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for token in (f"{head}.{raised}.{signature}", "not.a.token", suite.token("admin") + "x"):
        response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_jwks_holds_public_keys_only(suite: DevSuite) -> None:
    keys = httpx.get(f"{suite.auth_url}/api/auth/jwks", timeout=30).json()["keys"]
    assert keys and all(k["alg"] == "ES256" and "d" not in k for k in keys)


def test_edge_token_prints_a_usable_token_on_its_last_line(suite: DevSuite) -> None:
    result = suite.edge("token", "--user", "admin", "--password", suite.admin_password)
    token = result.stdout.strip().splitlines()[-1]
    response = httpx.get(
        f"http://127.0.0.1:{suite.storage_port}/metrics",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200
    scrub = httpx.post(
        f"http://127.0.0.1:{suite.storage_port}/api/scrub",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert scrub.status_code == 200
    refused = suite.edge("token", "--user", "admin", "--password", "wrong-password", check=False)
    assert refused.returncode == 1 and "invalid_grant" in refused.stderr


def token_request(suite: DevSuite, **fields: str) -> httpx.Response:
    return httpx.post(f"{suite.auth_url}/api/auth/token", data=fields, timeout=60)


def test_user_commands_and_lockout_after_repeated_failures(suite: DevSuite) -> None:
    suite.edge("user", "add", "lockme", "--role", "radiologist", "--password", "right-password-1")
    assert "lockme" in suite.edge("user", "list").stdout
    dup = suite.edge(
        "user", "add", "lockme", "--role", "admin", "--password", "x" * 12, check=False
    )
    assert dup.returncode == 1
    short = suite.edge("user", "add", "tiny", "--role", "admin", "--password", "short", check=False)
    assert short.returncode == 2
    for _ in range(5):
        wrong = token_request(suite, grant_type="password", username="lockme", password="nope-nope")
        assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
        assert wrong.headers["cache-control"] == "no-store"
    # Locked now: the right password is refused too, with the same answer.
    locked = token_request(
        suite, grant_type="password", username="lockme", password="right-password-1"
    )
    assert (locked.status_code, locked.json()["error"]) == (400, "invalid_grant")
    assert "locked until" in suite.edge("user", "list").stdout
    suite.edge("user", "unlock", "lockme")
    suite.edge("user", "passwd", "lockme", "--password", "another-password-2")
    ok = token_request(
        suite, grant_type="password", username="lockme", password="another-password-2"
    )
    assert ok.status_code == 200 and ok.json()["token_type"] == "Bearer"
    suite.edge("user", "lock", "lockme")
    again = token_request(
        suite, grant_type="password", username="lockme", password="another-password-2"
    )
    assert again.status_code == 400
    suite.edge("user", "remove", "lockme")


def test_client_credentials_for_service_users(suite: DevSuite) -> None:
    name, secret = suite.user("service")
    basic = base64.b64encode(f"{name}:{secret}".encode()).decode()
    response = httpx.post(
        f"{suite.auth_url}/api/auth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
        timeout=60,
    )
    assert response.status_code == 200
    changes = httpx.get(
        f"http://127.0.0.1:{suite.ingestion_port}/api/changes",
        headers={"Authorization": f"Bearer {response.json()['access_token']}"},
        timeout=30,
    )
    assert changes.status_code == 200
    name, secret = suite.user("radiologist")
    human = token_request(
        suite, grant_type="client_credentials", client_id=name, client_secret=secret
    )
    assert (human.status_code, human.json()["error"]) == (400, "unauthorized_client")
    unknown = token_request(suite, grant_type="refresh_token", refresh_token="x")
    assert unknown.json()["error"] == "unsupported_grant_type"


def qido_status(suite: DevSuite, token: str) -> httpx.Response:
    return httpx.get(
        f"http://127.0.0.1:{suite.http_port}/dicom-web/studies",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def refused_within(suite: DevSuite, token: str, seconds: float = 10.0) -> httpx.Response:
    """The first 401 DICOMweb answers ``token`` within ``seconds`` (or the last answer)."""
    deadline = time.monotonic() + seconds
    while True:
        response = qido_status(suite, token)
        if response.status_code == 401 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_tokens_are_refused_within_seconds_of_a_revocation_and_new_ones_work(
    suite: DevSuite,
) -> None:
    name, first, second = "revokeme", "revoke-password-1", "revoke-password-2"
    suite.edge("user", "add", name, "--role", "radiologist", "--password", first)

    def fresh(password: str) -> str:
        response = token_request(suite, grant_type="password", username=name, password=password)
        assert response.status_code == 200, response.text
        token = str(response.json()["access_token"])
        assert qido_status(suite, token).status_code in (200, 204)  # 204: no study yet
        return token

    # Revoked by the CLI: the same 401 problem as an expired token; a new token works.
    token = fresh(first)
    suite.edge("user", "revoke", name)
    refused = refused_within(suite, token)
    assert refused.status_code == 401, refused.text
    assert refused.json()["detail"] == "token revoked"
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    # By the admin API (admin only), audited as a user change.
    token = fresh(first)
    route = f"{suite.auth_url}/api/auth/users/{name}/revoke"
    assert httpx.post(route, headers=suite.auth_headers("radiologist")).status_code == 403
    assert httpx.post(route, headers=suite.auth_headers("admin")).status_code == 200
    assert refused_within(suite, token).status_code == 401
    missing = httpx.post(
        f"{suite.auth_url}/api/auth/users/nobody/revoke", headers=suite.auth_headers()
    )
    assert missing.status_code == 404
    # A new password.
    token = fresh(first)
    suite.edge("user", "passwd", name, "--password", second)
    assert refused_within(suite, token).status_code == 401
    # Locked by an admin, then unlocked.
    token = fresh(second)
    suite.edge("user", "lock", name)
    assert refused_within(suite, token).status_code == 401
    suite.edge("user", "unlock", name)
    # A new role: the token naming the old one is refused, not just under-privileged.
    token = fresh(second)
    suite.edge("user", "role", name, "him")
    assert refused_within(suite, token).status_code == 401
    suite.edge("user", "role", name, "radiologist")
    # Locked out by failed logins (auth itself announces it).
    token = fresh(second)
    for _ in range(5):
        token_request(suite, grant_type="password", username=name, password="wrong-password")
    assert refused_within(suite, token).status_code == 401
    suite.edge("user", "remove", name)

    def changes() -> list[str]:
        audit = httpx.get(
            f"{suite.auth_url}/api/audit?type=audit.security-alert&limit=1000",
            headers=suite.auth_headers("admin"),
            timeout=30,
        )
        return [
            detail["value"]
            for row in audit.json()["events"]
            for obj in row["event"]["data"].get("objects", [])
            if obj["object_id"] == name
            for detail in obj.get("details", [])
            if detail["type"] == "change"
        ]

    deadline = time.monotonic() + 15
    while changes().count("revoked") < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    recorded = changes()
    assert recorded.count("revoked") == 2 and "password" in recorded and "locked" in recorded


def test_no_password_or_token_in_any_log_line(suite: DevSuite) -> None:
    secrets = [suite.admin_password, *(suite.user(role)[1] for role in ROLES)]
    secrets += [suite.token(role) for role in ROLES]
    log = suite.log_path.read_text(errors="replace")
    assert "login succeeded for" in log  # the log is the one the services write
    for secret in secrets:
        assert secret not in log
        assert secret.split(".")[-1] not in log  # not even a token's signature
