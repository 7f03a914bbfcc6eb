"""Remembered rejections, provider credentials reused and refreshed, queues and isolation."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from pathlib import Path

import httpx
import pytest

from fdpush.gateway import TestPki
from fdpush.gateway.production import ProductionGatewayThread
from fdpush.gateway.production.tokens import ApnsProviderToken
from fdpush.testing import ApnsKey, MockApns, MockFcm, make_apns_key
from gateway.helpers import (
    ENCRYPTED,
    NOTIFY,
    assert_spec_response,
    device,
    encrypted_item,
    new_pushkey,
    plain_notification,
)

from .conftest import (
    APNS_APP,
    FCM_APP,
    KEY_ID,
    OTHER_APNS_APP,
    TEAM_ID,
    StartGateway,
    client_for,
)
from .test_delivery import send_one


class Offset:
    """A wall clock that runs with real time, plus what a test adds."""

    def __init__(self) -> None:
        self.added = 0.0

    def __call__(self) -> float:
        return time.time() + self.added


# --- the rejection memory ----------------------------------------------------------------------


def test_a_rejection_is_reported_again_on_later_requests(
    client: httpx.Client, apns: MockApns
) -> None:
    dead = new_pushkey()
    apns.kill(dead)
    assert send_one(client, APNS_APP, dead)["rejected"] == [dead]
    asked = len(apns.answers)
    for _ in range(2):
        again = send_one(client, APNS_APP, dead)
        assert again["status"] == "failed"
        assert again["rejected"] == [dead]
    response = client.post(NOTIFY, json={"notification": plain_notification(device(dead))})
    assert response.json() == {"rejected": [dead]}
    assert len(apns.answers) == asked  # answered from memory, the provider not asked again


def test_the_memory_is_per_app(client: httpx.Client, apns: MockApns) -> None:
    dead = new_pushkey()
    apns.kill(dead)
    send_one(client, APNS_APP, dead)
    apns.reset()
    assert send_one(client, OTHER_APNS_APP, dead)["status"] == "success"


def test_the_memory_expires(
    start_gateway: StartGateway, pki: TestPki, keys: dict[str, ApnsKey]
) -> None:
    wall = Offset()
    with MockApns(pki, clock=wall) as apns:
        apns.add_key(keys[KEY_ID], topics=["de.gematik.erezept"])
        gateway = start_gateway(
            wall_clock=wall,
            delivery={"rejection_memory_hours": 1},
            apns={"url": apns.url, "ca_file": pki.ca_cert},
        )
        dead = new_pushkey()
        apns.kill(dead)
        with client_for(gateway, pki) as http:
            assert send_one(http, APNS_APP, dead)["rejected"] == [dead]
            apns.reset()  # the token is alive again (the app re-registered the same one)
            assert send_one(http, APNS_APP, dead)["rejected"] == [dead]
            wall.added = 3601
            assert send_one(http, APNS_APP, dead)["status"] == "success"


def test_the_memory_survives_a_restart(
    start_gateway: StartGateway, pki: TestPki, apns: MockApns, tmp_path: Path
) -> None:
    memory_file = tmp_path / "rejected.txt"
    dead = new_pushkey()
    apns.kill(dead)
    first = start_gateway(delivery={"rejection_memory_file": memory_file})
    with client_for(first, pki) as http:
        assert send_one(http, APNS_APP, dead)["rejected"] == [dead]
    first.stop()
    assert dead not in memory_file.read_text()  # digests only
    apns.reset()
    second = start_gateway(delivery={"rejection_memory_file": memory_file})
    with client_for(second, pki) as http:
        assert send_one(http, APNS_APP, dead)["rejected"] == [dead]
    assert apns.answers == []


# --- provider credentials ----------------------------------------------------------------------


def test_the_apns_provider_token_is_reused_then_refreshed(
    pki: TestPki, keys: dict[str, ApnsKey], start_gateway: StartGateway
) -> None:
    wall = Offset()
    # A mock of its own whose clock moves with the gateway's.
    with MockApns(pki, clock=wall) as apns:
        apns.add_key(keys[KEY_ID], topics=["de.gematik.erezept"])
        gateway = start_gateway(wall_clock=wall, apns={"url": apns.url, "ca_file": pki.ca_cert})
        with client_for(gateway, pki) as http:
            items = [encrypted_item(app_id=APNS_APP) for _ in range(50)]
            response = http.post(ENCRYPTED, json={"notifications": items})
            assert response.json()["summary"]["successful"] == 50
            assert len(apns.tokens_seen) == 1
            wall.added = 19 * 60  # still young: reused
            assert send_one(http, APNS_APP, new_pushkey())["status"] == "success"
            assert len(apns.tokens_seen) == 1
            wall.added = 41 * 60  # due (40 minutes): a new one, accepted
            assert send_one(http, APNS_APP, new_pushkey())["status"] == "success"
            assert len(apns.tokens_seen) == 2
            assert all(status == 200 for status, _ in apns.answers)
        metrics = http_metrics(gateway, pki)
        assert (
            f'fdpush_gateway_token_refreshes_total{{app_id="{APNS_APP}",provider="apns"}} 2.0'
            in metrics
        )


def test_an_apns_token_is_never_refreshed_faster_than_20_minutes(tmp_path: Path) -> None:
    key = make_apns_key(tmp_path, team_id=TEAM_ID, key_id=KEY_ID)
    now = [1_000_000.0]
    token = ApnsProviderToken(
        key.path.read_bytes(), KEY_ID, TEAM_ID, refresh_after=5, clock=lambda: now[0]
    )
    first = token.current()
    now[0] += 600
    assert token.current() == first  # refresh_after below 20 minutes is raised to 20
    assert token.refused(first) is False  # refused at 10 minutes: kept, not replaced
    now[0] += 601
    assert token.refused(first) is True
    assert token.current() != first


def test_an_expired_provider_token_answer_fails_instead_of_churning_tokens(
    client: httpx.Client, apns: MockApns
) -> None:
    # A push first, so that the gateway has made its token whichever tests ran before.
    assert send_one(client, APNS_APP, new_pushkey())["status"] == "success"
    before = len(apns.tokens_seen)
    assert before >= 1
    apns.fail_next(1, 403, "ExpiredProviderToken")
    result = send_one(client, APNS_APP, new_pushkey())
    assert result["status"] == "failed"
    assert "ExpiredProviderToken" in result["error"]
    assert len(apns.tokens_seen) == before


def test_fcm_access_token_cached_then_renewed(
    start_gateway: StartGateway, pki: TestPki, tmp_path: Path
) -> None:
    wall = Offset()
    with MockFcm(pki, clock=wall) as fcm:
        account = fcm.add_service_account(tmp_path, "de-gematik-erezept")
        gateway = start_gateway(
            wall_clock=wall,
            fcm={"url": fcm.url, "ca_file": pki.ca_cert},
            fcm_apps=[{"app_id": FCM_APP, "service_account": account}],
        )
        check_fcm_tokens(gateway, pki, fcm, wall)


def check_fcm_tokens(
    gateway: ProductionGatewayThread, pki: TestPki, fcm: MockFcm, wall: Offset
) -> None:
    issued = fcm.tokens_issued
    with client_for(gateway, pki) as http:
        items = [encrypted_item(app_id=FCM_APP) for _ in range(30)]
        assert (
            http.post(ENCRYPTED, json={"notifications": items}).json()["summary"]["successful"]
            == 30
        )
        assert fcm.tokens_issued == issued + 1  # one exchange for 30 concurrent pushes
        wall.added = 3300  # within five minutes of expiry: renewed before it runs out
        assert send_one(http, FCM_APP, new_pushkey())["status"] == "success"
        assert fcm.tokens_issued == issued + 2
        fcm.expire_access_tokens()  # FCM refuses the token (401): a new one, and retried
        assert send_one(http, FCM_APP, new_pushkey())["status"] == "success"
        assert fcm.tokens_issued == issued + 3


def http_metrics(gateway: ProductionGatewayThread, pki: TestPki) -> str:
    with client_for(gateway, pki, with_client_cert=False) as http:
        return http.get("/metrics").text


# --- queues and isolation ----------------------------------------------------------------------


def test_a_full_queue_answers_503_with_retry_after(
    start_gateway: StartGateway, pki: TestPki, apns: MockApns
) -> None:
    gateway = start_gateway(delivery={"queue_per_provider": 10, "overload_retry_after_seconds": 7})
    apns.latency = 1.0
    with client_for(gateway, pki) as http:
        too_many = [encrypted_item(app_id=APNS_APP) for _ in range(11)]
        response = http.post(ENCRYPTED, json={"notifications": too_many})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        assert response.json() == {"error": "Push Gateway under maintenance or overloaded."}
        assert_spec_response(ENCRYPTED, 503, response.json())
        assert apns.received == []  # refused whole

        answers: list[httpx.Response] = []
        first = threading.Thread(
            target=lambda: answers.append(
                http.post(
                    ENCRYPTED,
                    json={"notifications": [encrypted_item(app_id=APNS_APP) for _ in range(8)]},
                )
            )
        )
        first.start()
        deadline = time.monotonic() + 5
        while 'fdpush_gateway_queue_depth{provider="apns"} 8.0' not in http_metrics(gateway, pki):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        busy = http.post(
            ENCRYPTED, json={"notifications": [encrypted_item(app_id=APNS_APP) for _ in range(3)]}
        )
        assert busy.status_code == 503
        fcm_goes = http.post(ENCRYPTED, json={"notifications": [encrypted_item(app_id=FCM_APP)]})
        assert fcm_goes.status_code == 200  # the other provider's queue is its own
        first.join()
    assert answers[0].json()["summary"]["successful"] == 8


def test_a_slow_app_does_not_block_another(
    start_gateway: StartGateway, pki: TestPki, apns: MockApns
) -> None:
    gateway = start_gateway(apns={"streams_per_app": 2})
    apns.topic_latency["de.gematik.erezept"] = 2.0
    with client_for(gateway, pki) as slow_client, client_for(gateway, pki) as other_client:
        slow_answer: list[httpx.Response] = []
        slow = threading.Thread(
            target=lambda: slow_answer.append(
                slow_client.post(
                    ENCRYPTED,
                    json={"notifications": [encrypted_item(app_id=APNS_APP) for _ in range(4)]},
                )
            )
        )
        started = time.monotonic()
        slow.start()
        deadline = time.monotonic() + 5
        while 'fdpush_gateway_queue_depth{provider="apns"} 4.0' not in http_metrics(gateway, pki):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        quick = send_one(other_client, OTHER_APNS_APP, new_pushkey())
        quick_time = time.monotonic() - started
        assert quick["status"] == "success"
        assert quick_time < 1.5  # not behind the slow app's four pushes (2 streams, 2 s each)
        slow.join()
    assert slow_answer[0].json()["summary"]["successful"] == 4


# --- logs --------------------------------------------------------------------------------------


def test_logs_carry_no_pushkey_and_no_ciphertext(
    client: httpx.Client, apns: MockApns, caplog: pytest.LogCaptureFixture
) -> None:
    # Hex pushkeys, as APNs tokens are: they appear unquoted in request paths.
    dead, failing, live = secrets.token_hex(32), secrets.token_hex(32), secrets.token_hex(32)
    apns.kill(dead)
    caplog.set_level(logging.DEBUG)
    items = [
        encrypted_item("d", pushkey=dead, app_id=APNS_APP),
        encrypted_item("u", pushkey=failing, app_id="nowhere.apns"),
        encrypted_item("l", pushkey=live, app_id=APNS_APP),
        encrypted_item("f", pushkey=live, app_id=FCM_APP),
    ]
    client.post(ENCRYPTED, json={"notifications": items})
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "pushkey rejected" in text
    secrets_ = [dead, failing, live, *apns.tokens_seen]
    secrets_ += [item["notification"]["ciphertext"] for item in items]
    for secret in secrets_:
        leaks = [r.name for r in caplog.records if secret in f"{r.getMessage()} {r.__dict__}"]
        assert not leaks, f"logged by {leaks}"


def test_stopping_answers_the_requests_in_flight_first(
    start_gateway: StartGateway, pki: TestPki, apns: MockApns
) -> None:
    gateway = start_gateway()
    apns.latency = 1.0
    answers: list[httpx.Response] = []
    with client_for(gateway, pki) as http:
        sending = threading.Thread(
            target=lambda: answers.append(
                http.post(ENCRYPTED, json={"notifications": [encrypted_item(app_id=APNS_APP)]})
            )
        )
        sending.start()
        deadline = time.monotonic() + 5
        while 'fdpush_gateway_queue_depth{provider="apns"} 1.0' not in http_metrics(gateway, pki):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gateway.stop()
        sending.join()
    assert answers[0].status_code == 200
    assert answers[0].json()["summary"]["successful"] == 1
