"""``python -m fdpush.testing``: the mocks as a server of their own, steered over ``/_mock/``,
with the gateway configuration they write, and a real ``fdpush gateway`` process in front."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fdpush.gateway.runner import stop_process
from gateway.helpers import ENCRYPTED, encrypted_item, new_pushkey

from .test_command import start_command

APNS_APP = "de.example.erezept.apns"


def test_standalone_mocks_behind_a_gateway_process(tmp_path: Path) -> None:
    log = tmp_path / "mocks.log"
    with log.open("wb") as out:
        mocks = subprocess.Popen(
            [sys.executable, "-m", "fdpush.testing", "--dir", str(tmp_path), "--gateway-port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "fdpush mock providers: APNs" not in log.read_text():
            assert mocks.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        apns_url = log.read_text().split("APNs ", 1)[1].split()[0]
        gateway, url = start_command(tmp_path / "gateway.toml", tmp_path / "gateway.log")
        try:
            pki = tmp_path / "pki"
            trust = ssl.create_default_context(cafile=pki / "ca.pem")
            as_fachdienst = ssl.create_default_context(cafile=pki / "ca.pem")
            as_fachdienst.load_cert_chain(pki / "client.pem", pki / "client.key")
            fachdienst = httpx.Client(base_url=url, verify=as_fachdienst)
            control = httpx.Client(base_url=apns_url, http2=True, verify=trust)
            with fachdienst, control:
                dead = new_pushkey()
                assert control.post("/_mock/kill", json={"token": dead}).json() == {"ok": True}
                items = [
                    encrypted_item("ok", app_id=APNS_APP),
                    encrypted_item("dead", pushkey=dead, app_id=APNS_APP),
                ]
                response = fachdienst.post(ENCRYPTED, json={"notifications": items})
                results = response.json()
                assert response.status_code == 200, results
                assert [r["status"] for r in results["results"]] == ["success", "failed"]
                assert results["results"][1]["rejected"] == [dead]
                received = control.get("/_mock/received").json()["received"]
                assert [r["token"] for r in received] == [
                    items[0]["notification"]["device"]["pushkey"]
                ]
                assert received[0]["headers"]["apns-topic"] == "de.example.erezept"
                bad = control.post("/_mock/fail_next", json={"status": 503})
                assert bad.status_code == 400  # no reason given
        finally:
            stop_process(gateway)
    finally:
        stop_process(mocks)
