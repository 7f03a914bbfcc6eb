"""The ZETA Notification Service's RS API (``/notification-service/v1``) over real HTTP.

The real ``fdpush serve`` (SQLite and PostgreSQL) delivering to a development gateway over
mutual TLS; the Fachdienst's backend calls with the internal API key (the development technical
user, allowed every channel). Every answer is checked against gematik's OpenAPI file: its
status documented for that operation, its body and headers as documented there.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
import yaml

from conftest import Service
from delivery.e2e_helpers import (
    ACTIVATE,
    CLOSE,
    COMMUNICATION,
    AppDevice,
    Rig,
    delivery_env,
    free_gateway_port,
    internal_client,
    wait_for,
)
from fdpush.gateway import GatewayThread, TestPki

RS = "/notification-service/v1"
SPEC = Path(__file__).parents[2] / "spec" / "zeta" / "notification-service-rs-endpoint.yaml"


@functools.cache
def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return spec


def _validate(value: Any, ref: str) -> None:
    schema = {"$ref": ref, "components": _spec()["components"]}
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())


def check_schema(value: Any, component: str) -> None:
    """``value`` is valid against ``#/components/schemas/<component>`` of the spec."""
    _validate(value, f"#/components/schemas/{component}")


# What the spec documents per operation, by the path as requested.
_OPERATIONS = [
    (re.compile(re.escape(RS) + r"/users/[^/]+/channels"), "/users/{userId}/channels"),
    (re.compile(re.escape(RS) + r"/notifications"), "/notifications"),
]


def check_documented(response: httpx.Response) -> None:
    """An answer of an RS endpoint is one the spec documents for that operation: its status is
    listed, its body valid against that response's schema, its documented headers present and
    valid. Outside the operations (unknown paths or methods): an ``Error``."""
    operation = None
    for pattern, template in _OPERATIONS:
        if pattern.fullmatch(response.request.url.path):
            path_item = _spec()["paths"][template]
            operation = path_item.get(response.request.method.lower())
    if operation is None:
        check_schema(response.json(), "Error")
        return
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{response.status_code} is not documented: {response.text}"
    if "$ref" in documented:
        documented = _spec()["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    assert response.headers["content-type"] == "application/json"
    schema = documented["content"]["application/json"]["schema"]
    _validate(response.json(), schema["$ref"])
    for name, header in documented.get("headers", {}).items():
        assert name in response.headers, f"{response.status_code} without {name}"
        jsonschema.validate(int(response.headers[name]), header["schema"])


def kvnr() -> str:
    return random.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + f"{random.randrange(10**9):09d}"


def zeta_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errorCode"] == code, body
    check_documented(response)
    return str(body["errorDetail"])


def notification(user: str, channel: str = ACTIVATE, **fields: Any) -> dict[str, Any]:
    return {
        "user": {"id_type": "kvnr", "value": user},
        "channel": channel,
        "payload": {"message": "Neues Rezept", "n": 1},
        **fields,
    }


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> Iterator[Rig]:
    running = Rig(start_service(**delivery_env(pki, [gateway])))
    yield running
    running.close()


def post(rig: Rig, body: Any, **headers: str) -> httpx.Response:
    """POST /notifications; the answer is checked against what the spec documents for it."""
    if isinstance(body, bytes):
        response = rig.events.post(RS + "/notifications", content=body, headers=headers)
    else:
        response = rig.events.post(RS + "/notifications", json=body, headers=headers)
    check_documented(response)
    return response


def events_of(rig: Rig, user: str) -> int:
    [(count,)] = rig.service.query(
        "SELECT count(*) FROM events WHERE user_id = ?", (rig.service.pseudonym(user),)
    )
    return int(count)


def test_a_notification_reaches_every_enabled_device_with_low_prio(
    rig: Rig, gateway: GatewayThread
) -> None:
    user = kvnr()
    phone, tablet = AppDevice(user, gateway), AppDevice(user, gateway)
    rig.register(phone)
    rig.register(tablet)
    response = post(rig, notification(user, reference="evt-2026-0001"))
    assert response.status_code == 202, response.text
    answer = response.json()
    check_schema(answer, "NotificationAccepted")
    assert answer["status"] == "queued"
    assert answer["channel"] == ACTIVATE
    assert str(uuid.UUID(answer["notification_id"])) == answer["notification_id"]
    accepted = datetime.fromisoformat(answer["accepted_at"])
    assert accepted.utcoffset() is not None and accepted.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    event_id = uuid.UUID(answer["notification_id"]).hex
    rig.delivered(event_id, 2)
    for device in (phone, tablet):
        (received,) = device.inbox()
        assert device.decrypt(received) == {"message": "Neues Rezept", "n": 1}
        assert received.prio == "low"  # normal → the gateway's low
        assert received.notification["identifier"] == "evt-2026-0001"


def test_high_prio_stays_high(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    device = AppDevice(user, gateway)
    rig.register(device)
    response = post(rig, notification(user, prio="high"))
    assert response.status_code == 202, response.text
    rig.delivered(uuid.UUID(response.json()["notification_id"]).hex, 1)
    assert [r.prio for r in device.inbox()] == ["high"]


def test_no_active_channel_sends_nothing(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    response = post(rig, notification(user, CLOSE))  # default disabled
    assert response.status_code == 202, response.text
    check_schema(response.json(), "NotificationAccepted")
    assert response.json()["status"] == "no_active_channel"
    rows = rig.service.query(
        "SELECT count(*) FROM notifications n JOIN events e ON e.id = n.event_id"
        " WHERE e.user_id = ?",
        (rig.service.pseudonym(user),),
    )
    assert rows == [(0,)]


def test_a_user_without_devices_is_not_found(rig: Rig) -> None:
    user = kvnr()
    zeta_error(post(rig, notification(user)), 404, "USER_NOT_FOUND")
    zeta_error(
        rig.events.get(f"{RS}/users/{user}/channels", params={"id_type": "kvnr"}),
        404,
        "USER_NOT_FOUND",
    )
    assert events_of(rig, user) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        {"user": {"id_type": "kvnr", "value": "X123456789"}, "channel": ACTIVATE},
        {**notification("X123456789"), "extra": 1},
        notification("X123456789", prio="urgent"),
        notification("X123456789", reference="r" * 129),
        notification("X123456789", reference="a\x00b"),
        notification("X123456789", channel="erp.task\x00.activate"),
        {**notification("X123456789"), "user": {"id_type": "email", "value": "X123456789"}},
        {**notification("X123456789"), "user": {"id_type": "kvnr", "value": "x123456789"}},
        {**notification("X123456789"), "user": {"id_type": "kvnr", "value": "5-2-KH-1"}},
        {**notification("X123456789"), "user": {"id_type": "telematik-id", "value": "-bad"}},
        {**notification("X123456789"), "payload": [1]},
        # deeper than orjson writes back (254 levels), not deeper than it reads
        (
            '{"user":{"id_type":"kvnr","value":"X123456789"},"channel":"erp.task.activate",'
            '"payload":' + '{"a":' * 300 + "1" + "}" * 300 + "}"
        ).encode(),
        # 400 comes before 422: an unknown channel does not hide a bad user
        {**notification("X12345678"), "channel": "no.such.channel"},
    ],
)
def test_bad_input_is_invalid_param(rig: Rig, body: Any) -> None:
    zeta_error(post(rig, body), 400, "INVALID_PARAM")


def test_order_401_before_400_and_422_before_404(rig: Rig) -> None:
    with internal_client(rig.service.base_url, key=None) as anonymous:
        response = anonymous.post(RS + "/notifications", content=b"not json")
    zeta_error(response, 401, "UNAUTHENTICATED")
    with internal_client(rig.service.base_url, key="wrong-key") as stranger:
        response = stranger.post(RS + "/notifications", json=notification(kvnr()))
    zeta_error(response, 401, "UNAUTHENTICATED")
    zeta_error(post(rig, notification(kvnr(), "no.such.channel")), 422, "UNKNOWN_CHANNEL")


def test_a_payload_too_large_for_the_frame_is_413(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    body = notification(user, payload={"p": "x" * 1100})
    detail = zeta_error(post(rig, body), 413, "PAYLOAD_TOO_LARGE")
    assert "1018" in detail
    assert events_of(rig, user) == 0
    fits = notification(user, payload={"p": "x" * (1018 - len('{"p":""}'))})
    assert post(rig, fits).status_code == 202


def test_the_service_says_it_runs_without_technical_users(rig: Rig) -> None:
    assert "without client certificates" in rig.service.logs()


def test_unknown_paths_and_methods_answer_in_zeta_shape(rig: Rig) -> None:
    for path in ("/nothing", "", "/", "/%6eotifications", "/users/X123456789/%63hannels"):
        zeta_error(rig.events.get(RS + path), 404, "NOT_FOUND")
    for method in ("GET", "PUT", "DELETE"):
        zeta_error(rig.events.request(method, RS + "/notifications"), 405, "METHOD_NOT_ALLOWED")
    zeta_error(rig.events.post(RS + "/users/X123456789/channels"), 405, "METHOD_NOT_ALLOWED")


def test_an_oversized_body_is_payload_too_large_in_zeta_shape(rig: Rig) -> None:
    """Over FDPUSH_MAX_BODY_BYTES (64 KiB), declared or streamed without a length: refused
    before the RS API reads it, in ZETA's shape; the events API beside it keeps Matrix's."""
    user = kvnr()
    body = orjson.dumps(notification(user, payload={"p": "x" * 70_000}))
    zeta_error(post(rig, body), 413, "PAYLOAD_TOO_LARGE")
    chunks = iter([body[:30_000], body[30_000:]])  # a generator: sent chunked, no length
    zeta_error(rig.events.post(RS + "/notifications", content=chunks), 413, "PAYLOAD_TOO_LARGE")
    matrix = rig.events.post("/internal/v1/events", content=body)
    assert matrix.status_code == 413 and matrix.json()["errcode"] == "M_TOO_LARGE"
    assert events_of(rig, user) == 0


def test_the_content_type_is_not_looked_at_only_the_body(rig: Rig, gateway: GatewayThread) -> None:
    """JSON is read whatever the Content-Type says; a body that is not JSON is INVALID_PARAM."""
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    as_text = orjson.dumps(notification(user))
    assert post(rig, as_text, **{"Content-Type": "text/plain"}).status_code == 202
    form = b"user=X123456789&channel=erp.task.activate"
    zeta_error(
        post(rig, form, **{"Content-Type": "application/x-www-form-urlencoded"}),
        400,
        "INVALID_PARAM",
    )


def exchange(service: Service, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send raw bytes (a head an HTTP client would refuse to send); the status and JSON body."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):  # the service closes after a 431
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)


@pytest.mark.parametrize("too_much", ["size", "fields"])
def test_a_request_head_over_the_bounds_is_431_in_zeta_shape(rig: Rig, too_much: str) -> None:
    """Over FDPUSH_MAX_HEADER_BYTES (32 KiB) or FDPUSH_MAX_HEADER_FIELDS (100): 431 before any
    routing, in ZETA's shape for the RS API and Matrix's for the rest."""
    if too_much == "size":
        fields = b"X-Big: " + b"a" * 40_000 + b"\r\n"
    else:
        fields = b"".join(f"X-F{k}: v\r\n".encode() for k in range(120))
    for target, shape in ((RS + "/notifications", "errorCode"), ("/internal/v1/events", "errcode")):
        request = f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + fields + b"\r\n"
        status, body = exchange(rig.service, request)
        assert status == 431, body
        assert shape in body, body
        if shape == "errorCode":
            assert body["errorCode"] == "REQUEST_HEADER_FIELDS_TOO_LARGE"
            check_schema(body, "Error")


# --- GET /users/{userId}/channels ---------------------------------------------------------------


def channels(rig: Rig, user: str, **params: str) -> dict[str, Any]:
    response = rig.events.get(f"{RS}/users/{user}/channels", params={"id_type": "kvnr", **params})
    assert response.status_code == 200, response.text
    check_documented(response)
    body: dict[str, Any] = response.json()
    return body


def test_channels_are_aggregated_over_devices(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    phone, tablet = AppDevice(user, gateway), AppDevice(user, gateway)
    rig.register(phone)
    rig.register(tablet)
    rig.choose(phone, erp_task_activate="disabled", erp_communication_new="enabled")
    rig.choose(tablet, erp_task_activate="disabled", erp_task_close="disabled")
    body = channels(rig, user)
    assert body["user"] == {"id_type": "kvnr", "value": user}
    assert body["has_registered_devices"] is True
    assert body["registered_device_count"] == 2
    assert body["channels"] == [{"id": COMMUNICATION, "status": "enabled"}]
    everything = channels(rig, user, include_inactive="true")
    assert everything["channels"] == [
        {"id": ACTIVATE, "status": "disabled"},
        {"id": COMMUNICATION, "status": "enabled"},
        {"id": CLOSE, "status": "disabled"},
    ]


def test_channels_of_a_device_that_never_chose(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    assert channels(rig, user)["channels"] == [{"id": ACTIVATE, "status": "enabled"}]
    assert channels(rig, user, include_inactive="true")["channels"] == [
        {"id": ACTIVATE, "status": "enabled"},  # the catalog default counts
        {"id": COMMUNICATION, "status": "not_set"},
        {"id": CLOSE, "status": "not_set"},  # nobody chose
    ]


@pytest.mark.parametrize(
    "params",
    [{}, {"id_type": "email"}, {"id_type": "telematik-id", "include_inactive": "yes"}],
)
def test_channels_with_bad_parameters_is_invalid_param(rig: Rig, params: dict[str, str]) -> None:
    response = rig.events.get(f"{RS}/users/X123456789/channels", params=params)
    zeta_error(response, 400, "INVALID_PARAM")


def test_channels_value_must_match_its_id_type(rig: Rig) -> None:
    response = rig.events.get(f"{RS}/users/not-a-kvnr/channels", params={"id_type": "kvnr"})
    zeta_error(response, 400, "INVALID_PARAM")


# --- Idempotency-Key ------------------------------------------------------------------------------


def test_a_repeat_answers_the_first_and_sends_nothing(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    device = AppDevice(user, gateway)
    rig.register(device)
    key = f"k-{uuid.uuid4()}"
    first = post(rig, notification(user), **{"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    # the same request after parsing: the default prio spelled out, members reordered
    again = post(
        rig,
        {"prio": "normal", **notification(user)},
        **{"Idempotency-Key": key},
    )
    assert again.status_code == 202, again.text
    assert again.json()["notification_id"] == first.json()["notification_id"]
    assert again.json()["status"] == first.json()["status"] == "queued"
    assert events_of(rig, user) == 1
    rig.delivered(uuid.UUID(first.json()["notification_id"]).hex, 1)
    assert len(device.inbox()) == 1


def test_the_same_key_with_another_body_is_invalid(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    key = f"k-{uuid.uuid4()}"
    assert post(rig, notification(user), **{"Idempotency-Key": key}).status_code == 202
    changed = notification(user, prio="high")
    zeta_error(post(rig, changed, **{"Idempotency-Key": key}), 400, "INVALID_PARAM")
    assert events_of(rig, user) == 1
    # The receipt's fingerprint is keyed: a plain hash of the request (a KVNR and a short
    # payload) could be found by trying them all.
    [(stored,)] = rig.service.query("SELECT fingerprint FROM rs_idempotency WHERE key = ?", (key,))
    parsed = {**notification(user), "prio": "normal", "reference": None}
    plain = hashlib.sha256(orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert len(stored) == 64
    assert stored != plain


@pytest.mark.parametrize("key", ["", "k" * 65, "with space"])
def test_a_malformed_key_is_invalid(rig: Rig, key: str) -> None:
    zeta_error(post(rig, notification(kvnr()), **{"Idempotency-Key": key}), 400, "INVALID_PARAM")


def test_a_failed_request_does_not_hold_its_key(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    key = f"k-{uuid.uuid4()}"
    zeta_error(post(rig, notification(user), **{"Idempotency-Key": key}), 404, "USER_NOT_FOUND")
    rig.register(AppDevice(user, gateway))
    assert post(rig, notification(user), **{"Idempotency-Key": key}).status_code == 202


def test_concurrent_repeats_send_once(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread, backend: str
) -> None:
    """Several API processes on PostgreSQL (one on SQLite), repeats at the same moment."""
    workers = "3" if backend == "postgresql" else "1"
    service = start_service(**delivery_env(pki, [gateway]), FDPUSH_WORKERS=workers)
    shared = Rig(service)
    try:
        user = kvnr()
        device = AppDevice(user, gateway)
        shared.register(device)
        key = f"k-{uuid.uuid4()}"

        def once(_: int) -> httpx.Response:
            # a client (and connection) each, so the repeats spread over the processes
            with internal_client(service.base_url) as http:
                return http.post(
                    RS + "/notifications", json=notification(user), headers={"Idempotency-Key": key}
                )

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(once, range(24)))
        assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
        assert len({a.json()["notification_id"] for a in answers}) == 1
        assert events_of(shared, user) == 1
        shared.delivered(uuid.UUID(answers[0].json()["notification_id"]).hex, 1)
        assert len(device.inbox()) == 1
    finally:
        shared.close()


# --- back-pressure and rate limit -----------------------------------------------------------------


def test_a_full_backlog_is_503_with_retry_after(
    start_service: Callable[..., Service], pki: TestPki
) -> None:
    down = free_gateway_port(pki)  # nothing listens: notifications stay pending
    service = start_service(**delivery_env(pki, [down]), FDPUSH_RS_MAX_PENDING="2")
    rig = Rig(service)
    try:
        user = kvnr()
        rig.register(AppDevice(user, None, url=f"https://127.0.0.1:{down}/push/v1/"))
        for _ in range(3):
            assert post(rig, notification(user)).status_code == 202

        def refused() -> httpx.Response | None:
            response = post(rig, notification(user))
            return response if response.status_code == 503 else None

        response = wait_for(refused, timeout=10, interval=0.2, what="back-pressure")
        zeta_error(response, 503, "SERVICE_UNAVAILABLE")
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        rig.close()


def test_the_rate_limit_is_per_technical_user(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> None:
    service = start_service(**delivery_env(pki, [gateway]), FDPUSH_RS_RATE_LIMIT="2/60")
    rig = Rig(service)
    try:
        user = kvnr()
        rig.register(AppDevice(user, gateway))
        assert [post(rig, notification(user)).status_code for _ in range(2)] == [202, 202]
        response = post(rig, notification(user))
        zeta_error(response, 429, "RATE_LIMITED")
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        rig.close()


def test_a_key_past_its_retention_is_forgotten(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    key = f"k-{uuid.uuid4()}"
    first = post(rig, notification(user), **{"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    # 25 hours ago (FDPUSH_RS_IDEMPOTENCY_HOURS is 24)
    rig.service.query(
        "UPDATE rs_idempotency SET created_at = created_at - ? WHERE key = ?",
        (25 * 3600 * 1000, key),
    )
    again = post(rig, notification(user, prio="high"), **{"Idempotency-Key": key})
    assert again.status_code == 202, again.text
    assert again.json()["notification_id"] != first.json()["notification_id"]
    assert events_of(rig, user) == 2
    [(count,)] = rig.service.query("SELECT count(*) FROM rs_idempotency WHERE key = ?", (key,))
    assert count == 1


def test_receipts_hold_no_user_id(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    key = f"k-{uuid.uuid4()}"
    assert post(rig, notification(user), **{"Idempotency-Key": key}).status_code == 202
    rows = rig.service.query("SELECT * FROM rs_idempotency WHERE key = ?", (key,))
    assert len(rows) == 1 and user not in repr(rows)


def test_metrics_and_logs_name_no_user(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    assert post(rig, notification(user)).status_code == 202
    assert post(rig, {**notification(user), "prio": "x"}).status_code == 400
    rig.events.get(f"{RS}/users/{user}/channels", params={"id_type": "kvnr"})
    rig.events.get(f"{RS}/users/{user}/nothing")
    metrics = httpx.get(rig.service.base_url + "/metrics").text
    assert "/users/{userId}/channels" in metrics or "notification-service" in metrics
    assert user not in metrics
    assert user not in rig.service.logs()
