"""deploy/kubernetes/gateway: valid against the Kubernetes schemas, and a gateway that starts.

The same schema checks as for the service's manifests, plus what only the gateway's own code can
tell: the ConfigMap's ``gateway.toml`` passes the gateway's configuration loader and its
credential and TLS checks once every file it names is where the manifests mount it (with
throwaway keys and certificates), and a gateway started from it answers the probes the way the
kubelet asks (HTTPS, no certificate check, no client certificate).
"""

from __future__ import annotations

import math
import re
import secrets
import tomllib
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from fdpush.gateway import make_test_pki
from fdpush.gateway.production import GatewayConfig, ProductionGatewayThread, load_config
from fdpush.gateway.production.dispatch import check_credentials
from fdpush.gateway.runner import TlsFiles, check_tls_files
from fdpush.testing import MockFcm, make_apns_key

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes" / "gateway"


def resources() -> list[dict[str, Any]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def one(kind: str) -> dict[str, Any]:
    (resource,) = [r for r in resources() if r["kind"] == kind]
    return resource


def container() -> dict[str, Any]:
    (only,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = only
    return found


def volumes() -> dict[str, dict[str, Any]]:
    pod = one("Deployment")["spec"]["template"]["spec"]
    return {volume["name"]: volume for volume in pod["volumes"]}


def mounts() -> dict[str, dict[str, Any]]:
    """The container's mounts by mount path."""
    return {mount["mountPath"]: mount for mount in container()["volumeMounts"]}


def toml_text() -> str:
    text: str = one("ConfigMap")["data"]["gateway.toml"]
    return text


def config_path() -> str:
    args = container()["args"]
    assert args[:2] == ["gateway", "--config"]
    path: str = args[2]
    return path


# Keys of gateway.toml that name files (as the loader resolves them).
FILE_KEYS = {
    "cert",
    "key",
    "client_ca",
    "ca_file",
    "key_file",
    "certificate",
    "certificate_key",
    "service_account",
    "log_reference_key_file",
    "rejection_memory_file",
}


def named_files(node: object) -> list[tuple[str, str]]:
    """Every (key, file name) the configuration names, at any depth."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            if key in FILE_KEYS:
                found.append((key, value))
            else:
                found += named_files(value)
        return found
    if isinstance(node, list):
        return [pair for item in node for pair in named_files(item)]
    return []


def mount_of(path: str) -> dict[str, Any]:
    """The volume mount a file of the container lies in (the longest matching mount path)."""
    candidates = [m for m in mounts() if path.startswith(m.rstrip("/") + "/")]
    assert candidates, f"{path} is in no mounted volume"
    return mounts()[max(candidates, key=len)]


def test_every_resource_matches_the_kubernetes_schema() -> None:
    version = kubernetes_validate.latest_version()
    kinds = set()
    for resource in resources():
        kubernetes_validate.validate(resource, version, strict=True)
        kinds.add(resource["kind"])
    assert kinds == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}


def test_the_validator_rejects_a_misplaced_field() -> None:
    deployment = one("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"][
        "schema"
    ] = "HTTPS"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_deployment_runs_the_gateway_non_root_with_https_probes() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_user()
    gateway = container()
    assert gateway["securityContext"]["allowPrivilegeEscalation"] is False
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"cpu", "memory"} <= set(gateway["resources"]["requests"])
    ports = {port["name"]: port["containerPort"] for port in gateway["ports"]}
    listen = tomllib.loads(toml_text())["listen"]
    assert ports == {"https": listen["port"]}
    assert listen["host"] in ("0.0.0.0", "::")  # loopback would hide it from probes and peers
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert gateway[probe]["httpGet"]["port"] in ports
        assert gateway[probe]["httpGet"]["scheme"] == "HTTPS"  # the gateway serves TLS only
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"
    assert int(annotations["prometheus.io/port"]) == listen["port"]


def test_requests_in_flight_are_answered_before_the_pod_is_killed() -> None:
    """Grace: the preStop pause, then uvicorn's graceful stop (answer_within_seconds + 2 s)."""
    pod = one("Deployment")["spec"]["template"]["spec"]
    answer_within = tomllib.loads(toml_text())["delivery"]["answer_within_seconds"]
    pause = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + math.ceil(answer_within) + 2


def test_service_and_budget_select_the_gateway_pods() -> None:
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    names = {port["name"] for port in container()["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= names
    assert (
        one("PodDisruptionBudget")["spec"]["minAvailable"] < one("Deployment")["spec"]["replicas"]
    )


def test_configmap_is_the_file_the_command_names_and_holds_no_secret() -> None:
    mount = mount_of(config_path())
    volume = volumes()[mount["name"]]
    assert volume["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    assert Path(config_path()).name in one("ConfigMap")["data"]
    assert "-----BEGIN" not in toml_text()
    assert not re.search(r"private_key|password|secret\s*=", toml_text())
    assert tomllib.loads(toml_text())["mode"] == "production"


def test_every_named_file_is_mounted_from_the_secret_secrets_md_names() -> None:
    """Credentials come from Secrets; the rejection memory is in a writable volume of its own."""
    guide = (MANIFESTS / "secrets.md").read_text()
    rows = {
        row[0].strip("` "): row[1]
        for row in (line.split("|")[1:] for line in guide.splitlines() if line.startswith("| `"))
    }
    files = named_files(tomllib.loads(toml_text()))
    assert {key for key, _ in files} >= {"cert", "key", "client_ca", "rejection_memory_file"}
    for key, name in files:
        mount = mount_of(name)
        volume = volumes()[mount["name"]]
        if key == "rejection_memory_file":
            assert "emptyDir" in volume
            assert not mount.get("readOnly", False)
            continue
        assert mount["readOnly"] is True, name
        secret = volume["secret"]["secretName"]
        assert secret in rows, f"{secret} is not in secrets.md"
        assert f"`{Path(name).name}`" in rows[secret], f"{name}: key not listed for {secret}"


def image_user() -> int:
    users = re.findall(r"^USER\s+(\d+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    return int(users[-1])


# --- the configuration, for real ---------------------------------------------------------------


@pytest.fixture(scope="module")
def placed_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ConfigMap's gateway.toml with each mount moved under a scratch folder, and throwaway
    credentials at the names it gives (the contents a Secret would hold)."""
    root = tmp_path_factory.mktemp("pod")
    text = toml_text()
    moved: dict[str, Path] = {}
    for mount_path in mounts():
        moved[mount_path] = root / mount_path.strip("/")
        moved[mount_path].mkdir(parents=True)
    longest_first = sorted(moved, key=len, reverse=True)
    pattern = '"(' + "|".join(re.escape(m) for m in longest_first) + ")/"
    text = re.sub(pattern, lambda found: f'"{moved[found[1]]}/', text)
    pki = make_test_pki(root / "pki")
    with MockFcm(pki) as fcm:  # only for its service-account writer; no request reaches it
        for key, name in named_files(tomllib.loads(text)):
            target = Path(name)
            if key in ("cert", "certificate"):
                target.write_bytes(pki.server_cert.read_bytes())
            elif key in ("key", "certificate_key"):
                target.write_bytes(pki.server_key.read_bytes())
            elif key in ("client_ca", "ca_file"):
                target.write_bytes(pki.ca_cert.read_bytes())
            elif key == "key_file":
                written = make_apns_key(root / "pki", team_id="DEF123GHIJ", key_id="ABC123DEFG")
                target.write_bytes(written.path.read_bytes())
            elif key == "service_account":
                target.write_bytes(fcm.add_service_account(root / "pki", "example").read_bytes())
            elif key == "log_reference_key_file":
                target.write_bytes(secrets.token_bytes(32))
    configured = Path(config_path())
    placed = moved[str(configured.parent)] / configured.name
    placed.write_text(text)
    return placed


def test_the_configuration_passes_the_gateways_checks(placed_config: Path) -> None:
    config = load_config(placed_config)
    check_credentials(config)
    listen = config.listen
    assert listen.cert is not None and listen.key is not None
    check_tls_files(TlsFiles(listen.cert, listen.key, listen.client_ca))
    assert config.mode == "production"
    assert config.apps()
    assert config.delivery.rejection_memory_file is not None


def test_the_check_notices_a_missing_credential(placed_config: Path, tmp_path: Path) -> None:
    broken = tmp_path / "gateway.toml"
    text = placed_config.read_text()
    broken.write_text(re.sub(r'(service_account = ")[^"]*', r"\1/nonexistent/sa.json", text))
    with pytest.raises(ValueError, match="service_account"):
        load_config(broken)


def test_a_gateway_from_it_answers_the_kubelets_probes(placed_config: Path) -> None:
    """Started from the ConfigMap's configuration (on loopback): the probes and the scrape, over
    HTTPS without a client certificate, get 200; the rejection memory file is made."""
    config = load_config(placed_config)
    local = config.model_copy(
        update={"listen": config.listen.model_copy(update={"host": "127.0.0.1"})}
    )
    assert isinstance(local, GatewayConfig)
    # Like the kubelet: no check of the server certificate, no client certificate.
    with (
        ProductionGatewayThread(local) as gateway,
        httpx.Client(base_url=gateway.url, verify=False, timeout=5) as kubelet,
    ):
        probes = container()
        for probe in ("livenessProbe", "readinessProbe"):
            answer = kubelet.get(probes[probe]["httpGet"]["path"])
            assert answer.status_code == 200, (probe, answer.text)
        metrics = kubelet.get("/metrics")
        assert "fdpush_gateway_rejection_memory_size" in metrics.text
        assert config.delivery.rejection_memory_file is not None
        assert config.delivery.rejection_memory_file.exists()
