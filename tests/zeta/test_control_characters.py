"""Text with NUL or other control characters is refused with 400 wherever a client or the
Fachdienst can send it — on PostgreSQL too, which cannot store NUL in text (it was a 500 there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from conftest import Service, new_user, registration
from delivery.e2e_helpers import ACTIVATE, AppDevice, Rig, delivery_env
from fdpush.gateway import GatewayThread, TestPki


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> Iterator[Rig]:
    running = Rig(start_service(**delivery_env(pki, [gateway]), FDPUSH_HISTORY_DAYS="30"))
    yield running
    running.close()


def refused(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["errcode"] == "M_INVALID_PARAM", response.text


@pytest.mark.parametrize(
    "fields",
    [
        {"device_display_name": "Phone\n2"},
        {"app_display_name": "App\x07"},
        {"profile_tag": "tag\x1b[31m"},
        {"device_display_name": "Phone\x00"},
    ],
)
def test_registration_text(rig: Rig, fields: dict[str, str]) -> None:
    user = new_user()
    with rig.service.client(user) as app:
        refused(app.post("/push/v1/pushers/set", json=registration(**fields)))
        assert app.get("/push/v1/pushers").json()["pushers"] == []


@pytest.mark.parametrize(
    "path",
    [
        "/push/v1/history/a%00b",
        "/push/v1/history/a%1Fb",
        "/history/v1/a%00b",
    ],
)
def test_history_path_parameters(rig: Rig, path: str) -> None:
    with rig.service.client(new_user()) as app:
        refused(app.get(path))


def test_history_cursor(rig: Rig, gateway: GatewayThread) -> None:
    device = AppDevice(new_user(), gateway, pushkey="pk-cursor-" + new_user())
    rig.register(device)
    with rig.service.client(device.user) as app:
        refused(app.get(f"/push/v1/history/device/{device.pushkey}", params={"from": "x\x00"}))


@pytest.mark.parametrize(
    "fields",
    [
        {"identifier": "ref\x00"},
        {"identifier": "ref\n"},
        {"channel": ACTIVATE + "\x00"},
        {"user_id": "user\x00"},
    ],
)
def test_internal_events(rig: Rig, fields: dict[str, str]) -> None:
    body = {"user_id": new_user(), "channel": ACTIVATE, "payload": {"n": 1}, **fields}
    refused(rig.events.post("/internal/v1/events", json=body))


def test_internal_event_id(rig: Rig) -> None:
    refused(rig.events.get("/internal/v1/events/abc%00def"))


def test_nothing_failed_on_the_way(rig: Rig) -> None:
    """Runs last in this module: none of the above reached an unhandled error."""
    assert "unhandled error" not in rig.service.logs()
