"""How large a payload may be, by who receives it (the RS API and the internal events API).

An encrypted notification carries the payload in the 1024-byte frame: at most 1018 bytes of
compact JSON. A plain one carries it as JSON: at least ZETA's 3 KB are accepted (3072 bytes).
With ``FDPUSH_ENCRYPTION=optional`` an event larger than the frame is refused as a whole (RS: 413
``PAYLOAD_TOO_LARGE`` naming 1018; events API: 400) when any device it would reach is
encrypted, and delivered when every one of them is plain. ``required`` is covered in
``test_rs_api`` and ``delivery/test_events_api``.

The real ``fdpush serve`` (SQLite and PostgreSQL) delivering to a development gateway.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import Service
from delivery.e2e_helpers import ACTIVATE, FCM_APP, AppDevice, Rig, delivery_env
from delivery.test_events_api import payload_of_size
from delivery.test_plain_and_keys import register_plain
from fdpush.gateway import GatewayThread, TestPki
from zeta.test_rs_api import check_schema, events_of, kvnr, notification, post, zeta_error

FRAME = 1018
PLAIN = 3072


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> Iterator[Rig]:
    running = Rig(start_service(**delivery_env(pki, [gateway], FDPUSH_ENCRYPTION="optional")))
    yield running
    running.close()


def accepted(rig: Rig, body: dict[str, Any]) -> str:
    """POST /notifications that must be queued; the event id underneath."""
    response = post(rig, body)
    assert response.status_code == 202, response.text
    check_schema(response.json(), "NotificationAccepted")
    assert response.json()["status"] == "queued"
    return uuid.UUID(response.json()["notification_id"]).hex


def test_a_plain_device_gets_3_kb(rig: Rig, gateway: GatewayThread) -> None:
    """3072 bytes — also as 1536 two-byte characters — reach a plain device whole, through the
    RS API and the events API; one byte more is refused with the limit named."""
    user = kvnr()
    phone = AppDevice(user, gateway, app_id=FCM_APP)
    register_plain(rig, phone)
    largest = [payload_of_size(PLAIN), payload_of_size(PLAIN, "ä")]
    rig.delivered(accepted(rig, notification(user, payload=largest[0])), 1)
    rig.delivered(rig.emit(user, ACTIVATE, largest[1])["event_id"], 1)
    assert [r.notification["content"] for r in phone.inbox()] == largest

    detail = zeta_error(
        post(rig, notification(user, payload=payload_of_size(PLAIN + 1))), 413, "PAYLOAD_TOO_LARGE"
    )
    assert str(PLAIN) in detail
    response = rig.events.post(
        "/internal/v1/events",
        json={"user_id": user, "channel": ACTIVATE, "payload": payload_of_size(PLAIN + 1)},
    )
    assert response.status_code == 400, response.text
    assert response.json()["errcode"] == "M_INVALID_PARAM"
    assert str(PLAIN) in response.json()["error"]
    assert events_of(rig, user) == 2


def test_an_encrypted_device_among_the_recipients_bounds_the_payload_to_the_frame(
    rig: Rig, gateway: GatewayThread
) -> None:
    """A plain and an encrypted device, both subscribed: over 1018 bytes is refused for both
    (nothing stored, also inside an events batch); 1018 bytes reach both."""
    user = kvnr()
    plain, sealed = AppDevice(user, gateway, app_id=FCM_APP), AppDevice(user, gateway)
    register_plain(rig, plain)
    rig.register(sealed)
    detail = zeta_error(
        post(rig, notification(user, payload=payload_of_size(FRAME + 1))), 413, "PAYLOAD_TOO_LARGE"
    )
    assert str(FRAME) in detail and "encrypted" in detail
    small = {"user_id": user, "channel": ACTIVATE, "payload": {"n": 1}}
    batch = [small, {**small, "payload": payload_of_size(FRAME + 1)}]
    response = rig.events.post("/internal/v1/events/batch", json={"events": batch})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["errcode"] == "M_INVALID_PARAM" and str(FRAME) in error["error"], error
    assert events_of(rig, user) == 0

    fits = payload_of_size(FRAME)
    rig.delivered(accepted(rig, notification(user, payload=fits)), 2)
    assert [r.notification["content"] for r in plain.inbox()] == [fits]
    assert sealed.payloads() == [fits]


def test_an_encrypted_device_that_does_not_receive_the_channel_does_not_count(
    rig: Rig, gateway: GatewayThread
) -> None:
    """The encrypted device turned the channel off: 3 KB go to the plain one alone."""
    user = kvnr()
    plain, sealed = AppDevice(user, gateway, app_id=FCM_APP), AppDevice(user, gateway)
    register_plain(rig, plain)
    rig.register(sealed)
    rig.choose(sealed, erp_task_activate="disabled")
    large = payload_of_size(PLAIN)
    rig.delivered(accepted(rig, notification(user, payload=large)), 1)
    assert [r.notification["content"] for r in plain.inbox()] == [large]
    assert sealed.inbox() == []


def test_where_encryption_is_forbidden_3_kb_are_accepted(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> None:
    forbidden = Rig(start_service(**delivery_env(pki, [gateway], FDPUSH_ENCRYPTION="forbidden")))
    try:
        user = kvnr()
        phone = AppDevice(user, gateway, app_id=FCM_APP)
        register_plain(forbidden, phone)
        large = payload_of_size(PLAIN)
        forbidden.delivered(accepted(forbidden, notification(user, payload=large)), 1)
        assert [r.notification["content"] for r in phone.inbox()] == [large]
        zeta_error(
            post(forbidden, notification(user, payload=payload_of_size(PLAIN + 1))),
            413,
            "PAYLOAD_TOO_LARGE",
        )
    finally:
        forbidden.close()
