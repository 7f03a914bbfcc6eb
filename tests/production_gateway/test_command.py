"""``fdpush gateway --config FILE`` in both modes, as a real process; certificate authentication."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fdpush.gateway import TestPki
from fdpush.gateway.production import ProductionGatewayThread
from fdpush.gateway.production.config import ApnsApp, FcmApp
from fdpush.gateway.runner import READY_LINE, stop_process
from fdpush.testing import ApnsKey, MockApns, MockFcm
from gateway.helpers import ENCRYPTED, encrypted_item, new_pushkey

from .conftest import APNS_APP, FCM_APP, KEY_ID, TEAM_ID, StartGateway, client_for
from .test_delivery import send_one


def start_command(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fdpush", "gateway", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = READY_LINE.search(log.read_text())
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.02)
    stop_process(process)
    raise AssertionError(f"did not start:\n{log.read_text()}")


def test_production_mode_from_a_configuration_file(
    tmp_path: Path,
    pki: TestPki,
    keys: dict[str, ApnsKey],
    apns: MockApns,
    fcm_server: tuple[MockFcm, dict[str, Path]],
) -> None:
    fcm, accounts = fcm_server
    fcm.reset()
    config = tmp_path / "gateway.toml"
    (tmp_path / "log.key").write_bytes(b"k" * 32)
    config.write_text(
        f"""
mode = "production"
log_format = "json"
log_reference_key_file = "log.key"

[listen]
host = "127.0.0.1"
port = 0
cert = "{pki.server_cert}"
key = "{pki.server_key}"
client_ca = "{pki.ca_cert}"

[delivery]
answer_within_seconds = 5

[apns]
url = "{apns.url}"
ca_file = "{pki.ca_cert}"

[fcm]
url = "{fcm.url}"
ca_file = "{pki.ca_cert}"

[[apns_apps]]
app_id = "{APNS_APP}"
key_file = "{keys[KEY_ID].path}"
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"

[[fcm_apps]]
app_id = "{FCM_APP}"
service_account = "{accounts[FCM_APP]}"
"""
    )
    log = tmp_path / "gateway.log"
    process, url = start_command(config, log)
    try:
        dead = new_pushkey()
        apns.kill(dead)
        context = pki.client_ssl_context()
        with httpx.Client(base_url=url, verify=context, timeout=30) as http:
            items = [
                encrypted_item("a", app_id=APNS_APP),
                encrypted_item("f", app_id=FCM_APP),
                encrypted_item("d", pushkey=dead, app_id=APNS_APP),
            ]
            body = http.post(ENCRYPTED, json={"notifications": items}).json()
            assert [r["status"] for r in body["results"]] == ["success", "success", "failed"]
            assert body["results"][2]["rejected"] == [dead]
            assert http.get("/health/ready").status_code == 200
    finally:
        stop_process(process)
    text = log.read_text()
    assert '"message":"pushkey rejected by the provider"' in text  # JSON lines
    assert dead not in text
    # The reference is keyed with the configured key: the same in every process.
    key = hmac.new(b"k" * 32, b"fdpush/log-reference/v1", hashlib.sha256).digest()
    ref = hmac.new(key, f"pushkey\x00{dead}".encode(), hashlib.sha256).hexdigest()[:16]
    assert f'"pushkey":"pk:{ref}"' in text


def test_development_mode_from_a_configuration_file(tmp_path: Path, pki: TestPki) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
mode = "development"
[listen]
port = 0
cert = "{pki.server_cert}"
key = "{pki.server_key}"
client_ca = "{pki.ca_cert}"
"""
    )
    process, url = start_command(config, tmp_path / "gateway.log")
    try:
        with httpx.Client(base_url=url, verify=pki.client_ssl_context(), timeout=30) as http:
            response = http.post(ENCRYPTED, json={"notifications": [encrypted_item()]})
            assert response.json()["summary"]["successful"] == 1
            assert http.get("/_dev/stats").json()["notifications_recorded"] == 1
    finally:
        stop_process(process)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('[[apns_apps]]\napp_id = "x.apns"\n', "gateway.toml"),
        (
            '[[apns_apps]]\napp_id = "x.apns"\nkey_file = "not-a-key.p8"\nkey_id = "K"\n'
            'team_id = "T"\n',
            "APNs key K: not a PEM private key",
        ),
        (
            '[[fcm_apps]]\napp_id = "p.a.firebase"\nservice_account = "not-a-key.p8"\n',
            "not-a-key.p8",
        ),
        ('[[fcm_apps]]\napp_id = "p.a.firebase"\nservice_account = "missing.json"\n', "missing"),
    ],
)
def test_a_bad_configuration_ends_with_one_line(
    tmp_path: Path, pki: TestPki, body: str, named: str
) -> None:
    (tmp_path / "not-a-key.p8").write_text("hello")
    config = tmp_path / "gateway.toml"
    listen = (
        f'[listen]\ncert = "{pki.server_cert}"\nkey = "{pki.server_key}"\n'
        f'client_ca = "{pki.ca_cert}"\n'
    )
    config.write_text(f'mode = "production"\n{listen}{body}')
    result = subprocess.run(
        [sys.executable, "-m", "fdpush", "gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_apns_certificate_authentication(
    start_gateway: StartGateway, pki: TestPki, apns: MockApns
) -> None:
    apns.add_certificate("CN=erp.fachdienst.test", ["de.example.certified"])
    app = {
        "app_id": "de.example.certified.apns",
        "certificate": pki.client_cert,
        "certificate_key": pki.client_key,
    }
    gateway: ProductionGatewayThread = start_gateway(apns_apps=[app])
    pushkey = new_pushkey()
    with client_for(gateway, pki) as http:
        assert send_one(http, "de.example.certified.apns", pushkey)["status"] == "success"
    [push] = apns.accepted_for(pushkey)
    assert "authorization" not in push.headers


@pytest.mark.parametrize(
    "app",
    [
        {"app_id": "a.apns", "key_id": "K", "team_id": "T"},  # no key file
        {"app_id": "a.firebase", "service_account": "x.json"},  # no app label
    ],
)
def test_app_configuration_is_checked(app: dict[str, str]) -> None:
    model = ApnsApp if app["app_id"].endswith(".apns") else FcmApp
    with pytest.raises(ValueError):
        model.model_validate(app)
