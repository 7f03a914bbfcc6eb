"""The production gateway's HTTP face: mTLS, the spec's error bodies and limits, health, metrics.

Error bodies and results are checked against ``push_gateway_openapi.yaml`` itself.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest

from fdpush.gateway import TestPki, make_test_pki
from fdpush.gateway.production import ProductionGatewayThread
from fdpush.testing import MockApns, MockFcm
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

from .conftest import APNS_APP, FCM_APP, StartGateway, client_for

# --- mutual TLS --------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [ENCRYPTED, PLAIN_BATCH, NOTIFY])
def test_without_a_client_certificate_401_with_the_spec_body(
    gateway: ProductionGatewayThread, pki: TestPki, endpoint: str
) -> None:
    with client_for(gateway, pki, with_client_cert=False) as http:
        response = http.post(endpoint, json={"notifications": [encrypted_item()]})
    assert response.status_code == 401
    assert response.json() == {"error": "Missing or invalid mutual TLS (mTLS) certificate."}
    assert_spec_response(endpoint, 401, response.json())


def test_a_certificate_of_another_ca_never_reaches_the_app(
    gateway: ProductionGatewayThread, pki: TestPki, tmp_path: Any
) -> None:
    stranger = make_test_pki(tmp_path / "stranger")
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(stranger.client_cert), str(stranger.client_key))
    with (
        httpx.Client(base_url=gateway.url, verify=context) as http,
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
    ):
        http.post(ENCRYPTED, json={"notifications": [encrypted_item()]})


def test_allowed_subjects_let_in_only_the_named_fachdienste(
    start_gateway: StartGateway, pki: TestPki, apns: MockApns
) -> None:
    listen = {"allowed_subjects": ["CN=another.fachdienst.test"]}
    closed = start_gateway(listen=listen)
    with client_for(closed, pki) as http:
        response = http.post(ENCRYPTED, json={"notifications": [encrypted_item()]})
    assert response.status_code == 401
    assert apns.received == []
    opened = start_gateway(listen={"allowed_subjects": ["CN=erp.fachdienst.test"]})
    with client_for(opened, pki) as http:
        response = http.post(ENCRYPTED, json={"notifications": [encrypted_item()]})
    assert response.status_code == 200


# --- the spec's 400s, in its priority order ---------------------------------------------------


def test_invalid_data_format_first(client: httpx.Client) -> None:
    # Also too many items and duplicate ids: the schema error wins.
    items = [encrypted_item("same") for _ in range(101)]
    items[0]["notification"]["ciphertext"] = "short"
    response = client.post(ENCRYPTED, json={"notifications": items})
    assert response.status_code == 400
    assert response.json()["error"] == "Invalid data format"
    assert_spec_response(ENCRYPTED, 400, response.json())


def test_not_json_is_invalid_data_format(client: httpx.Client) -> None:
    response = client.post(ENCRYPTED, content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"] == "Invalid data format"


def test_batch_size_before_duplicates(client: httpx.Client) -> None:
    items = [encrypted_item("same") for _ in range(101)]
    response = client.post(ENCRYPTED, json={"notifications": items})
    assert response.status_code == 400
    assert response.json() == {
        "error": "Batch size exceeds maximum limit",
        "details": {"max_batch_size": 100},
    }
    assert_spec_response(ENCRYPTED, 400, response.json())


def test_duplicates_before_item_size(client: httpx.Client) -> None:
    big = encrypted_item("big")
    big["notification"]["device"]["tweaks"] = {"pad": "x" * 70_000}
    items = [encrypted_item("same"), encrypted_item("same"), big]
    response = client.post(ENCRYPTED, json={"notifications": items})
    assert response.status_code == 400
    assert response.json()["error"] == "Duplicate notification IDs in batch"
    assert response.json()["details"] == {"duplicate_ids": ["same"]}


def test_individual_notification_too_large(client: httpx.Client, apns: MockApns) -> None:
    big = plain_item("big")
    big["notification"]["content"] = {"pad": "x" * 70_000}
    response = client.post(PLAIN_BATCH, json={"notifications": [plain_item("ok"), big]})
    assert response.status_code == 400
    assert response.json() == {
        "error": "Individual notification too large",
        "details": {"max_notification_size_kb": 64},
    }
    assert_spec_response(PLAIN_BATCH, 400, response.json())
    assert apns.received == []  # nothing of a refused batch is sent


# --- sizes -------------------------------------------------------------------------------------


def test_a_256_kb_batch_is_accepted(client: httpx.Client, apns: MockApns) -> None:
    items = [encrypted_item() for _ in range(100)]
    for item in items:
        item["notification"]["device"]["tweaks"] = {"pad": "x" * 1200}
    body = {"notifications": items}
    size = len(httpx.Request("POST", "/", json=body).content)
    assert size > 256 * 1024
    response = client.post(ENCRYPTED, json=body)
    assert response.status_code == 200
    assert response.json()["summary"]["successful"] == 100, response.json()["results"][:2]
    assert len(apns.received) == 100


@pytest.mark.parametrize(
    ("endpoint", "error"),
    [
        (ENCRYPTED, "Batch request payload is too large."),
        (NOTIFY, "Notification object is too large."),
    ],
)
def test_over_the_request_cap_413(client: httpx.Client, endpoint: str, error: str) -> None:
    response = client.post(endpoint, content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.json() == {"error": error, "details": {"max_request_size_kb": 1024}}
    assert_spec_response(endpoint, 413, response.json())


# --- answers match the spec --------------------------------------------------------------------


def test_batch_answers_are_the_spec_shape_in_request_order(
    client: httpx.Client, apns: MockApns, fcm: MockFcm
) -> None:
    ids = ["z", "a", "m", "b"]
    apps = [APNS_APP, FCM_APP, "no.such.app.apns", FCM_APP]
    items = [encrypted_item(i, app_id=app) for i, app in zip(ids, apps, strict=True)]
    response = client.post(ENCRYPTED, json={"notifications": items})
    assert response.status_code == 200
    body = response.json()
    assert_spec_response(ENCRYPTED, 200, body)
    assert [r["id"] for r in body["results"]] == ids
    assert body["summary"] == {"total": 4, "successful": 3, "failed": 1, "partial": 0}


def test_notify_answers_rejected(client: httpx.Client, apns: MockApns) -> None:
    dead = new_pushkey()
    apns.kill(dead)
    notification = plain_notification(device(), device(dead))
    response = client.post(NOTIFY, json={"notification": notification})
    assert response.status_code == 200
    assert response.json() == {"rejected": [dead]}
    assert_spec_response(NOTIFY, 200, response.json())


# --- operations --------------------------------------------------------------------------------


def test_health_and_metrics(gateway: ProductionGatewayThread, pki: TestPki) -> None:
    with client_for(gateway, pki, with_client_cert=False) as http:
        assert http.get("/health/live").json() == {"status": "ok"}
        assert http.get("/health/ready").status_code == 200
        text = http.get("/metrics").text
    for name in (
        "fdpush_gateway_requests_total",
        "fdpush_gateway_deliveries_total",
        "fdpush_gateway_provider_answers_total",
        "fdpush_gateway_provider_latency_seconds",
        "fdpush_gateway_rejection_memory_size",
        "fdpush_gateway_queue_depth",
        "fdpush_gateway_token_refreshes_total",
    ):
        assert name in text
