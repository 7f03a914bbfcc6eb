"""Logs an operator can follow (docs/operations.md, "Logs"): millisecond timestamps, a request
id on every line of a request (the caller's ``X-Request-ID`` when it is sane, echoed back),
access lines as fields in JSON mode, one line per gateway batch, and never a pushkey, user id
or payload."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import Service, new_user
from delivery.e2e_helpers import (
    ACTIVATE,
    INTERNAL_KEY,
    AppDevice,
    Rig,
    delivery_env,
    internal_client,
    wait_for,
)
from fdpush.gateway import GatewayThread, TestPki
from fdpush.logs import configure_logging
from zeta.test_rs_api import RS, check_documented

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> Iterator[Rig]:
    running = Rig(start_service(**delivery_env(pki, [gateway], FDPUSH_LOG_FORMAT="json")))
    yield running
    running.close()


def json_lines(service: Service) -> list[dict[str, Any]]:
    lines = []
    for line in service.logs().splitlines():
        if line.startswith("{"):
            lines.append(orjson.loads(line))
    return lines


def lines_of(service: Service, request_id: str) -> list[dict[str, Any]]:
    return [line for line in json_lines(service) if line.get("request_id") == request_id]


def test_a_sane_request_id_is_taken_echoed_and_on_every_line(
    rig: Rig, gateway: GatewayThread
) -> None:
    device = AppDevice(new_user(), gateway)
    given = "edge-7f3a.b:1/2+x="
    with rig.service.client(device.user) as http:
        response = http.post(
            "/push/v1/pushers/set", json=device.registration(), headers={"X-Request-ID": given}
        )
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == given

    def both() -> list[dict[str, Any]] | None:
        found = lines_of(rig.service, given)
        return found if len(found) >= 2 else None

    found = wait_for(both, timeout=10.0, what="the registration's lines")
    access = [line for line in found if line["logger"] == "fdpush.access"]
    assert len(access) == 1
    assert access[0]["method"] == "POST"
    assert access[0]["route"] == "/push/v1/pushers/set"
    assert access[0]["status"] == 200
    assert isinstance(access[0]["duration_ms"], float)
    assert any(line["logger"] != "fdpush.access" for line in found), found  # the domain's line
    for line in json_lines(rig.service):
        assert ISO_MS.match(line["time"]), line["time"]


@pytest.mark.parametrize("given", ["x" * 129, "two words", "<script>", "a;b", "ünicode", ""])
def test_an_unsafe_request_id_is_replaced(rig: Rig, given: str) -> None:
    with rig.service.client() as http:
        response = http.get("/health/live", headers={"X-Request-ID": given.encode()})
    assert response.status_code == 200
    made = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made), made
    wait_for(lambda: lines_of(rig.service, made), timeout=10.0, what="the access line")
    if given:
        assert given not in rig.service.logs()


def test_every_request_gets_its_own_id(rig: Rig) -> None:
    with rig.service.client() as http:
        ids = {http.get("/health/live").headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3


def test_one_line_per_gateway_batch_and_no_personal_data(rig: Rig, gateway: GatewayThread) -> None:
    device = AppDevice(new_user(), gateway)
    rig.register(device)
    event = rig.emit(device.user, ACTIVATE, {"id": "160.123.456.789.012.34"})
    rig.delivered(event["event_id"], 1)
    label = gateway.url.split("://", 1)[1].split("/", 1)[0]

    def batch_line() -> dict[str, Any] | None:
        for line in json_lines(rig.service):
            if line["logger"] == "fdpush.delivery.worker" and line.get("gateway") == label:
                return line
        return None

    line = wait_for(batch_line, timeout=10.0, what="the gateway batch line")
    assert line["level"] == "info"
    assert line["count"] == 1
    assert line["status"] == 200
    assert line["duration_ms"] >= 0
    assert label in line["message"]
    logs = rig.service.logs()
    for secret in (device.user, device.pushkey, device.iss, "160.123.456.789.012.34"):
        assert secret not in logs


def test_text_lines_have_milliseconds_and_no_repeated_fields(tmp_path: Path) -> None:
    """In-process: the text format (the default) with the same request-id filter."""
    from fdpush.logs import in_message, request_id

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    path = tmp_path / "fdpush.log"
    try:
        configure_logging("info", "text", path=path)
        token = request_id.set("abc123")
        logging.getLogger("fdpush.access").info(
            "GET /x 200 1.0ms", extra=in_message(method="GET", status=200)
        )
        request_id.reset(token)
        logging.getLogger("fdpush.test").info("outside a request", extra={"user": "u:1"})
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], level = saved
        root.setLevel(level)
    first, second = path.read_text().splitlines()
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d "
    assert re.match(stamp + r"INFO    fdpush\.access: GET /x 200 1\.0ms request_id=abc123$", first)
    assert re.match(stamp + r"INFO    fdpush\.test: outside a request user=u:1$", second)


def test_an_unexpected_500_echoes_the_request_id_and_logs_it(
    start_service: Callable[..., Service],
) -> None:
    """A genuine failure — a table the request needs is gone from the database under the
    running service — answers 500 with the request's ``X-Request-ID`` (the caller's or a made
    one), and the line that logs the failure carries it. The RS API's 500 is ZETA-shaped."""
    service = start_service(FDPUSH_LOG_FORMAT="json", FDPUSH_INTERNAL_API_KEY=INTERNAL_KEY)
    user = new_user()
    service.query("ALTER TABLE pushers RENAME TO pushers_gone")
    # A connection each: after an unexpected error the server closes the connection.
    with service.client(user) as http:
        given = http.get("/push/v1/pushers", headers={"X-Request-ID": "support-4711"})
    with service.client(user) as http:
        made = http.get("/push/v1/pushers")
    for response in (given, made):
        assert response.status_code == 500, response.text
        assert response.json() == {"errcode": "M_UNKNOWN", "error": "Internal server error"}
    assert given.headers["X-Request-ID"] == "support-4711"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"]), made.headers
    with internal_client(service.base_url) as http:
        listed = http.get(
            RS + "/users/X110411675/channels",
            params={"id_type": "kvnr"},
            headers={"X-Request-ID": "support-4712"},
        )
    with internal_client(service.base_url) as http:
        sent = http.post(
            RS + "/notifications",
            json={"user": {"id_type": "kvnr", "value": "X110411675"}, "channel": ACTIVATE,
                  "payload": {"n": 1}},
            headers={"X-Request-ID": "support-4713"},
        )  # fmt: skip
    for rs, request in ((listed, "support-4712"), (sent, "support-4713")):
        assert rs.status_code == 500, rs.text
        assert rs.json() == {"errorCode": "INTERNAL_ERROR", "errorDetail": "Internal server error"}
        check_documented(rs)
        assert rs.headers["X-Request-ID"] == request

    for request in ("support-4711", made.headers["X-Request-ID"], "support-4712", "support-4713"):

        def failure_logged(request: str = request) -> list[dict[str, Any]]:
            return [
                line
                for line in lines_of(service, request)
                if line["level"] == "error" and "unhandled error" in line["message"]
            ]

        wait_for(failure_logged, timeout=10.0, what=f"the failure's line for {request}")
    logs = service.logs()
    # nor the statement's parameters (the pseudonym here; pushkeys in other statements)
    for secret in (user, "X110411675", service.pseudonym(user), service.pseudonym("X110411675")):
        assert secret not in logs
