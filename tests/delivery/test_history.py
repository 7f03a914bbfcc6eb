"""Notification history (docs/delivery.md, "History"): with ``FDPUSH_HISTORY_DAYS`` > 0 the app
lists what was sent to its device and fetches one message by the identifier that travelled with it.

Both layouts (``/push/v1/history/...`` and ``/history/v1/...``), paging, only the caller's own,
off by default, and the payload sealed at rest. The real ``fdpush serve`` (SQLite and
PostgreSQL) delivering over mutual TLS to a development gateway.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from conftest import Service, new_user
from delivery.e2e_helpers import (
    ACTIVATE,
    COMMUNICATION,
    AppDevice,
    Rig,
    delivery_env,
    wait_for,
)
from fdpush.gateway import GatewayThread, TestPki

LAYOUTS = {"current": "/push/v1/history", "seed": "/history/v1"}


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> Iterator[Rig]:
    running = Rig(start_service(**delivery_env(pki, [gateway], FDPUSH_HISTORY_DAYS="30")))
    yield running
    running.close()


def device_history(
    rig: Rig, device: AppDevice, layout: str = "current", user: str | None = None, **params: Any
) -> httpx.Response:
    path = f"{LAYOUTS[layout]}/device/{quote(device.pushkey, safe='')}"
    with rig.service.client(user or device.user) as http:
        return http.get(path, params=params)


def message(rig: Rig, user: str, identifier: str, layout: str = "current") -> httpx.Response:
    with rig.service.client(user) as http:
        return http.get(f"{LAYOUTS[layout]}/{quote(identifier, safe='')}")


def error_of(response: httpx.Response, status: int, errcode: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errcode"] == errcode, body
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


def listed(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(identifier, payload) of a history page, checking the page's shape."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) <= {"messages", "next_batch"}, body
    for entry in body["messages"]:
        assert set(entry) == {"identifier", "payload"}, entry
    return [(m["identifier"], m["payload"]) for m in body["messages"]]


def emit_delivered(rig: Rig, user: str, channel: str, payload: dict, **fields: Any) -> dict:
    answer = rig.emit(user, channel, payload, **fields)
    rig.settled(answer["event_id"])
    return answer


# --- listing a device's history -------------------------------------------------------------------


def test_a_devices_history_lists_what_it_was_sent_newest_first_in_both_layouts(
    rig: Rig, gateway: GatewayThread
) -> None:
    """``GET history/device/{pushkey}`` → ``{"messages": [{"identifier", "payload"}]}``, newest
    first, the same in both layouts; only what went to *this* device: an event for a channel
    the device has off, or sent before it was registered, is not in its history."""
    user = new_user()
    early = emit_delivered(rig, user, ACTIVATE, {"before": "registration"}, identifier="early")
    assert early["notifications"] == 0
    phone, tablet = AppDevice(user, gateway), AppDevice(user, gateway)
    rig.register(phone)
    rig.register(tablet)
    rig.choose(tablet, erp_communication_new="enabled", erp_task_activate="disabled")

    sent = [
        (ACTIVATE, {"task": "160.000.000.001"}, "h-1"),
        (COMMUNICATION, {"msg": "Apotheke"}, "h-2"),  # not_set on the phone: tablet only
        (ACTIVATE, {"task": "160.000.000.002", "text": "Rezept bereit: Ä"}, "h-3"),
        (ACTIVATE, {"task": "160.000.000.003"}, "h-4"),
    ]
    for channel, payload, identifier in sent:
        emit_delivered(rig, user, channel, payload, identifier=identifier)

    phone_expected = [(i, p) for c, p, i in reversed(sent) if c == ACTIVATE]
    tablet_expected = [(i, p) for c, p, i in reversed(sent) if c == COMMUNICATION]
    for layout in LAYOUTS:
        response = device_history(rig, phone, layout)
        assert listed(response) == phone_expected, layout
        assert "next_batch" not in response.json()
        assert listed(device_history(rig, tablet, layout)) == tablet_expected, layout
    # What the phone decrypted is what its history says.
    assert [p for _, p in reversed(phone_expected)] == phone.payloads()


def test_events_of_one_batch_are_listed_newest_first_too(rig: Rig, gateway: GatewayThread) -> None:
    """Events emitted in one batch share their creation time; the history still lists them in
    reverse emission order (the later event of the batch is the newer one), page after page."""
    user = new_user()
    phone = AppDevice(user, gateway)
    rig.register(phone)
    events = [
        {"user_id": user, "channel": ACTIVATE, "payload": {"n": n}, "identifier": f"b-{n}"}
        for n in range(12)
    ]
    for result in rig.emit_many(events):
        rig.settled(result["event_id"])
    expected = [(f"b-{n}", {"n": n}) for n in reversed(range(12))]
    first = device_history(rig, phone, limit=5)
    rest = device_history(rig, phone, limit=50, **{"from": first.json()["next_batch"]})
    assert listed(first) + listed(rest) == expected


def test_history_pages_with_limit_and_next_batch(rig: Rig, gateway: GatewayThread) -> None:
    """``?limit=`` bounds a page; ``next_batch`` continues it with ``?from=`` (in either layout,
    the cursor is the same), until the last page, which has no ``next_batch``. The pages
    together are the whole history, newest first, each message once."""
    user = new_user()
    phone = AppDevice(user, gateway)
    rig.register(phone)
    for n in range(7):
        emit_delivered(rig, user, ACTIVATE, {"n": n}, identifier=f"p-{n}")
    expected = [(f"p-{n}", {"n": n}) for reversed_n in range(7) for n in [6 - reversed_n]]
    assert listed(device_history(rig, phone)) == expected  # the default limit (50) holds all

    pages: list[list[tuple[str, dict[str, Any]]]] = []
    cursor: str | None = None
    layouts = ["current", "seed", "current", "seed"]
    for layout in layouts:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["from"] = cursor
        response = device_history(rig, phone, layout, **params)
        pages.append(listed(response))
        cursor = response.json().get("next_batch")
        if cursor is None:
            break
        assert isinstance(cursor, str) and cursor
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [m for page in pages for m in page] == expected

    assert listed(device_history(rig, phone, limit=1)) == expected[:1]
    assert listed(device_history(rig, phone, limit=100)) == expected
    # A page that ends exactly at the last message.
    first = device_history(rig, phone, limit=6)
    last = device_history(rig, phone, limit=6, **{"from": first.json()["next_batch"]})
    assert listed(last) == expected[6:]
    assert "next_batch" not in last.json()


@pytest.mark.parametrize("limit", ["0", "101", "-1", "1000000000000000000000", "ten", "1.5", ""])
def test_a_limit_out_of_range_is_400(rig: Rig, gateway: GatewayThread, limit: str) -> None:
    """``limit`` is 1 to 100: anything else (or not a number) is 400 M_INVALID_PARAM."""
    phone = AppDevice(new_user(), gateway)
    rig.register(phone)
    for layout in LAYOUTS:
        error_of(device_history(rig, phone, layout, limit=limit), 400, "M_INVALID_PARAM")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "123",
        "_abc",
        "123_",
        "abc_def",
        "1_2_3",
        "12 _abc",
        "-5_abc",
        "²_abc",  # a digit to str.isdigit, not to int()
        "99999999999999999999_abc",  # more than a 64-bit integer
        "1_" + "a" * 90,  # longer than any cursor the service gives out
    ],
)
def test_a_cursor_the_service_did_not_give_out_is_400(
    rig: Rig, gateway: GatewayThread, cursor: str
) -> None:
    """``from`` must be a ``next_batch`` of this service: anything else is 400
    M_INVALID_PARAM — never a 500, whatever the database makes of it."""
    phone = AppDevice(new_user(), gateway)
    rig.register(phone)
    emit_delivered(rig, phone.user, ACTIVATE, {"n": 1})
    for layout in LAYOUTS:
        response = device_history(rig, phone, layout, **{"from": cursor})
        error_of(response, 400, "M_INVALID_PARAM")


# --- one message ----------------------------------------------------------------------------------


def test_one_message_by_its_identifier_in_both_layouts(rig: Rig, gateway: GatewayThread) -> None:
    """``GET history/{notification_id}`` → ``{"identifier", "payload"}`` for the identifier
    the event carried (URL-encoded in the path where needed, a slash too: FHIR-style
    references such as ``Task/160.000.000.001.01`` are natural identifiers); an identifier used
    twice gives the newest; one never used is 404 M_NOT_FOUND."""
    user = new_user()
    phone = AppDevice(user, gateway)
    rig.register(phone)
    odd = ["160.000 Ä+?#&=x", "Task/160.000.000.001.01", "a//b/", "device"]
    emit_delivered(rig, user, ACTIVATE, {"first": True}, identifier="twice")
    for n, identifier in enumerate(odd):
        emit_delivered(rig, user, ACTIVATE, {"odd": n}, identifier=identifier)
    emit_delivered(rig, user, ACTIVATE, {"second": True}, identifier="twice")

    for layout in LAYOUTS:
        for n, identifier in enumerate(odd):
            response = message(rig, user, identifier, layout)
            assert response.status_code == 200, (identifier, response.text)
            assert response.json() == {"identifier": identifier, "payload": {"odd": n}}
        response = message(rig, user, "twice", layout)
        assert response.json() == {"identifier": "twice", "payload": {"second": True}}
        error_of(message(rig, user, "never-used", layout), 404, "M_NOT_FOUND")


def test_an_event_without_identifier_gets_its_event_id_which_travels_to_the_gateway(
    rig: Rig, gateway: GatewayThread
) -> None:
    """With history on, an event without ``identifier`` gets its event id as identifier: it is
    in the sealed notification's ``identifier`` at the gateway, in the device's history, and
    fetches the message."""
    user = new_user()
    phone = AppDevice(user, gateway)
    rig.register(phone)
    answer = emit_delivered(rig, user, ACTIVATE, {"no": "identifier"})
    event_id = answer["event_id"]

    [received] = phone.inbox()
    assert received.notification["identifier"] == event_id
    assert phone.decrypt(received) == {"no": "identifier"}
    assert listed(device_history(rig, phone)) == [(event_id, {"no": "identifier"})]
    for layout in LAYOUTS:
        response = message(rig, user, event_id, layout)
        assert response.json() == {"identifier": event_id, "payload": {"no": "identifier"}}


# --- only the caller's own ------------------------------------------------------------------------


def test_another_users_history_is_not_found(rig: Rig, gateway: GatewayThread) -> None:
    """Bob gets 404 for Alice's device and for Alice's identifiers — also when his own device
    has the same pushkey (his history then lists only his own messages) and when he uses the
    same identifier (he gets his message, not hers)."""
    alice, bob = new_user(), new_user()
    hers = AppDevice(alice, gateway)
    rig.register(hers)
    emit_delivered(rig, alice, ACTIVATE, {"for": "alice"}, identifier="alice-only")
    emit_delivered(rig, alice, ACTIVATE, {"for": "alice", "shared": True}, identifier="shared")

    for layout in LAYOUTS:
        error_of(device_history(rig, hers, layout, user=bob), 404, "M_NOT_FOUND")
        error_of(message(rig, bob, "alice-only", layout), 404, "M_NOT_FOUND")
        error_of(message(rig, bob, "shared", layout), 404, "M_NOT_FOUND")

    twin = AppDevice(bob, gateway, pushkey=hers.pushkey)
    rig.register(twin, append=True)  # keep Alice's pusher
    emit_delivered(rig, bob, ACTIVATE, {"for": "bob"}, identifier="shared")
    for layout in LAYOUTS:
        assert listed(device_history(rig, twin, layout)) == [("shared", {"for": "bob"})]
        assert message(rig, bob, "shared", layout).json()["payload"] == {"for": "bob"}
        error_of(message(rig, bob, "alice-only", layout), 404, "M_NOT_FOUND")
        assert [i for i, _ in listed(device_history(rig, hers, layout))] == [
            "shared",
            "alice-only",
        ]
        assert message(rig, alice, "shared", layout).json()["payload"] == {
            "for": "alice",
            "shared": True,
        }


def test_a_pushkey_that_is_not_the_callers_device_is_not_found(
    rig: Rig, gateway: GatewayThread
) -> None:
    """A pushkey the caller never registered, one it deleted, or one of another app's shape:
    404 M_NOT_FOUND for the device history."""
    user = new_user()
    phone = AppDevice(user, gateway)
    rig.register(phone)
    emit_delivered(rig, user, ACTIVATE, {"n": 1})
    with rig.service.client(user) as http:
        for pushkey in ("never-registered", phone.pushkey + "x", "a" * 600):
            for prefix in LAYOUTS.values():
                response = http.get(f"{prefix}/device/{quote(pushkey, safe='')}")
                error_of(response, 404, "M_NOT_FOUND")
        gone = http.post(
            "/push/v1/pushers/set",
            json={"kind": None, "app_id": phone.app_id, "pushkey": phone.pushkey},
        )
        assert gone.status_code == 200, gone.text
    for layout in LAYOUTS:
        error_of(device_history(rig, phone, layout), 404, "M_NOT_FOUND")


def test_history_needs_authentication(rig: Rig, gateway: GatewayThread) -> None:
    """Without an access token both endpoints are 401, in both layouts."""
    phone = AppDevice(new_user(), gateway)
    rig.register(phone)
    with httpx.Client(base_url=rig.service.base_url, timeout=30) as http:
        for prefix in LAYOUTS.values():
            for path in (f"{prefix}/device/{quote(phone.pushkey, safe='')}", f"{prefix}/x"):
                error_of(http.get(path), 401, "M_MISSING_TOKEN")


# --- off by default; sealed at rest --------------------------------------------------------------


def test_without_history_days_the_history_endpoints_do_not_exist(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> None:
    """FDPUSH_HISTORY_DAYS unset (0): both endpoints in both layouts are 404 M_UNRECOGNIZED,
    even for the caller's own device and a delivered event's id; nothing of the payload is
    kept, and the notification carries no identifier the event did not have."""
    service = start_service(
        **delivery_env(pki, [gateway]), FDPUSH_DELIVERY_PRUNE_INTERVAL_SECONDS="0.2"
    )
    rig = Rig(service)
    try:
        user = new_user()
        phone = AppDevice(user, gateway)
        rig.register(phone)
        answer = emit_delivered(rig, user, ACTIVATE, {"kept": False})
        event_id = answer["event_id"]
        for layout in LAYOUTS:
            error_of(device_history(rig, phone, layout), 404, "M_UNRECOGNIZED")
            error_of(message(rig, user, event_id, layout), 404, "M_UNRECOGNIZED")
        # The payload (sealed) is kept only until its notifications are done, then pruned.
        wait_for(
            lambda: (
                service.query("SELECT identifier, payload FROM events WHERE id = ?", (event_id,))
                == [(None, None)]
            ),
            timeout=10,
            what="the payload pruned after delivery",
        )
        [received] = phone.inbox()
        assert "identifier" not in received.notification
    finally:
        rig.close()


def test_the_payload_is_not_stored_in_plain_text(rig: Rig, gateway: GatewayThread) -> None:
    """The history payload (and the outbox's notification body) are sealed at rest: a marker
    in the payload appears in no column of the event's or its notifications' rows, although
    the history endpoint returns it."""
    user = new_user()
    phone = AppDevice(user, gateway)
    rig.register(phone)
    marker = f"MARKER-{uuid.uuid4().hex}"
    answer = emit_delivered(rig, user, ACTIVATE, {"secret": marker}, identifier="sealed-1")
    assert listed(device_history(rig, phone)) == [("sealed-1", {"secret": marker})]

    rows = rig.service.query("SELECT * FROM events WHERE id = ?", (answer["event_id"],))
    rows += rig.service.query(
        "SELECT * FROM notifications WHERE event_id = ?", (answer["event_id"],)
    )
    assert len(rows) == 2
    [payload_column] = rig.service.query(
        "SELECT payload FROM events WHERE id = ?", (answer["event_id"],)
    )
    assert payload_column[0] is not None  # it is kept — sealed
    needles = [marker.encode(), marker.encode().hex().encode(), marker.encode("utf-16-le")]
    for row in rows:
        for value in row:
            raw = bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None
            text = str(value).encode()
            for needle in needles:
                assert needle not in text
                assert raw is None or needle not in raw
