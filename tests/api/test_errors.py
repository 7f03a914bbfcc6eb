"""The error model and limits everywhere, health and metrics, and what the logs never contain."""

from __future__ import annotations

import http.client
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Service, dev_token, drop_postgres_database, new_user, registration

SET = "/push/v1/pushers/set"
SEED_SET = "/pushers/v1/set"
CHANNEL_CHANGE = {"channels": [{"id": "erp.communication.new", "status": "enabled"}]}


def device_path(pushkey: str, layout: str = "current") -> str:
    prefix = "/push/v1/channels/" if layout == "current" else "/channels/v1/"
    return prefix + quote(pushkey, safe="")


def stored(service: Service, pushkey: str) -> int:
    """How many pushers with this pushkey the service's database holds."""
    index = service.pushkey_index(pushkey)
    return int(service.query("SELECT COUNT(*) FROM pushers WHERE pushkey = ?", (index,))[0][0])


def assert_error(response: httpx.Response, status: int, errcode: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["errcode"] == errcode
    assert isinstance(body["error"], str)
    assert body["error"]
    return body


@pytest.fixture
def device(service: Service) -> Iterator[tuple[httpx.Client, str]]:
    """A fresh user's client and the pushkey of the device it registered."""
    body = registration()
    with service.client(new_user()) as http:
        assert http.post(SET, json=body).status_code == 200
        yield http, body["pushkey"]


# --- M_NOT_JSON, M_BAD_JSON -------------------------------------------------------------------

NOT_JSON = {
    "text": b"not json",
    "empty": b"",
    "truncated": b'{"kind": "http", "app_id": ',
    "trailing-comma": b'{"kind": "http",}',
    "single-quotes": b"{'kind': 'http'}",
    "nan": b'{"kind": NaN}',
    "invalid-utf8": b'{"kind": "http", "app_id": "\xff\xfe"}',
    "latin1": '{"kind": "http", "app_display_name": "Müller"}'.encode("latin-1"),
    "two-values": b"{} {}",
}


@pytest.mark.parametrize("content", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_not_json(device: tuple[httpx.Client, str], content: bytes) -> None:
    """A body that is not JSON (or not UTF-8) is 400 M_NOT_JSON on both write endpoints."""
    http, pushkey = device
    for path in (SET, SEED_SET, device_path(pushkey), device_path(pushkey, "seed")):
        response = http.post(path, content=content, headers={"Content-Type": "application/json"})
        assert_error(response, 400, "M_NOT_JSON")


BAD_JSON = {
    "array": b'[{"kind": "http"}]',
    "empty-array": b"[]",
    "string": b'"kind"',
    "number": b"42",
    "float": b"-1.5e3",
    "null": b"null",
    "true": b"true",
}


@pytest.mark.parametrize("content", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_json_but_not_an_object(device: tuple[httpx.Client, str], content: bytes) -> None:
    """JSON that is not an object is 400 M_BAD_JSON on both write endpoints."""
    http, pushkey = device
    for path in (SET, SEED_SET, device_path(pushkey), device_path(pushkey, "seed")):
        assert_error(http.post(path, content=content), 400, "M_BAD_JSON")


# --- M_UNRECOGNIZED ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/push/v2/pushers"),
        ("GET", "/pushers/v1/"),
        ("GET", "/push/v1/pushers/"),
        ("POST", "/push/v1/pushers/set/more"),
        ("GET", "/_matrix/push/v1/notify"),
        ("GET", "/client/v1/push/v1/pushers"),
    ],
)
def test_unknown_path(service: Service, method: str, path: str) -> None:
    """A path that is not an endpoint is 404 M_UNRECOGNIZED, with or without a token."""
    assert_error(httpx.request(method, service.base_url + path), 404, "M_UNRECOGNIZED")
    with service.client(new_user()) as http:
        assert_error(http.request(method, path, json={}), 404, "M_UNRECOGNIZED")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/push/v1/pushers"),
        ("POST", "/push/v1/pushers"),
        ("GET", "/push/v1/pushers/set"),
        ("PUT", "/pushers/v1/set"),
        ("POST", "/push/v1/channels"),
        ("DELETE", "/channels/v1"),
        ("PATCH", "/push/v1/channels/some-pushkey"),
        ("DELETE", "/channels/v1/some-pushkey"),
        ("POST", "/health/live"),
        ("POST", "/metrics"),
    ],
)
def test_wrong_method(service: Service, method: str, path: str) -> None:
    """A known path with a method it does not take is 405 M_UNRECOGNIZED."""
    with service.client(new_user()) as http:
        assert_error(http.request(method, path, json={}), 405, "M_UNRECOGNIZED")


# --- M_TOO_LARGE ------------------------------------------------------------------------------

SMALL_CAP = 2048


@pytest.fixture(scope="module")
def limited(start_service: Callable[..., Service]) -> Service:
    """A service with a 2 KiB body cap and a rate limit of 3 writes per 3 s per user."""
    return start_service(FDPUSH_MAX_BODY_BYTES=str(SMALL_CAP), FDPUSH_RATE_LIMIT="3/3")


def padded(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    base = json.dumps({"kind": "http", "pad": ""}).encode()
    return json.dumps({"kind": "http", "pad": "x" * (size - len(base))}).encode()


def chunks(content: bytes, size: int = 512) -> Iterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


def test_body_over_the_cap_with_content_length(limited: Service) -> None:
    """A declared Content-Length over FDPUSH_MAX_BODY_BYTES is 413 M_TOO_LARGE on every write."""
    with limited.client(new_user()) as http:
        pushkey = registration()["pushkey"]
        for path in (SET, SEED_SET, device_path(pushkey)):
            assert_error(http.post(path, content=padded(SMALL_CAP + 1)), 413, "M_TOO_LARGE")
    with limited.client(new_user()) as http:
        response = http.post(SET, content=padded(SMALL_CAP))
        assert response.status_code == 400, response.text
        assert response.json()["errcode"] != "M_TOO_LARGE"


def test_chunked_body_over_the_cap(limited: Service) -> None:
    """A body streamed without Content-Length is cut off at the cap, too."""
    body = registration(pushkey=f"pk-{uuid.uuid4().hex}", profile_tag="x" * 200)
    body["data"] = {**body["data"], "pad": "x" * 3000}
    content = json.dumps(body).encode()
    assert len(content) > SMALL_CAP
    with limited.client(new_user()) as http:
        request = http.build_request("POST", SET, content=chunks(content))
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        assert_error(http.send(request), 413, "M_TOO_LARGE")
    assert stored(limited, body["pushkey"]) == 0


def test_chunked_body_under_the_cap_is_fine(limited: Service) -> None:
    body = registration()
    content = json.dumps(body).encode()
    assert len(content) < SMALL_CAP
    with limited.client(new_user()) as http:
        response = http.post(SET, content=chunks(content, 64))
        assert response.status_code == 200, response.text
        assert [p["pushkey"] for p in http.get("/push/v1/pushers").json()["pushers"]] == [
            body["pushkey"]
        ]


def test_default_cap_is_64_kib(service: Service) -> None:
    """Without FDPUSH_MAX_BODY_BYTES the cap is 64 KiB, declared or streamed."""
    with service.client(new_user()) as http:
        assert_error(http.post(SET, content=padded(64 * 1024 + 1)), 413, "M_TOO_LARGE")
        assert_error(
            http.post(SET, content=chunks(padded(64 * 1024 + 1), 8192)), 413, "M_TOO_LARGE"
        )
        under = http.post(SET, content=padded(64 * 1024))
        assert under.status_code == 400
        assert under.json()["errcode"] == "M_MISSING_PARAM"


# --- M_LIMIT_EXCEEDED -------------------------------------------------------------------------


def test_rate_limit_on_writes(limited: Service) -> None:
    """Past N writes in S seconds a user gets 429 with retry_after_ms and Retry-After."""
    user = new_user()
    with limited.client(user) as http:
        first = registration()
        assert http.post(SET, json=first).status_code == 200
        assert http.post(device_path(first["pushkey"]), json=CHANNEL_CHANGE).status_code == 200
        assert http.post(SEED_SET, json=registration()).status_code == 200

        refused = registration()
        response = http.post(SET, json=refused)
        body = assert_error(response, 429, "M_LIMIT_EXCEEDED")
        retry_after_ms = body["retry_after_ms"]
        assert isinstance(retry_after_ms, int)
        assert 0 < retry_after_ms <= 3000
        retry_after = int(response.headers["Retry-After"])
        assert retry_after == math.ceil(retry_after_ms / 1000)

        # Every write endpoint of both layouts shares the user's budget.
        for path in (
            SEED_SET,
            device_path(first["pushkey"]),
            device_path(first["pushkey"], "seed"),
        ):
            assert_error(http.post(path, json=CHANNEL_CHANGE), 429, "M_LIMIT_EXCEEDED")

        # Reads are not limited.
        for path in (
            "/push/v1/pushers",
            "/pushers/v1",
            "/channels/v1",
            device_path(first["pushkey"]),
        ):
            for _ in range(3):
                assert http.get(path).status_code == 200
    assert stored(limited, refused["pushkey"]) == 0


def test_rate_limit_is_per_user(limited: Service) -> None:
    """One user's exhausted budget does not touch another user's."""
    with limited.client(new_user()) as greedy, limited.client(new_user()) as other:
        for _ in range(3):
            assert greedy.post(SET, json=registration()).status_code == 200
        assert greedy.post(SET, json=registration()).status_code == 429
        for _ in range(3):
            assert other.post(SET, json=registration()).status_code == 200


def test_rate_limit_window_passes(limited: Service) -> None:
    """After retry_after_ms the user may write again."""
    with limited.client(new_user()) as http:
        for _ in range(3):
            assert http.post(SET, json=registration()).status_code == 200
        refused = http.post(SET, json=registration())
        assert refused.status_code == 429
        wait_until = time.monotonic() + refused.json()["retry_after_ms"] / 1000
        deadline = wait_until + 5.0
        while True:
            response = http.post(SET, json=registration())
            if response.status_code == 200:
                break
            assert response.status_code == 429
            assert time.monotonic() < deadline, "still limited long after retry_after_ms"
            time.sleep(0.1)
        assert time.monotonic() >= wait_until - 0.5


def test_rate_limit_zero_is_off(service: Service) -> None:
    """FDPUSH_RATE_LIMIT=0 (the test default) never answers 429."""
    with service.client(new_user()) as http:
        for _ in range(40):
            response = http.post(SET, json={"kind": None, "app_id": "a", "pushkey": "p"})
            assert response.status_code == 200, response.text


# --- no 5xx, no stack trace, whatever the input -----------------------------------------------


def raw_json(body: Any) -> bytes:
    """JSON with every non-ASCII character escaped (so lone surrogates survive as ``\\ud800``)."""
    return json.dumps(body, ensure_ascii=True).encode()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


WEIRD_BODIES: dict[str, bytes] = {
    "nul-in-app-id": raw_json(registration(app_id="de.gematik\x00.app")),
    "nul-in-pushkey": raw_json(registration(pushkey="pk\x00x")),
    "nul-in-display-name": raw_json(registration(device_display_name="Phone\x00")),
    "nul-in-lang": raw_json(registration(lang="d\x00e")),
    "nul-in-data-key": raw_json(
        registration(data={"url": "https://gateway.test/push/v1/", "\x00": 1})
    ),
    "nul-in-data-value": raw_json(
        registration(data={"url": "https://gateway.test/push/v1/", "x": "\x00"})
    ),
    "nul-in-url": raw_json(registration(data={"url": "https://gateway.test/push/v1/\x00"})),
    "nul-in-key-identifier": raw_json(
        registration(
            encryption={**registration()["encryption"], "key_identifier": "kid\x00"},
        )
    ),
    "surrogate-in-pushkey": raw_json(registration(pushkey="pk\ud800")),
    "surrogate-in-app-id": raw_json(registration(app_id="\udfff")),
    "surrogate-in-display-name": raw_json(registration(app_display_name="App \ud83d")),
    "surrogate-in-data-key": raw_json(
        registration(data={"url": "https://gateway.test/push/v1/", "\ud800": "x"})
    ),
    "surrogate-in-url": raw_json(registration(data={"url": "https://gateway.test/\ud800/v1/"})),
    "surrogate-in-iss": raw_json(
        registration(encryption={**registration()["encryption"], "iss": "\ud800" * 64})
    ),
    "huge-int-kind": b'{"kind": 1' + b"0" * 5000 + b"}",
    "huge-float-append": raw_json(registration())[:-1] + b', "append": 1e400}',
    "huge-int-pushkey": raw_json(registration())[:-1] + b', "pushkey": 1' + b"9" * 400 + b"}",
    "huge-int-in-data": raw_json(registration())[:-1].replace(
        b'"format": "event_id_only"', b'"n": -' + b"9" * 4000
    )
    + b"}",
    "deep-array": nested(100_000).encode()[:60_000],
    "deep-object-in-data": raw_json(registration())[:-1].replace(
        b'"format": "event_id_only"', b'"deep": ' + nested(5000).encode()
    )
    + b"}",
    "deep-object": (b'{"a": ' * 5000) + b"1" + (b"}" * 5000),
    "kind-object": raw_json(registration(kind={"http": True})),
    "encryption-array": raw_json(registration(encryption=[1, 2])),
    "data-string": raw_json(registration(data="https://gateway.test/push/v1/")),
    "huge-string-escape": b'{"kind": "\\u' + b"0" * 3 + b'"}',
    "bad-escape": b'{"kind": "\\x41"}',
}


def assert_clean_4xx(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"errcode", "error"}
    assert body["errcode"].startswith("M_")
    assert "Traceback" not in response.text
    assert 'File "' not in response.text


@pytest.fixture
def unhandled_errors(service: Service) -> Iterator[None]:
    """After the test, the service has logged no unhandled error."""
    start = len(service.logs())
    yield
    new = service.logs()[start:]
    assert "unhandled error" not in new
    assert "Traceback" not in new


@pytest.mark.usefixtures("unhandled_errors")
@pytest.mark.parametrize("content", WEIRD_BODIES.values(), ids=WEIRD_BODIES.keys())
def test_weird_bodies_never_cause_5xx(device: tuple[httpx.Client, str], content: bytes) -> None:
    """NUL characters, lone surrogates, huge numbers, deep nesting: a 4xx, never a 5xx."""
    http, pushkey = device
    assert len(content) < 64 * 1024
    for path in (SET, device_path(pushkey)):
        assert_clean_4xx(http.post(path, content=content))


WEIRD_CHANNEL_BODIES: dict[str, bytes] = {
    "nul-id": raw_json({"channels": [{"id": "erp\x00", "status": "enabled"}]}),
    "surrogate-id": raw_json({"channels": [{"id": "\ud800", "status": "enabled"}]}),
    "surrogate-status": raw_json({"channels": [{"id": "erp.task.close", "status": "\udfff"}]}),
    "huge-int-id": b'{"channels": [{"id": 1' + b"0" * 5000 + b', "status": "enabled"}]}',
    "huge-float-status": b'{"channels": [{"id": "erp.task.close", "status": 1e999}]}',
    "deep-channels": b'{"channels": ' + nested(5000).encode() + b"}",
    "channels-object": raw_json({"channels": {"id": "erp.task.close", "status": "enabled"}}),
    "many-channels": raw_json({"channels": [{"id": "x", "status": "enabled"}] * 2000}),
}


@pytest.mark.usefixtures("unhandled_errors")
@pytest.mark.parametrize("content", WEIRD_CHANNEL_BODIES.values(), ids=WEIRD_CHANNEL_BODIES.keys())
def test_weird_channel_bodies_never_cause_5xx(
    device: tuple[httpx.Client, str], content: bytes
) -> None:
    http, pushkey = device
    for layout in ("current", "seed"):
        assert_clean_4xx(http.post(device_path(pushkey, layout), content=content))


def raw_request(
    service: Service, method: str, target: str, user: str, body: bytes | None = None
) -> tuple[int, bytes]:
    """Send ``target`` byte for byte (HTTP clients would repair invalid escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {dev_token(user)}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.usefixtures("unhandled_errors")
@pytest.mark.parametrize(
    "escaped",
    ["%ZZ", "%", "%2", "abc%", "%ff%fe", "%C0%AF", "%ED%A0%80", "%00", "pk%00x", "%0A", "%7F"],
)
@pytest.mark.parametrize("prefix", ["/push/v1/channels/", "/channels/v1/"])
def test_invalid_percent_escapes_in_the_pushkey(
    service: Service, prefix: str, escaped: str
) -> None:
    """A path pushkey with invalid escapes, invalid UTF-8 or control characters is a clean 4xx."""
    user = new_user()
    for method, body in (("GET", None), ("POST", json.dumps(CHANNEL_CHANGE).encode())):
        status, content = raw_request(service, method, prefix + escaped, user, body)
        assert 400 <= status < 500, (status, content)
        answer = json.loads(content)
        assert answer["errcode"] in ("M_NOT_FOUND", "M_INVALID_PARAM", "M_UNRECOGNIZED")
        assert b"Traceback" not in content


# --- health and metrics -----------------------------------------------------------------------


def test_health_live(service: Service) -> None:
    """Liveness answers without a token."""
    response = httpx.get(service.base_url + "/health/live")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_health_ready_with_the_database_up(service: Service) -> None:
    response = httpx.get(service.base_url + "/health/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["checks"]["database"] == {"ok": True}


def test_health_ready_with_the_database_gone(
    backend: str, start_service: Callable[..., Service]
) -> None:
    """Readiness checks the database: without it, 503 (while liveness stays 200)."""
    if backend != "postgresql":
        pytest.skip("an open SQLite database cannot be taken away from a running process")
    doomed = start_service()
    assert httpx.get(doomed.base_url + "/health/ready").status_code == 200
    drop_postgres_database(doomed.database_url)
    response = httpx.get(doomed.base_url + "/health/ready", timeout=30)
    assert response.status_code == 503
    assert response.json()["checks"]["database"]["ok"] is False
    assert httpx.get(doomed.base_url + "/health/live").status_code == 200
    with doomed.client(new_user()) as http:
        failing = http.get("/push/v1/pushers")
    assert failing.status_code == 500
    assert failing.json() == {"errcode": "M_UNKNOWN", "error": "Internal server error"}


def metric_samples(service: Service) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(service.base_url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def requests_count(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
    route: str,
    status: str,
    method: str = "GET",
) -> float:
    labels = frozenset({"route": route, "method": method, "status": status}.items())
    return samples.get(("fdpush_http_requests_total", labels), 0.0)


def latency_count(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], route: str, method: str = "GET"
) -> float:
    labels = frozenset({"route": route, "method": method}.items())
    return samples.get(("fdpush_http_request_duration_seconds_count", labels), 0.0)


def test_metrics_count_requests_by_route_template_and_status(
    device: tuple[httpx.Client, str], service: Service
) -> None:
    """/metrics: requests by route *template* and status, and a latency histogram."""
    http, pushkey = device
    current, seed = "/push/v1/channels/{pushkey}", "/channels/v1/{pushkey}"
    before = metric_samples(service)
    for _ in range(2):
        assert http.get(device_path(pushkey)).status_code == 200
    assert http.get(device_path("no-such-pushkey")).status_code == 404
    assert http.get(device_path(pushkey, "seed")).status_code == 200
    assert http.post(device_path(pushkey), json=CHANNEL_CHANGE).status_code == 200
    after = metric_samples(service)

    def delta(count: Callable[..., float], *args: str) -> float:
        return count(after, *args) - count(before, *args)

    assert delta(requests_count, current, "200") == 2
    assert delta(requests_count, current, "404") == 1
    assert delta(requests_count, seed, "200") == 1
    assert delta(requests_count, current, "200", "POST") == 1
    assert delta(latency_count, current) == 3
    assert delta(latency_count, seed) == 1
    buckets = [
        dict(labels)["le"]
        for name, labels in after
        if name == "fdpush_http_request_duration_seconds_bucket"
        and dict(labels).get("route") == current
        and dict(labels).get("method") == "GET"
    ]
    assert "+Inf" in buckets
    assert len(buckets) > 3


def test_metrics_never_carry_a_raw_path(device: tuple[httpx.Client, str], service: Service) -> None:
    """Route labels are templates: no pushkey, no unknown path ever becomes a label."""
    http, pushkey = device
    secret_path = f"/secret-{uuid.uuid4().hex}"
    http.get(device_path(pushkey))
    http.get(device_path(f"unknown-{uuid.uuid4().hex}"))
    http.get(secret_path)
    text = httpx.get(service.base_url + "/metrics").text
    assert pushkey not in text
    assert quote(pushkey, safe="") not in text
    assert "unknown-" not in text
    assert secret_path not in text
    routes = {
        sample.labels["route"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "route" in sample.labels
    }
    assert "/push/v1/channels/{pushkey}" in routes
    assert all(route.startswith("/") or route == "unmatched" for route in routes)
    assert len(routes) < 30


# --- logs never carry secrets or identities ---------------------------------------------------


@pytest.fixture(scope="module")
def chatty(start_service: Callable[..., Service]) -> Service:
    """A service that logs everything it logs at all (debug level)."""
    return start_service(FDPUSH_LOG_LEVEL="debug")


def test_logs_hold_no_iss_token_pushkey_or_user_id(chatty: Service) -> None:
    """After a whole registration life cycle the log holds none of iss, token, pushkey, user id."""
    user = f"X{uuid.uuid4().hex[:9].upper()}-kvnr"
    pushkey = f"PUSHKEY/{uuid.uuid4().hex}+=="
    first, second = registration(pushkey=pushkey), registration(pushkey=pushkey)
    secrets = {first["encryption"]["iss"], second["encryption"]["iss"]}
    with chatty.client(user) as http:
        token = http.headers["Authorization"].removeprefix("Bearer ")
        assert http.post(SET, json=first).status_code == 200
        assert http.post(SEED_SET, json=second).status_code == 200
        assert http.get("/push/v1/pushers").status_code == 200
        assert http.get(device_path(pushkey)).status_code == 200
        assert http.post(device_path(pushkey, "seed"), json=CHANNEL_CHANGE).status_code == 200
        # Failures log too: a bad gateway URL, a bad channel, a bad iss, an unknown device.
        bad_url = registration(pushkey=pushkey, data={"url": "https://evil.test/push/v1/"})
        secrets.add(bad_url["encryption"]["iss"])
        assert http.post(SET, json=bad_url).status_code == 400
        bad_iss = registration(pushkey=pushkey)
        bad_iss["encryption"]["iss"] = "z" + first["encryption"]["iss"][1:]
        assert http.post(SET, json=bad_iss).status_code == 400
        bad_channel = {"channels": [{"id": pushkey, "status": "enabled"}]}
        assert http.post(device_path(pushkey), json=bad_channel).status_code == 400
        assert http.get(device_path(pushkey + "-other")).status_code == 404
        delete = {"kind": None, "app_id": first["app_id"], "pushkey": pushkey}
        assert http.post(SET, json=delete).status_code == 200
    refused = httpx.get(
        chatty.base_url + "/push/v1/pushers",
        headers={"Authorization": f"Bearer {token}x"},
    )
    assert refused.status_code == 401

    logs = chatty.logs()
    assert "POST /push/v1/pushers/set 200" in logs, "the access log is on, and names templates"
    forbidden = {
        "user id": user,
        "user id (lower case)": user.lower(),
        "token": token,
        "token signature": token.rsplit(".", 1)[1],
        "pushkey": pushkey,
        "pushkey (URL-encoded)": quote(pushkey, safe=""),
        "pushkey (unique part)": pushkey.split("/")[1][:-3],
    }
    for number, iss in enumerate(secrets):
        forbidden[f"iss {number}"] = iss
        forbidden[f"iss {number} (upper case)"] = iss.upper()
        forbidden[f"iss {number} (prefix)"] = iss[:16]
    leaked = [what for what, value in forbidden.items() if value.lower() in logs.lower()]
    assert not leaked, f"the log contains: {leaked}"
