"""Routing, payloads per platform and priority, and what each provider answer leads to."""

from __future__ import annotations

import time

import httpx
import pytest

from fdpush.gateway import TestPki
from fdpush.testing import ApnsKey, MockApns, MockFcm
from gateway.helpers import (
    ENCRYPTED,
    NOTIFY,
    PLAIN_BATCH,
    assert_spec_response,
    device,
    encrypted_item,
    new_pushkey,
    plain_item,
    plain_notification,
)

from .conftest import (
    APNS_APP,
    APNS_TOPIC,
    FCM_APP,
    FCM_PROJECT,
    KEY_ID,
    OTHER_FCM_APP,
    TEAM_ID,
    StartGateway,
    client_for,
)

ENCRYPTED_KEYS = ("ciphertext", "time_message_encrypted", "key_identifier", "identifier")


def send_one(client: httpx.Client, app_id: str, pushkey: str, **fields: object) -> dict:
    item = encrypted_item("only", pushkey=pushkey, app_id=app_id, **fields)
    response = client.post(ENCRYPTED, json={"notifications": [item]})
    assert response.status_code == 200, response.text
    result: dict = response.json()["results"][0]
    return result


# --- routing and payloads ----------------------------------------------------------------------


@pytest.mark.parametrize(("prio", "apns_priority"), [("high", "10"), ("low", "5")])
def test_apns_push_of_an_encrypted_notification(
    client: httpx.Client, apns: MockApns, prio: str, apns_priority: str
) -> None:
    pushkey = new_pushkey()
    item = encrypted_item(
        "x", pushkey=pushkey, app_id=APNS_APP, prio=prio, identifier="msg-1", counts={"unread": 3}
    )
    response = client.post(ENCRYPTED, json={"notifications": [item]})
    assert response.json()["results"] == [{"id": "x", "status": "success", "rejected": []}]
    [push] = apns.accepted_for(pushkey)
    assert push.headers["apns-topic"] == APNS_TOPIC
    assert push.headers["apns-push-type"] == "alert"
    assert push.headers["apns-priority"] == apns_priority
    assert push.headers["authorization"].startswith("bearer ")
    sent = item["notification"]
    assert {k: push.payload[k] for k in ENCRYPTED_KEYS} == {k: sent[k] for k in ENCRYPTED_KEYS}
    assert push.payload["aps"]["mutable-content"] == 1
    assert push.payload["aps"]["badge"] == 3


@pytest.mark.parametrize(("prio", "android"), [("high", "HIGH"), ("low", "NORMAL")])
def test_fcm_data_message_of_an_encrypted_notification(
    client: httpx.Client, fcm: MockFcm, prio: str, android: str
) -> None:
    pushkey = new_pushkey()
    item = encrypted_item("x", pushkey=pushkey, app_id=FCM_APP, prio=prio, identifier="m")
    response = client.post(ENCRYPTED, json={"notifications": [item]})
    assert response.json()["results"][0]["status"] == "success"
    [message] = fcm.accepted_for(pushkey)
    assert message.project == FCM_PROJECT
    assert message.message["android"] == {"priority": android}
    sent = item["notification"]
    assert message.message["data"] == {k: sent[k] for k in ENCRYPTED_KEYS}
    assert "notification" not in message.message  # a data message: the app decrypts first


def test_plain_notifications_go_to_every_device_in_the_matrix_shape(
    client: httpx.Client, apns: MockApns, fcm: MockFcm
) -> None:
    ios, android = new_pushkey(), new_pushkey()
    notification = plain_notification(
        device(ios, APNS_APP), device(android, FCM_APP), prio="low", room_id="!r"
    )
    response = client.post(
        PLAIN_BATCH, json={"notifications": [{"id": "p", **{"notification": notification}}]}
    )
    assert response.json()["results"] == [{"id": "p", "status": "success", "rejected": []}]
    [push] = apns.accepted_for(ios)
    assert push.payload["event_id"] == notification["event_id"]
    assert push.payload["content"] == notification["content"]
    assert push.headers["apns-priority"] == "5"
    [message] = fcm.accepted_for(android)
    assert message.message["data"]["event_id"] == notification["event_id"]
    assert message.message["data"]["room_id"] == "!r"
    assert message.message["android"]["priority"] == "NORMAL"


def test_an_unconfigured_app_fails_clearly_and_is_not_rejected(
    client: httpx.Client, apns: MockApns
) -> None:
    result = send_one(client, "com.unknown.app.apns", new_pushkey())
    assert result["status"] == "failed"
    assert result["rejected"] == []
    assert "no push credentials configured" in result["error"].lower()
    assert apns.received == []


def test_notify_to_an_unconfigured_app_is_500(client: httpx.Client) -> None:
    notification = plain_notification(device(app_id="com.unknown.app.apns"))
    response = client.post(NOTIFY, json={"notification": notification})
    assert response.status_code == 500
    assert response.json()["error"] == "Unexpected failure during processing."
    assert_spec_response(NOTIFY, 500, response.json())


# --- classification of provider answers --------------------------------------------------------


@pytest.mark.parametrize("reason", ["Unregistered", "ExpiredToken", "BadDeviceToken"])
def test_apns_dead_token_answers_reject(client: httpx.Client, apns: MockApns, reason: str) -> None:
    dead = new_pushkey()
    apns.kill(dead, reason)
    result = send_one(client, APNS_APP, dead)
    assert result["status"] == "failed"
    assert result["rejected"] == [dead]


def test_fcm_unregistered_rejects(client: httpx.Client, fcm: MockFcm) -> None:
    dead = new_pushkey()
    fcm.kill(dead)
    result = send_one(client, FCM_APP, dead)
    assert result == {
        "id": "only",
        "status": "failed",
        "rejected": [dead],
        "error": "Pushkey rejected by the push provider",
    }


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (429, "TooManyRequests"),
        (503, "Shutdown"),
        (503, "ServiceUnavailable"),
        (500, "InternalServerError"),
    ],
)
def test_apns_transient_answers_are_retried(
    client: httpx.Client, apns: MockApns, status: int, reason: str
) -> None:
    pushkey = new_pushkey()
    apns.fail_next(2, status, reason)
    result = send_one(client, APNS_APP, pushkey)
    assert result == {"id": "only", "status": "success", "rejected": []}
    assert len(apns.accepted_for(pushkey)) == 1
    assert apns.answers[:2] == [(status, reason), (status, reason)]


@pytest.mark.parametrize("code", ["UNAVAILABLE", "INTERNAL"])
def test_fcm_transient_answers_are_retried(client: httpx.Client, fcm: MockFcm, code: str) -> None:
    pushkey = new_pushkey()
    fcm.fail_next(2, code)
    result = send_one(client, FCM_APP, pushkey)
    assert result["status"] == "success"
    assert len(fcm.accepted_for(pushkey)) == 1


@pytest.mark.parametrize(
    ("status", "reason"),
    [(403, "Forbidden"), (400, "DeviceTokenNotForTopic"), (403, "BadCertificate")],
)
def test_apns_permanent_answers_fail_without_rejecting(
    client: httpx.Client, apns: MockApns, status: int, reason: str
) -> None:
    pushkey = new_pushkey()
    apns.fail_next(1, status, reason)
    result = send_one(client, APNS_APP, pushkey)
    assert result["status"] == "failed"
    assert result["rejected"] == []
    assert reason in result["error"]
    assert len(apns.answers) == 1  # not retried
    # And the pushkey is not remembered as dead: the next notification goes through.
    assert send_one(client, APNS_APP, pushkey)["status"] == "success"


@pytest.mark.parametrize(
    "code", ["INVALID_ARGUMENT", "SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR"]
)
def test_fcm_permanent_answers_fail_without_rejecting(
    client: httpx.Client, fcm: MockFcm, code: str
) -> None:
    pushkey = new_pushkey()
    fcm.fail_next(1, code)
    result = send_one(client, FCM_APP, pushkey)
    assert result["status"] == "failed"
    assert result["rejected"] == []
    assert code in result["error"]
    assert send_one(client, FCM_APP, pushkey)["status"] == "success"


def test_lasting_outage_fails_within_the_deadline_never_rejects(
    start_gateway: StartGateway, pki: TestPki, apns: MockApns
) -> None:
    gateway = start_gateway(delivery={"answer_within_seconds": 1.0})
    apns.fail_next(10_000, 503, "ServiceUnavailable")
    pushkey = new_pushkey()
    with client_for(gateway, pki) as http:
        result = send_one(http, APNS_APP, pushkey)
    assert result["status"] == "failed"
    assert result["rejected"] == []
    assert "did not accept it within 1 s: 503 ServiceUnavailable" in result["error"]
    assert len(apns.answers) >= 2  # retried meanwhile


def test_an_attempt_cut_by_the_deadline_still_names_the_providers_answer(
    start_gateway: StartGateway, pki: TestPki, apns: MockApns
) -> None:
    # The first 503 takes 0.6 s; the retry after it cannot finish by the 1 s deadline. The error
    # must still say what the provider answered, not only that the last attempt ran out of time.
    gateway = start_gateway(delivery={"answer_within_seconds": 1.0})
    apns.fail_next(10_000, 503, "ServiceUnavailable")
    apns.latency = 0.6
    with client_for(gateway, pki) as http:
        result = send_one(http, APNS_APP, new_pushkey())
    assert result["status"] == "failed"
    assert result["error"].endswith(
        "did not accept it within 1 s: 503 ServiceUnavailable, then timeout"
    )


def test_retry_after_is_honoured(client: httpx.Client, apns: MockApns) -> None:
    # A Retry-After longer than the answer time: failed at once, not hammered.
    apns.fail_next(1, 503, "ServiceUnavailable", retry_after=3600)
    result = send_one(client, APNS_APP, new_pushkey())
    assert result["status"] == "failed"
    assert len(apns.answers) == 1


def test_goaway_and_connection_loss_are_retried(client: httpx.Client, apns: MockApns) -> None:
    first, second = new_pushkey(), new_pushkey()
    opened = apns.server.connections_opened
    apns.goaway_next(1)
    assert send_one(client, APNS_APP, first)["status"] == "success"
    apns.server.drop_connections()
    assert send_one(client, APNS_APP, second)["status"] == "success"
    assert len(apns.accepted_for(first)) == len(apns.accepted_for(second)) == 1
    assert apns.server.connections_opened >= opened + 2


def test_fcm_quota_pauses_that_app_only(
    start_gateway: StartGateway, pki: TestPki, fcm: MockFcm, apns: MockApns
) -> None:
    # A gateway of its own: the pause would outlast this test.
    with client_for(start_gateway(), pki) as client:
        fcm.fail_next(1, "QUOTA_EXCEEDED", retry_after=30)
        result = send_one(client, FCM_APP, new_pushkey())
        assert result["status"] == "failed"
        assert "QUOTA_EXCEEDED" in result["error"]
        # The app stays paused at least a minute (FCM's guidance): not even asked again ...
        asked = len(fcm.answers)
        later = send_one(client, FCM_APP, new_pushkey())
        assert later["status"] == "failed"
        assert "retry in 6" in later["error"]  # 60 s (at least a minute), not the 30 asked
        assert len(fcm.answers) == asked
        # ... while another project and APNs go on.
        assert send_one(client, OTHER_FCM_APP, new_pushkey())["status"] == "success"
        assert send_one(client, APNS_APP, new_pushkey())["status"] == "success"


def test_plain_item_partial_and_failed(client: httpx.Client, apns: MockApns) -> None:
    dead, live = new_pushkey(), new_pushkey()
    apns.kill(dead)
    items = [
        plain_item("partial", device(live), device(dead)),
        plain_item("all-dead", device(dead)),
        plain_item("one-fails", device(new_pushkey()), device(app_id="none.apns")),
    ]
    response = client.post(PLAIN_BATCH, json={"notifications": items})
    results = {r["id"]: r for r in response.json()["results"]}
    assert results["partial"] == {"id": "partial", "status": "partial", "rejected": [dead]}
    assert results["all-dead"]["status"] == "failed"
    assert results["all-dead"]["rejected"] == [dead]
    assert results["one-fails"]["status"] == "failed"
    assert results["one-fails"]["error"].startswith("1 of 2 devices not reached")
    assert response.json()["summary"] == {"total": 3, "successful": 0, "failed": 2, "partial": 1}


def test_notify_with_a_transient_failure_is_503_with_retry_after(
    client: httpx.Client, apns: MockApns
) -> None:
    apns.fail_next(1, 503, "ServiceUnavailable", retry_after=3600)
    response = client.post(NOTIFY, json={"notification": plain_notification(device())})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "Push Gateway under maintenance or overloaded."
    assert_spec_response(NOTIFY, 503, response.json())


def test_a_provider_that_does_not_answer_fails_in_time_and_the_connection_recovers(
    start_gateway: StartGateway, pki: TestPki, apns: MockApns
) -> None:
    gateway = start_gateway(delivery={"answer_within_seconds": 1.0})
    with client_for(gateway, pki) as http:
        assert send_one(http, APNS_APP, new_pushkey())["status"] == "success"
        opened = apns.server.connections_opened
        apns.latency = 3.0
        started = time.monotonic()
        result = send_one(http, APNS_APP, new_pushkey())
        assert time.monotonic() - started < 2.5
        assert result["status"] == "failed"
        assert "timeout" in result["error"]
        apns.latency = 0.0
        assert send_one(http, APNS_APP, new_pushkey())["status"] == "success"
        assert apns.server.connections_opened == opened  # the same connection, not a new one


def test_an_app_configured_for_background_pushes_gets_them_alert_less(
    start_gateway: StartGateway, pki: TestPki, apns: MockApns, keys: dict[str, ApnsKey]
) -> None:
    app = {
        "app_id": APNS_APP,
        "key_file": keys[KEY_ID].path,
        "key_id": KEY_ID,
        "team_id": TEAM_ID,
        "push_type": "background",
    }
    gateway = start_gateway(apns_apps=[app])
    pushkey = new_pushkey()
    with client_for(gateway, pki) as http:
        assert send_one(http, APNS_APP, pushkey, prio="high")["status"] == "success"
    [push] = apns.accepted_for(pushkey)
    assert push.headers["apns-push-type"] == "background"
    assert push.headers["apns-priority"] == "5"
    assert push.payload["aps"] == {"content-available": 1}
    assert len(push.payload["ciphertext"]) == 1404


def test_seed_era_notify_carries_the_encrypted_fields(client: httpx.Client, fcm: MockFcm) -> None:
    pushkey = new_pushkey()
    sealed = encrypted_item(pushkey=pushkey, app_id=FCM_APP)["notification"]
    notification = {
        "devices": [device(pushkey, FCM_APP)],
        **{k: sealed[k] for k in ("ciphertext", "time_message_encrypted", "key_identifier")},
    }
    response = client.post("/_matrix/push/v1/notify", json={"notification": notification})
    assert response.json() == {"rejected": []}
    [message] = fcm.accepted_for(pushkey)
    assert message.message["data"]["ciphertext"] == sealed["ciphertext"]
    assert message.message["android"]["priority"] == "HIGH"  # prio optional, high by default
