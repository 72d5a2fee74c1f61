"""Deployment files: offline validation (deploy/validate.sh) and invariants parsed from YAML.

Needs check-jsonschema and kubernetes-validate next to the running interpreter (the dev extra)
and kubectl on PATH; a missing tool is a failure, not a skip.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
SERVICES = {
    "listener": 8080,
    "ingestion": 8081,
    "storage": 8082,
    "auth": 8083,
    "query": 8084,
    "retrieval": 8085,
}
DICOM_PORT, DICOM_TLS_PORT = 11112, 2762
LISTENER_PORTS = {DICOM_PORT, DICOM_TLS_PORT, SERVICES["listener"]}
# The listener's TLS files (ListenerSettings.tls_*_file); the CRL is optional.
TLS_FILES = ("EDGE_TLS_CERT_FILE", "EDGE_TLS_KEY_FILE", "EDGE_TLS_CA_FILE")
# What each DICOM TLS workload needs mounted: the listener serves TLS; retrieval's C-MOVE
# sub-operations connect out (RetrievalSettings.tls_*_file), its client certificate optional.
TLS_WORKLOADS = {"listener": TLS_FILES, "retrieval": ("EDGE_TLS_CA_FILE",)}
PLACEHOLDER = re.compile(r"change[-_]me", re.IGNORECASE)
SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|PRIVATE|CREDENTIAL", re.IGNORECASE)
URL_WITH_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:([^/\s@]+)@", re.IGNORECASE)


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.fail(f"{name} not found next to {sys.executable}: pip install '.[dev]'")
    return str(path)


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl not found on PATH (CI must install it; see deploy/validate.sh)")
    return path


def _tool_env() -> dict[str, str]:
    return {
        **os.environ,
        "CHECK_JSONSCHEMA": _tool("check-jsonschema"),
        "KUBERNETES_VALIDATE": _tool("kubernetes-validate"),
        "KUBECTL": _kubectl(),
        "PYTHON": sys.executable,
    }


def _validate(deploy_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "bash",
            str(deploy_dir / "validate.sh"),
            str(deploy_dir / "k8s"),
            str(deploy_dir / "compose.yaml"),
        ],
        env=_tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _of_kind(manifests: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in manifests if d["kind"] == kind}


# --- the offline validation itself ----------------------------------------------------------


def test_validate_script_passes() -> None:
    result = _validate(DEPLOY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


BREAKAGES = {
    # file, text that must be present, replacement, why validation must now fail
    "unknown field in a Deployment": (
        "k8s/listener.yaml",
        "          readinessProbe:",
        "          readinessProbes:",
    ),
    "mistyped apiVersion (kubernetes-validate only warns)": (
        "k8s/storage.yaml",
        "apiVersion: apps/v1\nkind: Deployment",
        "apiVersion: apps/v2\nkind: Deployment",
    ),
    "KEDA metadata value not a string": ("k8s/ingestion.yaml", 'value: "100"', "value: 100"),
    "unknown field in a ScaledObject": (
        "k8s/ingestion.yaml",
        "  minReplicaCount: 1",
        "  minReplicas: 1",
    ),
    "custom kind without a schema": (
        "k8s/ingestion.yaml",
        "kind: TriggerAuthentication",
        "kind: ClusterTriggerAuthentication",
    ),
    "unknown field in compose": (
        "compose.yaml",
        "  stop_grace_period: 30s",
        "  stop_grace_periods: 30s",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_validate_script_rejects(breakage: str, tmp_path: Path) -> None:
    rel, old, new = BREAKAGES[breakage]
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    target = copy / rel
    text = target.read_text()
    assert old in text, f"{rel} no longer contains {old!r}: update this test"
    target.write_text(text.replace(old, new, 1))
    result = _validate(copy)
    assert result.returncode != 0, f"{breakage} passed validation:\n{result.stdout}{result.stderr}"


# --- Kubernetes invariants ------------------------------------------------------------------


def test_exactly_the_current_services_are_deployed(manifests: list[dict]) -> None:
    assert set(_of_kind(manifests, "Deployment")) == {f"edge-{s}" for s in SERVICES}
    assert {d["metadata"].get("namespace") for d in manifests if d["kind"] != "Namespace"} == {
        "dicom-edge"
    }


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_deployment_is_probed_limited_and_unprivileged(manifests: list[dict], service: str) -> None:
    dep = _of_kind(manifests, "Deployment")[f"edge-{service}"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in pod["containers"]:
        assert c["args"] == ["run", service]
        http = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
        assert http == SERVICES[service]
        assert {"name": "EDGE_HTTP_PORT", "value": str(http)} in c["env"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["port"] in ("http", http)
        assert {"cpu", "memory"} <= set(c["resources"]["limits"])
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])
        sc = c["securityContext"]
        assert sc.get("runAsNonRoot", pod["securityContext"]["runAsNonRoot"]) is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]]
    if service == "listener":
        assert {p["containerPort"] for p in pod["containers"][0]["ports"]} == LISTENER_PORTS


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_and_pdb_select_the_pods(manifests: list[dict], service: str) -> None:
    name = f"edge-{service}"
    labels = _of_kind(manifests, "Deployment")[name]["spec"]["template"]["metadata"]["labels"]
    svc = _of_kind(manifests, "Service")[name]
    pdb = _of_kind(manifests, "PodDisruptionBudget")[name]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert SERVICES[service] in {p["port"] for p in svc["spec"]["ports"]}
    # every Service port reaches a named port of the container, on the same number
    (container,) = _of_kind(manifests, "Deployment")[name]["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in svc["spec"]["ports"]:
        assert named.get(port["targetPort"]) == port["port"], port
    if service == "listener":
        assert {p["port"] for p in svc["spec"]["ports"]} == LISTENER_PORTS


@pytest.mark.parametrize("service", sorted(TLS_WORKLOADS))
def test_tls_files_are_read_only_mounts_of_the_workloads_own_tls_secret(
    manifests: list[dict], service: str
) -> None:
    pod = _of_kind(manifests, "Deployment")[f"edge-{service}"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    tls_env = {k: v for k, v in env.items() if k.startswith("EDGE_TLS_") and k.endswith("_FILE")}
    assert set(TLS_WORKLOADS[service]) <= set(tls_env)
    volumes = {v["name"]: v for v in pod["volumes"]}
    secrets = _of_kind(manifests, "Secret")
    for name, path in tls_env.items():
        folder, _, key = path.rpartition("/")
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
        assert mount["readOnly"] is True, name
        assert "subPath" not in mount  # a subPath mount never sees the Secret's updates
        source = volumes[mount["name"]]["secret"]
        assert source["defaultMode"] & 0o007 == 0, "TLS key readable by others"
        secret = secrets[source["secretName"]]
        assert key in secret.get("stringData", {}) | secret.get("data", {}), f"{name}: no {key}"
    tls_secret = secrets[volumes[mount["name"]]["secret"]["secretName"]]
    assert tls_secret["type"] == "kubernetes.io/tls"  # cert-manager's layout
    if "EDGE_TLS_CERT_FILE" in env:
        assert env["EDGE_TLS_CERT_FILE"].endswith("/tls.crt")
        assert env["EDGE_TLS_KEY_FILE"].endswith("/tls.key")
    # a workload's TLS key is in its own pods only: no other workload mounts its Secret
    for dep_name, dep in _of_kind(manifests, "Deployment").items():
        if dep_name != f"edge-{service}":
            for volume in dep["spec"]["template"]["spec"].get("volumes", []):
                assert volume.get("secret", {}).get("secretName") != tls_secret["metadata"]["name"]


def test_listener_tls_port_is_configured(manifests: list[dict]) -> None:
    (config,) = _of_kind(manifests, "ConfigMap").values()
    assert config["data"]["EDGE_TLS_PORT"] == str(DICOM_TLS_PORT)


def test_listener_scales_on_cpu(manifests: list[dict]) -> None:
    (hpa,) = _of_kind(manifests, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "edge-listener",
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in _of_kind(manifests, "Deployment")["edge-listener"]["spec"]


def test_ingestion_scales_on_its_queue_with_secret_auth(manifests: list[dict]) -> None:
    (so,) = _of_kind(manifests, "ScaledObject").values()
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"]["name"] == "edge-ingestion"
    assert so["spec"]["minReplicaCount"] >= 1  # the study-stability timer must keep running
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == "ingestion.instance-received"
    auth = _of_kind(manifests, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    secrets = _of_kind(manifests, "Secret")
    refs = auth["spec"]["secretTargetRef"]
    assert {r["parameter"] for r in refs} == {"host"}
    for ref in refs:
        assert ref["key"] in secrets[ref["name"]].get("stringData", {}) | secrets[ref["name"]].get(
            "data", {}
        )
    assert "replicas" not in _of_kind(manifests, "Deployment")["edge-ingestion"]["spec"]


def test_network_policies(manifests: list[dict]) -> None:
    policies = list(_of_kind(manifests, "NetworkPolicy").values())
    assert any(
        p["spec"]["podSelector"] == {}
        and p["spec"]["policyTypes"] == ["Ingress"]
        and not p["spec"].get("ingress")
        for p in policies
    ), "no default-deny ingress"
    listener = [
        p
        for p in policies
        if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        == "edge-listener"
    ]
    open_rules = [r for p in listener for r in p["spec"].get("ingress", []) if "from" not in r]
    assert {port["port"] for r in open_rules for port in r["ports"]} == LISTENER_PORTS


def test_migration_job(manifests: list[dict]) -> None:
    job = _of_kind(manifests, "Job")["edge-migrate"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["args"] == ["migrate"]
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])


def test_configmap_is_production_and_holds_no_secrets(manifests: list[dict]) -> None:
    (cm,) = _of_kind(manifests, "ConfigMap").values()
    assert cm["data"]["EDGE_ENVIRONMENT"] == "production"
    for key, value in cm["data"].items():
        assert not SECRET_NAME.search(key) and not key.endswith("_KEY"), key
        assert not URL_WITH_CREDENTIALS.search(value), key


def test_secrets_are_placeholders(manifests: list[dict]) -> None:
    secrets = _of_kind(manifests, "Secret")
    assert secrets, "no Secret in the base"
    for name, secret in secrets.items():
        values = dict(secret.get("stringData", {}))
        values |= {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        for key, value in values.items():
            match = URL_WITH_CREDENTIALS.search(value)
            secret_part = match.group(1) if match else value
            assert secret_part == "CHANGE_ME", f"{name}.{key} is not a CHANGE_ME placeholder"


def test_no_literal_secret_in_any_manifest(manifests: list[dict]) -> None:
    def strings(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from strings(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from strings(v, f"{path}[{i}]")
        elif isinstance(node, str):
            yield path, node

    for doc in manifests:
        if doc["kind"] == "Secret":
            continue
        for path, value in strings(doc):
            match = URL_WITH_CREDENTIALS.search(value)
            assert not match, f"{doc['kind']}/{doc['metadata']['name']}{path} embeds credentials"
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for env in c.get("env", []):
                assert not (SECRET_NAME.search(env["name"]) and "value" in env), env["name"]


# --- compose invariants ---------------------------------------------------------------------

# A healthcheck may be disabled only where it cannot or need not run, with a reason in compose.
HEALTHCHECK_EXEMPT = {
    "migrate": "one-shot job, tracked by its exit code",
    "dev-pki": "one-shot job, tracked by its exit code",
    "otel-collector": "image FROM scratch, nothing to probe with",
    "jaeger": "minimal image without an HTTP client",
}


def test_every_compose_service_has_a_healthcheck(compose: dict) -> None:
    for name, svc in compose["services"].items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"
        if svc["healthcheck"].get("disable"):
            assert name in HEALTHCHECK_EXEMPT, f"{name} disables its healthcheck"
        else:
            assert svc["healthcheck"]["test"], name


def test_compose_runs_every_service_after_migrate(compose: dict) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["migrate"]
    for name, port in SERVICES.items():
        svc = services[name]
        assert svc["command"] == ["run", name]
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert svc["environment"]["EDGE_ENVIRONMENT"] == "dev"
        assert svc["environment"]["EDGE_HTTP_PORT"] == str(port)
        assert f"{port}/readyz" in " ".join(svc["healthcheck"]["test"])
        assert any(str(p).endswith(f":{port}") for p in svc["ports"])
    assert {int(str(p).rpartition(":")[2]) for p in services["listener"]["ports"]} == LISTENER_PORTS
    assert {"rabbitmq", "postgres", "minio", "otel-collector", "jaeger"} <= set(services)
    assert "management" in services["rabbitmq"]["image"]
    for name, svc in services.items():
        assert "image" in svc and not svc["image"].endswith(":latest"), name


@pytest.mark.parametrize("service", sorted(TLS_WORKLOADS))
def test_compose_tls_files_come_read_only_from_the_dev_pki_job(compose: dict, service: str) -> None:
    from edge.common.tls import DevPki

    services = compose["services"]
    svc = services[service]
    env = svc["environment"]
    if service == "listener":
        assert env["EDGE_TLS_PORT"] == str(DICOM_TLS_PORT)
    mounts = {}
    for volume in svc["volumes"]:
        source, target, mode = volume.split(":")
        mounts[target] = (source, mode)
    (job,) = [n for n, s in services.items() if s.get("entrypoint") and "ensure_dev_pki" in str(s)]
    (job_mount,) = services[job]["volumes"]
    job_volume, _, job_folder = job_mount.partition(":")
    made = DevPki(Path(job_folder))
    tls_env = {k for k in env if k.startswith("EDGE_TLS_") and k.endswith("_FILE")}
    assert set(TLS_WORKLOADS[service]) <= tls_env
    for name in sorted(tls_env):
        folder, _, file = env[name].rpartition("/")
        assert mounts[folder] == (job_volume, "ro"), f"{name}: {folder} is not a read-only mount"
        # the job makes the file the variable names, and lets the services' user own it
        assert Path(job_folder) / file in {made.ca, made.server_cert, made.server_key}, name
    assert job_volume in compose["volumes"]
    assert svc["depends_on"][job]["condition"] == "service_completed_successfully"
    assert "ca_key" not in services[job]["command"][0]  # the CA's key stays root's


def _env_file_values() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "dev.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_compose_secrets_are_dev_placeholders(compose: dict) -> None:
    for key, value in _env_file_values().items():
        match = URL_WITH_CREDENTIALS.search(value)
        if SECRET_NAME.search(key) or key.endswith("SECRET_KEY"):
            assert PLACEHOLDER.search(value), f"dev.env {key} is not a change-me placeholder"
        if match:
            assert PLACEHOLDER.search(match.group(1)), f"dev.env {key} embeds a real password"
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            assert not SECRET_NAME.search(key), f"{name}: secret {key} inline, use dev.env"
            assert not URL_WITH_CREDENTIALS.search(str(value)), f"{name}: {key} has credentials"
        for env_file in svc.get("env_file", []):
            path = env_file["path"] if isinstance(env_file, dict) else env_file
            assert (DEPLOY / path).is_file(), f"{name}: env_file {path} missing"


# --- image ----------------------------------------------------------------------------------


def test_dockerfile_runs_edge_as_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert froms and all(f == "python:3.11-slim" for f in froms)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert re.search(r"^ENTRYPOINT \[\"edge\"\]$", text, re.MULTILINE)
    assert "pip install ." in text
    # .dockerignore is an allow-list: everything out, then only what `pip install .` needs.
    rules = [
        r.strip()
        for r in (REPO / ".dockerignore").read_text().splitlines()
        if r.strip() and not r.lstrip().startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert {"pyproject.toml", "libs", "services"} <= allowed
    assert not allowed & {"tests", "deploy", ".venv", ".git", "."}


def test_every_service_edge_up_runs_is_deployed() -> None:
    from edge.cli.supervisor import SERVICES as RUN_BY_EDGE_UP

    assert set(SERVICES) == set(RUN_BY_EDGE_UP)
