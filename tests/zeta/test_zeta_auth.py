"""``FDPUSH_AUTH_MODE=zeta``: the Client-FD API behind the ZETA PEP, over real HTTP.

The app's identity is the ``identifier`` of the ``ZETA-User-Info`` header, trusted only from the
PEP's addresses; the person registered through the PEP is the one the RS API reaches by KVNR.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from conftest import Service, free_port, registration
from delivery.e2e_helpers import ACTIVATE, AppDevice, Rig, delivery_env
from fdpush.gateway import GatewayThread, TestPki, make_test_pki
from zeta.test_rs_api import RS, kvnr, notification


def user_info(identifier: Any = None, **extra: Any) -> str:
    """The header the PEP sets: Base64URL (unpadded) of the user-info JSON."""
    info = {"professionOID": "1.2.276.0.76.4.49", "commonName": "Erika", **extra}
    if identifier is not None:
        info["identifier"] = identifier
    return base64.urlsafe_b64encode(json.dumps(info).encode()).decode().rstrip("=")


def pep_client(service: Service, header: str | None) -> httpx.Client:
    headers = {} if header is None else {"ZETA-User-Info": header}
    return httpx.Client(base_url=service.base_url, headers=headers, timeout=30.0)


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> Iterator[Rig]:
    service = start_service(
        **delivery_env(pki, [gateway]),
        FDPUSH_AUTH_MODE="zeta",
        FDPUSH_AUTH_ZETA_TRUSTED_PROXIES="10.0.0.0/8, 127.0.0.1",
    )
    running = Rig(service)
    yield running
    running.close()


def test_a_kvnr_registered_through_the_pep_is_reached_by_the_rs_api(
    rig: Rig, gateway: GatewayThread
) -> None:
    user = kvnr()
    device = AppDevice(user, gateway)
    with pep_client(rig.service, user_info(user)) as app:
        registered = app.post("/push/v1/pushers/set", json=device.registration())
        assert registered.status_code == 200, registered.text
        listed = app.get("/push/v1/pushers")
        assert [p["pushkey"] for p in listed.json()["pushers"]] == [device.pushkey]
    sent = rig.events.post(RS + "/notifications", json=notification(user, ACTIVATE))
    assert sent.status_code == 202, sent.text
    assert sent.json()["status"] == "queued"
    rig.delivered(uuid.UUID(sent.json()["notification_id"]).hex, 1)
    assert device.payloads() == [{"message": "Neues Rezept", "n": 1}]


def test_history_is_off_and_answers_404(rig: Rig) -> None:
    with pep_client(rig.service, user_info(kvnr())) as app:
        assert app.get("/push/v1/history/some-id").status_code == 404


@pytest.mark.parametrize(
    ("header", "errcode"),
    [
        (None, "M_MISSING_TOKEN"),
        ("", "M_MISSING_TOKEN"),
        ("%%%not base64%%%", "M_UNKNOWN_TOKEN"),
        (base64.urlsafe_b64encode(b"not json").decode(), "M_UNKNOWN_TOKEN"),
        (base64.urlsafe_b64encode(b"[1, 2]").decode(), "M_UNKNOWN_TOKEN"),
        (user_info(), "M_UNKNOWN_TOKEN"),  # no identifier
        (user_info(42), "M_UNKNOWN_TOKEN"),
        (user_info("X12345\x006789"), "M_UNKNOWN_TOKEN"),
    ],
)
def test_without_a_usable_header_there_is_no_user(
    rig: Rig, header: str | None, errcode: str
) -> None:
    with pep_client(rig.service, header) as app:
        response = app.get("/push/v1/pushers")
    assert response.status_code == 401, response.text
    assert response.json()["errcode"] == errcode


def test_a_bearer_token_is_not_an_identity_in_zeta_mode(rig: Rig) -> None:
    with rig.service.client(kvnr()) as app:  # a dev token, no ZETA-User-Info
        assert app.get("/push/v1/pushers").status_code == 401


def test_requests_not_from_the_pep_are_refused(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> None:
    service = start_service(
        **delivery_env(pki, [gateway]),
        FDPUSH_AUTH_MODE="zeta",
        FDPUSH_AUTH_ZETA_TRUSTED_PROXIES="10.0.0.0/8",
    )
    with pep_client(service, user_info(kvnr())) as app:
        response = app.get("/push/v1/pushers")
        assert response.status_code == 401, response.text
        spoofed = app.get("/push/v1/pushers", headers={"X-Forwarded-For": "10.1.2.3"})
        assert spoofed.status_code == 401, spoofed.text


def test_zeta_mode_without_a_way_to_trust_the_pep_does_not_start(
    tmp_path: Any,
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")},
        "FDPUSH_AUTH_MODE": "zeta",
        "FDPUSH_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "FDPUSH_DATABASE_URL": f"sqlite:///{tmp_path / 'fdpush.db'}",
        "FDPUSH_PORT": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "fdpush", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "FDPUSH_AUTH_ZETA_TRUSTED_PROXIES" in result.stderr + result.stdout


class _TlsService(Service):
    """``fdpush serve`` whose client listener requires client certificates (the PEP's)."""

    def __init__(self, env: dict[str, str], database_url: str, workdir: Any, pki: TestPki) -> None:
        self.pki = pki
        super().__init__(env, database_url, workdir)
        self.base_url = f"https://127.0.0.1:{self.port}"

    def https(self, *, with_client_cert: bool = True, **kwargs: Any) -> httpx.Client:
        context = self.pki.client_ssl_context(with_client_cert=with_client_cert)
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.port}", verify=context, timeout=30.0, **kwargs
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fdpush serve exited early:\n{self.logs()}")
            try:
                with self.https() as http:
                    if http.get("/health/ready").status_code == 200:
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fdpush serve not ready:\n{self.logs()}")


def test_the_pep_is_trusted_by_its_client_certificate(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workdir = tmp_path_factory.mktemp("zeta-tls")
    pep = make_test_pki(workdir / "pki", client_name="zeta-pep")
    stranger = make_test_pki(workdir / "other-pki")
    database_url = f"sqlite:///{workdir / 'fdpush.db'}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")},
        "FDPUSH_AUTH_MODE": "zeta",
        "FDPUSH_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "FDPUSH_DATABASE_URL": database_url,
        "FDPUSH_PORT": str(free_port()),
        "FDPUSH_TLS_CERT": str(pep.server_cert),
        "FDPUSH_TLS_KEY": str(pep.server_key),
        "FDPUSH_TLS_CLIENT_CA": str(pep.ca_cert),
        "FDPUSH_GATEWAY_ALLOWLIST": "gateway.test",
        "FDPUSH_CHANNELS": "erp.task.activate=enabled",
    }
    service = _TlsService(env, database_url, workdir, pep)
    try:
        user = kvnr()
        with service.https(headers={"ZETA-User-Info": user_info(user)}) as app:
            registered = app.post("/push/v1/pushers/set", json=registration())
            assert registered.status_code == 200, registered.text
            assert len(app.get("/push/v1/pushers").json()["pushers"]) == 1
        with (
            service.https(with_client_cert=False) as app,
            pytest.raises(httpx.TransportError),
        ):
            app.get("/push/v1/pushers", headers={"ZETA-User-Info": user_info(user)})
        context = ssl.create_default_context(cafile=str(pep.ca_cert))
        context.load_cert_chain(str(stranger.client_cert), str(stranger.client_key))
        with (
            httpx.Client(base_url=service.base_url, verify=context) as app,
            pytest.raises(httpx.TransportError),
        ):
            app.get("/push/v1/pushers", headers={"ZETA-User-Info": user_info(user)})
    finally:
        service.stop()
