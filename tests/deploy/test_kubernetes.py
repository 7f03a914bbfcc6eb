"""deploy/kubernetes: valid against the Kubernetes schemas, and consistent with the image.

``kubernetes-validate`` checks every resource strictly (unknown fields are errors) against the
newest Kubernetes version it knows; the other tests check what a schema cannot: that probes,
Services and disruption budgets point at what exists, and that secrets stay out of the
ConfigMap.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fdpush.config import Settings

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"


def resources() -> list[dict[str, Any]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [r for r in resources() if r["kind"] == kind]


def containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = resource["spec"]["template"]["spec"]["containers"]
    return spec


def test_every_resource_matches_the_kubernetes_schema() -> None:
    version = kubernetes_validate.latest_version()
    kinds = set()
    for resource in resources():
        kubernetes_validate.validate(resource, version, strict=True)
        kinds.add(resource["kind"])
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "Job",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }


def test_the_validator_rejects_a_misplaced_field() -> None:
    deployment = by_kind("Deployment")[0]
    containers(deployment)[0]["livenessprobe"] = {"httpGet": {"path": "/health/live"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.parametrize("name", ["fdpush-api", "fdpush-worker"])
def test_deployments_probe_health_and_request_resources(name: str) -> None:
    (deployment,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == name]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_user()
    (container,) = containers(deployment)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    secrets = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for env in container.get("env", [])
        if "valueFrom" in env
    }
    assert "fdpush-master-key" in secrets
    assert container["args"] == [name.removeprefix("fdpush-").replace("api", "serve")]


def test_migration_job_runs_migrate() -> None:
    (job,) = by_kind("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # Its data steps (pseudonyms, sealed pushkeys) need the master key.
    [master_key] = [e for e in container["env"] if e["name"] == "FDPUSH_MASTER_KEY"]
    assert master_key["valueFrom"]["secretKeyRef"]["name"] == "fdpush-master-key"


def test_services_and_budgets_select_existing_pods() -> None:
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in by_kind("Deployment")]

    def selects(selector: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for labels in pods)

    for service in by_kind("Service"):
        assert selects(service["spec"]["selector"]), service["metadata"]["name"]
    for budget in by_kind("PodDisruptionBudget"):
        assert selects(budget["spec"]["selector"]["matchLabels"]), budget["metadata"]["name"]


def test_configmap_holds_known_settings_and_no_secrets() -> None:
    (configmap,) = by_kind("ConfigMap")
    names = set(configmap["data"])
    known = {f"FDPUSH_{field.upper()}" for field in Settings.model_fields}
    assert names <= known, names - known
    secret_names = {"FDPUSH_MASTER_KEY", "FDPUSH_INTERNAL_API_KEY", "FDPUSH_AUTH_DEV_SECRET"}
    assert not names & secret_names
    assert "FDPUSH_DATABASE_URL" not in names  # it carries the database password


def image_user() -> int:
    users = re.findall(r"^USER\s+(\d+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    return int(users[-1])


def test_only_labelled_clients_reach_the_internal_port() -> None:
    (policy,) = by_kind("NetworkPolicy")
    (api,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "fdpush-api"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= (
        api["spec"]["template"]["metadata"]["labels"].items()
    )
    names = {port["name"] for port in containers(api)[0]["ports"]}
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}
    assert set(rules) == names == {"http", "internal"}
    assert rules["http"] is None  # open: the ingress and Prometheus
    assert rules["internal"]  # restricted to labelled pods
    for peer in rules["internal"]:
        assert peer["podSelector"]["matchLabels"] == {"fdpush.internal-client": "true"}
