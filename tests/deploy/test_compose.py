"""compose.yaml: valid against the Compose specification's JSON schema, and wired as documented.

The schema is the specification's own (tests/data/compose-spec, with its licence); no container
engine is needed to check it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose-spec.json"


def load_compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return document


def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))


def test_compose_file_matches_the_specification() -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator().iter_errors(load_compose())
    ]
    assert errors == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "api", "depends_on", "migrate", "condition"), "service_finished"),
        (("services", "api", "portz"), ["8080"]),
        (("services", "worker", "command"), {"worker": True}),
    ],
)
def test_the_schema_rejects_mistakes(path: tuple[str, ...], value: object) -> None:
    document = load_compose()
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert not validator().is_valid(document)


def test_one_api_two_workers_postgres_and_prometheus() -> None:
    services = load_compose()["services"]
    assert services["api"]["command"] == ["serve"]
    assert services["api"]["environment"]["FDPUSH_SERVE_WORKER"] == "0"
    assert services["worker"]["command"] == ["worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("api", "worker"):
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        env = service["environment"]
        assert env["FDPUSH_DATABASE_URL"].startswith("postgresql://")
        assert env["FDPUSH_MIGRATE_ON_START"] == "0"
        assert env["FDPUSH_AUTH_MODE"] == "jwt"
        assert env["FDPUSH_MASTER_KEY"].startswith("${FDPUSH_MASTER_KEY:?")  # no default key
    assert services["worker"]["environment"]["FDPUSH_WORKER_METRICS_PORT"] == "9101"
    mounted = {volume.split(":")[0] for volume in services["prometheus"]["volumes"]}
    for source in mounted - {"prometheus-data"}:
        assert (REPO / source).is_file(), source


def test_prometheus_scrapes_the_api_and_every_worker() -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["fdpush-api"]["static_configs"][0]["targets"] == ["api:8080"]
    workers = jobs["fdpush-worker"]["dns_sd_configs"][0]
    assert workers["names"] == ["worker"]
    assert workers["port"] == 9101
