"""What the gateway records: per device, what the app would receive from APNs or FCM, readable
over ``/_dev``, bounded, and optionally appended to a JSON-lines file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fdpush.gateway import GatewayProcess, TestPki
from gateway.helpers import (
    APNS_APP,
    ENCRYPTED,
    FCM_APP,
    NOTIFY,
    PLAIN_BATCH,
    SEED_NOTIFY,
    device,
    encrypted_item,
    new_pushkey,
    plain_item,
    plain_notification,
)


def send_encrypted(gateway: GatewayProcess, *items: dict) -> dict:
    response = gateway.http.post(ENCRYPTED, json={"notifications": list(items)})
    assert response.status_code == 200, response.text
    return response.json()


# --- APNs and FCM ------------------------------------------------------------------------------


def test_an_apns_device_gets_a_mutable_alert_with_the_encrypted_fields_as_custom_keys(
    gateway: GatewayProcess,
) -> None:
    """``.apns``: ``aps.mutable-content`` 1 (the extension decrypts), priority 10 for high,
    ``ciphertext``/``time_message_encrypted``/``key_identifier``/``identifier`` beside ``aps``."""
    pushkey = new_pushkey()
    item = encrypted_item(
        "n1",
        pushkey=pushkey,
        app_id=APNS_APP,
        identifier="task/160.000.000.000.001",
        counts={"unread": 3},
    )
    sent = item["notification"]

    send_encrypted(gateway, item)

    [received] = gateway.inbox(APNS_APP, pushkey)
    assert received["provider"] == "apns"
    assert received["id"] == "n1"
    assert received["endpoint"] == ENCRYPTED
    assert received["notification"] == sent  # as the Fachdienst sent it
    push = received["push"]
    assert push["device_token"] == pushkey
    assert push["headers"]["apns-priority"] == "10"
    assert push["headers"]["apns-topic"] == "de.gematik.erezept"
    assert push["payload"]["aps"]["mutable-content"] == 1
    assert push["payload"]["aps"]["alert"]  # without an alert iOS skips the extension
    assert push["payload"]["aps"]["badge"] == 3
    assert {k: v for k, v in push["payload"].items() if k != "aps"} == {
        "ciphertext": sent["ciphertext"],
        "time_message_encrypted": "2025-06",
        "key_identifier": sent["key_identifier"],
        "identifier": "task/160.000.000.000.001",
    }


def test_a_low_priority_apns_notification_has_priority_5_and_no_identifier_unless_sent(
    gateway: GatewayProcess,
) -> None:
    """``prio: low`` → ``apns-priority: 5``; ``identifier`` appears only when the FD sent it."""
    pushkey = new_pushkey()

    send_encrypted(gateway, encrypted_item(pushkey=pushkey, prio="low"))

    [received] = gateway.inbox(APNS_APP, pushkey)
    assert received["prio"] == "low"
    assert received["push"]["headers"]["apns-priority"] == "5"
    assert "identifier" not in received["push"]["payload"]
    assert "badge" not in received["push"]["payload"]["aps"]


@pytest.mark.parametrize(("prio", "android_priority"), [("high", "HIGH"), ("low", "NORMAL")])
def test_an_fcm_device_gets_a_data_message_with_string_values(
    gateway: GatewayProcess, prio: str, android_priority: str
) -> None:
    """``.firebase``: an FCM v1 message to the pushkey, ``data`` with the encrypted fields as
    strings, ``android.priority`` HIGH for high and NORMAL for low."""
    pushkey = new_pushkey()
    item = encrypted_item(
        pushkey=pushkey, app_id=FCM_APP, prio=prio, identifier="i-1", counts={"unread": 2}
    )

    send_encrypted(gateway, item)

    [received] = gateway.inbox(FCM_APP, pushkey)
    assert received["provider"] == "fcm"
    message = received["push"]["message"]
    assert message["token"] == pushkey
    assert message["android"] == {"priority": android_priority}
    assert message["data"] == {
        "ciphertext": item["notification"]["ciphertext"],
        "time_message_encrypted": "2025-06",
        "key_identifier": item["notification"]["key_identifier"],
        "identifier": "i-1",
        "unread": "2",
    }


def test_an_app_id_with_another_suffix_is_recorded_as_unknown_not_rejected(
    gateway: GatewayProcess,
) -> None:
    """No ``.apns``/``.firebase`` suffix: accepted and recorded, provider ``unknown``."""
    pushkey = new_pushkey()

    answer = send_encrypted(gateway, encrypted_item(pushkey=pushkey, app_id="de.example.app"))

    assert answer["results"][0]["status"] == "success"
    [received] = gateway.inbox("de.example.app", pushkey)
    assert received["provider"] == "unknown"
    assert received["push"] is None


def test_a_plain_notification_reaches_each_of_its_devices(gateway: GatewayProcess) -> None:
    """``notify/batch``: one notification to an APNs and an FCM device → one entry per device,
    each with that device and the plain fields (``content`` as an object for APNs, as a JSON
    string in FCM's ``data``)."""
    ios, android = device(app_id=APNS_APP), device(app_id=FCM_APP)
    item = plain_item("p1", ios, android, content={"channel": "erp.task.activate", "n": 1})

    response = gateway.http.post(PLAIN_BATCH, json={"notifications": [item]})

    assert response.json()["results"] == [{"id": "p1", "status": "success", "rejected": []}]
    [on_ios] = gateway.inbox(APNS_APP, ios["pushkey"])
    [on_android] = gateway.inbox(FCM_APP, android["pushkey"])
    assert on_ios["notification"]["device"] == ios
    assert "devices" not in on_ios["notification"]
    assert on_ios["push"]["payload"]["content"] == {"channel": "erp.task.activate", "n": 1}
    assert on_ios["push"]["payload"]["event_id"] == item["notification"]["event_id"]
    data = on_android["push"]["message"]["data"]
    assert json.loads(data["content"]) == {"channel": "erp.task.activate", "n": 1}
    assert data["event_id"] == item["notification"]["event_id"]


def test_notify_and_the_seed_path_record_like_the_batches(gateway: GatewayProcess) -> None:
    """``notify`` records per device with no item id; a seed-era encrypted ``notify`` carries
    its encrypted fields through to the APNs payload."""
    plain_device, seed_device = device(), device()
    gateway.http.post(NOTIFY, json={"notification": plain_notification(plain_device)})
    seed_note = {
        "ciphertext": "c2VlZC1lcmE=",
        "time_message_encrypted": "2025-01",
        "key_identifier": "kid",
        "devices": [seed_device],
    }
    assert gateway.http.post(SEED_NOTIFY, json={"notification": seed_note}).status_code == 200

    [plain] = gateway.inbox(APNS_APP, plain_device["pushkey"])
    [seed] = gateway.inbox(APNS_APP, seed_device["pushkey"])
    assert plain["id"] is None and plain["endpoint"] == NOTIFY
    assert seed["endpoint"] == SEED_NOTIFY
    assert seed["prio"] == "high"
    assert seed["push"]["payload"]["ciphertext"] == "c2VlZC1lcmE="
    assert seed["push"]["payload"]["key_identifier"] == "kid"


# --- reading and clearing ----------------------------------------------------------------------


def test_a_device_inbox_is_oldest_first_and_pages_with_since(gateway: GatewayProcess) -> None:
    """``GET /_dev/inbox`` lists only that device's notifications, in arrival order; ``since``
    returns those after a ``seq``."""
    pushkey, other = new_pushkey(), new_pushkey()
    for number in range(3):
        send_encrypted(
            gateway,
            encrypted_item(f"mine-{number}", pushkey=pushkey),
            encrypted_item(f"other-{number}", pushkey=other),
        )

    inbox = gateway.inbox(APNS_APP, pushkey)
    assert [r["id"] for r in inbox] == ["mine-0", "mine-1", "mine-2"]
    assert [r["seq"] for r in inbox] == sorted(r["seq"] for r in inbox)
    later = gateway.inbox(APNS_APP, pushkey, since=inbox[0]["seq"])
    assert [r["id"] for r in later] == ["mine-1", "mine-2"]
    assert gateway.inbox(FCM_APP, pushkey) == []  # the device is app_id + pushkey


def test_all_notifications_page_with_a_cursor(gateway: GatewayProcess) -> None:
    """``GET /_dev/notifications`` returns all devices' notifications oldest first, ``limit``
    at a time, with ``next`` to continue from."""
    ids = [f"n{number}" for number in range(7)]
    send_encrypted(gateway, *(encrypted_item(item_id) for item_id in ids))

    seen: list[str] = []
    cursor = 0
    while True:
        page = gateway.notifications(since=cursor, limit=3)
        if not page["notifications"]:
            break
        seen += [r["id"] for r in page["notifications"]]
        cursor = page["next"]
    assert seen == ids
    assert gateway.notifications(since=cursor)["next"] == cursor


def test_the_inbox_can_be_cleared_per_device_or_whole(gateway: GatewayProcess) -> None:
    """``DELETE /_dev/inbox?app_id=&pushkey=`` forgets one device; without parameters, all."""
    keep, drop = new_pushkey(), new_pushkey()
    send_encrypted(gateway, encrypted_item(pushkey=keep), encrypted_item(pushkey=drop))

    one = gateway.http.delete("/_dev/inbox", params={"app_id": APNS_APP, "pushkey": drop})

    assert one.json() == {"deleted": 1}
    assert gateway.inbox(APNS_APP, drop) == []
    assert len(gateway.inbox(APNS_APP, keep)) == 1
    assert gateway.clear() == 1
    assert gateway.notifications()["notifications"] == []


def test_dev_api_parameters_are_checked(gateway: GatewayProcess) -> None:
    """The ``/_dev`` reads say what is missing instead of guessing."""
    assert gateway.http.get("/_dev/inbox", params={"pushkey": "x"}).status_code == 400
    assert gateway.http.get("/_dev/notifications", params={"since": "-1"}).status_code == 400
    assert gateway.http.get("/_dev/notifications", params={"limit": "0"}).status_code == 400
    assert gateway.http.delete("/_dev/inbox", params={"pushkey": "x"}).status_code == 400


def test_stats_count_requests_items_and_outcomes(gateway: GatewayProcess) -> None:
    """``GET /_dev/stats``: requests per endpoint, answers per status, batch sizes, items."""
    send_encrypted(gateway, encrypted_item(), encrypted_item())
    gateway.http.post(ENCRYPTED, json={"notifications": []})
    gateway.http.post(PLAIN_BATCH, json={"notifications": [plain_item()]})

    stats = gateway.stats()

    assert stats["requests"] == 3
    assert stats["requests_by_endpoint"] == {ENCRYPTED: 2, PLAIN_BATCH: 1}
    assert stats["responses_by_status"] == {"200": 2, "400": 1}
    assert stats["batch_sizes"] == {"1": 1, "2": 1}
    assert stats["items_received"] == 3
    assert stats["items_accepted"] == 3
    assert stats["notifications_recorded"] == 3
    assert stats["inbox"]["notifications"] == 3


# --- bounds and the JSON-lines file --------------------------------------------------------------


@pytest.fixture(scope="module")
def small_gateway(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A gateway keeping 3 notifications per device and 5 in all, recording to a file."""
    workdir = tmp_path_factory.mktemp("small")
    record = workdir / "received.jsonl"
    args = ["--inbox-per-device", "3", "--inbox-total", "5", "--record", str(record)]
    with GatewayProcess(workdir, pki=pki, args=args) as running:
        yield running, record


def test_the_inbox_keeps_the_newest_per_device_and_in_all(small_gateway: tuple) -> None:
    """Past the bounds the oldest notifications are dropped first, per device and overall."""
    gateway, _ = small_gateway
    gateway.clear()
    gateway.reset_stats()
    first, second = new_pushkey(), new_pushkey()
    send_encrypted(gateway, *(encrypted_item(f"a{n}", pushkey=first) for n in range(5)))

    assert [r["id"] for r in gateway.inbox(APNS_APP, first)] == ["a2", "a3", "a4"]

    send_encrypted(gateway, *(encrypted_item(f"b{n}", pushkey=second) for n in range(3)))

    assert [r["id"] for r in gateway.inbox(APNS_APP, first)] == ["a3", "a4"]
    assert [r["id"] for r in gateway.inbox(APNS_APP, second)] == ["b0", "b1", "b2"]
    all_ids = [r["id"] for r in gateway.notifications()["notifications"]]
    assert all_ids == ["a3", "a4", "b0", "b1", "b2"]
    assert gateway.stats()["inbox"] | {"last_seq": 0} == {
        "notifications": 5,
        "devices": 2,
        "dropped": 3,
        "last_seq": 0,
    }


def test_every_notification_is_appended_to_the_record_file(small_gateway: tuple) -> None:
    """``--record FILE``: one JSON object per line per notification, also those the bounded
    inbox has dropped, with the same fields ``/_dev`` shows."""
    gateway, record = small_gateway
    pushkey = new_pushkey()
    items = [encrypted_item(f"r{n}", pushkey=pushkey) for n in range(4)]

    send_encrypted(gateway, *items)

    lines = [json.loads(line) for line in Path(record).read_text().splitlines()]
    mine = [line for line in lines if line["pushkey"] == pushkey]
    assert [line["id"] for line in mine] == ["r0", "r1", "r2", "r3"]
    assert mine[-3:] == gateway.inbox(APNS_APP, pushkey)
    assert mine[0]["notification"] == items[0]["notification"]
