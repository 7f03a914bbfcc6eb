"""compose.gateway.yaml: valid against the Compose specification, and its health check real.

The health check's command is run as written (with this interpreter as ``python``) against a
production gateway on loopback: it must pass when the gateway is ready and fail when none
listens.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fdpush.gateway import TestPki, make_test_pki
from fdpush.gateway.production import GatewayConfig, ProductionGatewayThread
from fdpush.gateway.production.config import DeliveryConfig, ListenConfig

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose-spec.json"
STATE = "/var/lib/fdpush/state"


def load_compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "compose.gateway.yaml").read_text())
    return document


def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))


def gateway_service() -> dict[str, Any]:
    service: dict[str, Any] = load_compose()["services"]["gateway"]
    return service


def test_compose_file_matches_the_specification() -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator().iter_errors(load_compose())
    ]
    assert errors == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "gateway", "healthcheck", "intervall"), "10s"),
        (("services", "gateway", "read_onyl"), True),
        (("services", "gateway", "volumes", 0, "type"), "folder"),
    ],
)
def test_the_schema_rejects_mistakes(path: tuple[str | int, ...], value: object) -> None:
    document = load_compose()
    node: Any = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert not validator().is_valid(document)


def test_runs_the_production_gateway_from_the_mounted_configuration() -> None:
    service = gateway_service()
    command = service["command"]
    assert command[:2] == ["gateway", "--config"]
    binds = {v["target"]: v for v in service["volumes"] if v["type"] == "bind"}
    (config_dir,) = [t for t in binds if command[2].startswith(t + "/")]
    assert binds[config_dir]["read_only"] is True
    assert binds[config_dir]["source"].startswith("${FDPUSH_GATEWAY_CONFIG_DIR:?")  # no default
    assert service["read_only"] is True


def test_the_rejection_memory_lives_in_a_volume_the_image_user_owns() -> None:
    """Docker fills a new named volume from the image's folder, owner included, so the folder
    must exist in the image, owned by its user; and the comment must name a file in it."""
    service = gateway_service()
    named = {v["target"]: v["source"] for v in service["volumes"] if v["type"] == "volume"}
    assert named[STATE] in load_compose()["volumes"]
    dockerfile = (REPO / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER\s+(\d+):(\d+)", dockerfile, re.MULTILINE)
    assert re.search(rf"install -d -m 700 -o {user[0]} -g {user[1]} {STATE}\b", dockerfile)
    assert f'rejection_memory_file = "{STATE}/' in (REPO / "compose.gateway.yaml").read_text()


def test_stop_grace_covers_the_gateways_graceful_stop() -> None:
    grace = gateway_service()["stop_grace_period"]
    seconds = int(grace.removesuffix("s"))
    assert seconds > math.ceil(DeliveryConfig().answer_within_seconds) + 2


def healthcheck_command(port: int) -> list[str]:
    """The health check's CMD, aimed at ``port`` instead of the published one, run by us."""
    test = gateway_service()["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    published = {int(p.split(":")[-1]) for p in gateway_service()["ports"]}
    assert published == {8443}
    code = test[3]
    assert "https://127.0.0.1:8443/health/ready" in code
    return [sys.executable, *test[2:3], code.replace(":8443/", f":{port}/")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def test_the_health_check_passes_on_a_ready_gateway(pki: TestPki) -> None:
    listen = ListenConfig(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert)
    with ProductionGatewayThread(GatewayConfig(listen=listen)) as gateway:
        port = int(gateway.url.rsplit(":", 1)[1])
        done = subprocess.run(
            healthcheck_command(port), capture_output=True, text=True, timeout=30, check=False
        )
    assert done.returncode == 0, done.stderr


def test_the_health_check_fails_when_nothing_listens() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connections are refused
        done = subprocess.run(
            healthcheck_command(port), capture_output=True, text=True, timeout=30, check=False
        )
    assert done.returncode != 0
