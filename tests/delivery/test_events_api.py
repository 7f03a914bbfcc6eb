"""The internal events API (docs/delivery.md): who may call it, what it accepts, what it
answers, and where it listens.

The real ``fdpush serve`` (SQLite and PostgreSQL) with a development gateway over mutual TLS;
the Fachdienst's side is plain HTTP with the internal key. Every refused request is checked to
have stored nothing (the ``events`` and ``notifications`` tables), every accepted one to reach
exactly the devices it says it reaches.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from conftest import Service, dev_token, free_port, new_user
from delivery.e2e_helpers import (
    ACTIVATE,
    CLOSE,
    COMMUNICATION,
    INTERNAL_KEY,
    AppDevice,
    Rig,
    delivery_env,
    internal_client,
    wait_for,
)
from fdpush.gateway import GatewayThread, TestPki

MAX_BATCH = 5  # FDPUSH_MAX_EVENTS_PER_BATCH of the module's service
EVENTS = "/internal/v1/events"
BATCH = "/internal/v1/events/batch"


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> Iterator[Rig]:
    env = delivery_env(pki, [gateway], FDPUSH_MAX_EVENTS_PER_BATCH=str(MAX_BATCH))
    running = Rig(start_service(**env))
    yield running
    running.close()


def error_of(response: httpx.Response, status: int, errcode: str) -> str:
    """Assert a Matrix-style error answer; return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"errcode", "error"}, body
    assert body["errcode"] == errcode, body
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


def stored_events(service: Service, *users: str) -> int:
    """Events and notifications the database holds for ``users`` (as pseudonyms, or in the
    clear, which it must never hold)."""
    users = (*users, *(service.pseudonym(u) for u in users))
    marks = ",".join("?" * len(users))
    [(events,)] = service.query(f"SELECT count(*) FROM events WHERE user_id IN ({marks})", users)
    [(notes,)] = service.query(
        "SELECT count(*) FROM notifications n JOIN events e ON e.id = n.event_id"
        f" WHERE e.user_id IN ({marks})",
        users,
    )
    return int(events) + int(notes)


def event(user: str, channel: str = ACTIVATE, **fields: Any) -> dict[str, Any]:
    return {"user_id": user, "channel": channel, "payload": {"n": 1}, **fields}


def payload_of_size(size: int, char: str = "x") -> dict[str, str]:
    """A payload whose compact JSON is exactly ``size`` bytes (``char`` of 1 or 2 UTF-8 bytes)."""
    width = len(char.encode())
    body = size - len(b'{"p":""}')
    assert body % width == 0
    payload = {"p": char * (body // width)}
    assert len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()) == size
    return payload


# --- who may call it ---------------------------------------------------------------------------


def calls(user: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """One request to each internal endpoint; valid, so only the key decides."""
    return [
        ("POST", EVENTS, event(user)),
        ("POST", BATCH, {"events": [event(user)]}),
        ("GET", f"{EVENTS}/0123456789abcdef0123456789abcdef", None),
    ]


def test_a_missing_key_is_401_m_missing_token(rig: Rig) -> None:
    """No ``Authorization`` header, a bearer without a key, or another scheme: 401 M_MISSING_TOKEN
    with ``WWW-Authenticate: Bearer`` on every endpoint, and nothing is stored."""
    user = new_user()
    headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {INTERNAL_KEY}"},
        {"Authorization": INTERNAL_KEY},
    ]
    with httpx.Client(base_url=rig.service.base_url, timeout=30) as http:
        for header in headers:
            for method, path, body in calls(user):
                response = http.request(method, path, json=body, headers=header)
                error_of(response, 401, "M_MISSING_TOKEN")
                assert response.headers["WWW-Authenticate"] == "Bearer"
    assert stored_events(rig.service, user) == 0


def test_a_wrong_key_is_401_m_unknown_token(rig: Rig) -> None:
    """A key that is not FDPUSH_INTERNAL_API_KEY — another string, the key with a character
    more or less, a user's access token of the client API — is 401 M_UNKNOWN_TOKEN."""
    user = new_user()
    wrong = ["not-the-key", INTERNAL_KEY[:-1], INTERNAL_KEY + "x", INTERNAL_KEY.upper()]
    wrong.append(dev_token(user))  # the client API's token opens nothing here
    for key in wrong:
        with internal_client(rig.service.base_url, key) as http:
            for method, path, body in calls(user):
                response = http.request(method, path, json=body)
                error_of(response, 401, "M_UNKNOWN_TOKEN")
                assert response.headers["WWW-Authenticate"] == "Bearer"
    assert stored_events(rig.service, user) == 0


def test_without_an_internal_key_configured_every_call_is_401(
    start_service: Callable[..., Service],
) -> None:
    """FDPUSH_INTERNAL_API_KEY unset: the events API refuses every call (401), whatever key
    is given — also the empty one — and stores nothing; the client API works as usual."""
    service = start_service()  # the test defaults: no internal key
    user = new_user()
    for key in (INTERNAL_KEY, "anything", None):
        with internal_client(service.base_url, key) as http:
            for method, path, body in calls(user):
                response = http.request(method, path, json=body)
                assert response.status_code == 401, response.text
                assert response.json()["errcode"] in ("M_MISSING_TOKEN", "M_UNKNOWN_TOKEN")
    assert service.query("SELECT count(*) FROM events") == [(0,)]
    with service.client(user) as http:
        assert http.get("/push/v1/pushers").status_code == 200


# --- what it accepts ---------------------------------------------------------------------------

DEEP = 300  # levels of nesting: a few hundred bytes of valid JSON

BAD_EVENTS: dict[str, tuple[Callable[[str], Any], str]] = {
    "unknown-channel": (lambda u: event(u, "erp.no.such.channel"), "M_INVALID_PARAM"),
    "channel-case": (lambda u: event(u, ACTIVATE.upper()), "M_INVALID_PARAM"),
    "payload-1019-bytes": (
        lambda u: event(u, payload=payload_of_size(1019)),
        "M_INVALID_PARAM",
    ),
    "payload-1019-bytes-utf8": (
        lambda u: event(u, payload={"p": "ä" * 505 + "x"}),
        "M_INVALID_PARAM",
    ),
    "payload-deeply-nested": (
        lambda u: event(u, payload=json.loads('{"a":' + "[" * DEEP + "]" * DEEP + "}")),
        "M_INVALID_PARAM",
    ),
    "prio-urgent": (lambda u: event(u, prio="urgent"), "M_INVALID_PARAM"),
    "prio-upper-case": (lambda u: event(u, prio="HIGH"), "M_INVALID_PARAM"),
    "prio-number": (lambda u: event(u, prio=1), "M_INVALID_PARAM"),
    "prio-null": (lambda u: event(u, prio=None), "M_INVALID_PARAM"),
    "missing-user": (lambda u: {"channel": ACTIVATE, "payload": {}}, "M_MISSING_PARAM"),
    "missing-channel": (lambda u: {"user_id": u, "payload": {}}, "M_MISSING_PARAM"),
    "missing-payload": (lambda u: {"user_id": u, "channel": ACTIVATE}, "M_MISSING_PARAM"),
    "empty-object": (lambda u: {}, "M_MISSING_PARAM"),
    "user-number": (lambda u: event(u, user_id=42), "M_INVALID_PARAM"),
    "user-empty": (lambda u: event(u, user_id=""), "M_INVALID_PARAM"),
    "user-control-character": (lambda u: event(u, user_id=u + "\n"), "M_INVALID_PARAM"),
    "channel-list": (lambda u: event(u, channel=[ACTIVATE]), "M_INVALID_PARAM"),
    "payload-string": (lambda u: event(u, payload='{"n": 1}'), "M_INVALID_PARAM"),
    "payload-array": (lambda u: event(u, payload=[1, 2]), "M_INVALID_PARAM"),
    "payload-null": (lambda u: event(u, payload=None), "M_INVALID_PARAM"),
    "identifier-number": (lambda u: event(u, identifier=7), "M_INVALID_PARAM"),
    "identifier-empty": (lambda u: event(u, identifier=""), "M_INVALID_PARAM"),
    "identifier-too-long": (lambda u: event(u, identifier="i" * 257), "M_INVALID_PARAM"),
    "extra-field": (lambda u: event(u, title="Rezept"), "M_INVALID_PARAM"),
}


@pytest.mark.parametrize(("make", "errcode"), BAD_EVENTS.values(), ids=BAD_EVENTS.keys())
def test_a_malformed_event_is_400_and_stores_nothing(
    rig: Rig, gateway: GatewayThread, make: Callable[[str], Any], errcode: str
) -> None:
    """Unknown channel, a payload whose JSON does not fit the 1018 bytes of the frame, a bad
    ``prio``, missing fields, wrong JSON types, extra fields: 400 with a Matrix errcode, alone
    or inside a batch — and no event, no notification (the user has a subscribed device)."""
    user = new_user()
    rig.register(AppDevice(user, gateway))
    bad = make(user)
    error_of(rig.events.post(EVENTS, json=bad), 400, errcode)
    error_of(rig.events.post(BATCH, json={"events": [bad]}), 400, errcode)
    assert stored_events(rig.service, user) == 0


def test_missing_fields_are_named_in_one_answer(rig: Rig) -> None:
    """M_MISSING_PARAM names every missing field (in a batch, with the event's position)."""
    message = error_of(rig.events.post(EVENTS, json={"prio": "low"}), 400, "M_MISSING_PARAM")
    for name in ("user_id", "channel", "payload"):
        assert name in message, message
    user = new_user()
    response = rig.events.post(BATCH, json={"events": [event(user), {"user_id": user}]})
    message = error_of(response, 400, "M_MISSING_PARAM")
    assert "events[1].channel" in message and "events[1].payload" in message, message
    assert "events[0]" not in message
    assert stored_events(rig.service, user) == 0


NOT_OBJECTS: dict[str, tuple[bytes, str]] = {
    "not-json": (b"user_id=alice", "M_NOT_JSON"),
    "empty": (b"", "M_NOT_JSON"),
    "truncated": (b'{"user_id": "alice", ', "M_NOT_JSON"),
    "array": (b"[]", "M_BAD_JSON"),
    "string": (b'"event"', "M_BAD_JSON"),
}


@pytest.mark.parametrize(("content", "errcode"), NOT_OBJECTS.values(), ids=NOT_OBJECTS.keys())
def test_a_body_that_is_not_a_json_object_is_400(rig: Rig, content: bytes, errcode: str) -> None:
    """Not JSON: M_NOT_JSON; JSON that is not an object: M_BAD_JSON (both endpoints)."""
    for path in (EVENTS, BATCH):
        response = rig.events.post(
            path, content=content, headers={"Content-Type": "application/json"}
        )
        error_of(response, 400, errcode)


def test_a_payload_of_exactly_1018_bytes_is_accepted_and_arrives_whole(
    rig: Rig, gateway: GatewayThread
) -> None:
    """The limit is the frame's: 1018 bytes of the payload's compact UTF-8 JSON — counted on
    the payload, not on the request (escapes and whitespace in the request do not count). Such a
    payload fills the frame without padding and the app decrypts it byte for byte."""
    user = new_user()
    phone = AppDevice(user, gateway)
    rig.register(phone)
    ascii_payload = payload_of_size(1018)
    umlauts = payload_of_size(1018, "ä")
    answers = [rig.emit(user, ACTIVATE, ascii_payload)]
    # The same 1018 bytes sent as \u00e4 escapes with indentation: a 3000-byte request.
    content = json.dumps(event(user, payload=umlauts), ensure_ascii=True, indent=4).encode()
    assert len(content) > 3000
    response = rig.events.post(EVENTS, content=content)
    assert response.status_code == 202, response.text
    answers.append(response.json())
    for answer in answers:
        assert answer["notifications"] == 1
        rig.delivered(answer["event_id"], 1)
    assert sorted(map(str, phone.payloads())) == sorted(map(str, [ascii_payload, umlauts]))


def test_batch_bounds(rig: Rig) -> None:
    """``events``: 1 to FDPUSH_MAX_EVENTS_PER_BATCH events. None, more than the maximum, or
    not a list: 400 and nothing stored; exactly the maximum: 202 with one result per event."""
    user = new_user()
    for body in (
        {"events": []},
        {"events": [event(user)] * (MAX_BATCH + 1)},
        {"events": event(user)},
        {"events": None},
    ):
        error_of(rig.events.post(BATCH, json=body), 400, "M_INVALID_PARAM")
    error_of(rig.events.post(BATCH, json={}), 400, "M_MISSING_PARAM")
    error_of(rig.events.post(BATCH, json={"events": [], "extra": 1}), 400, "M_INVALID_PARAM")
    assert stored_events(rig.service, user) == 0

    results = rig.emit_many([event(user, payload={"n": n}) for n in range(MAX_BATCH)])
    assert len(results) == MAX_BATCH
    assert len({r["event_id"] for r in results}) == MAX_BATCH
    # 12 hex digits of time, 20 random ones: each event its own 20 of one draw per batch
    assert all(re.fullmatch("[0-9a-f]{32}", r["event_id"]) for r in results), results[:3]
    assert len({r["event_id"][12:] for r in results}) == MAX_BATCH
    [(count,)] = rig.service.query(
        "SELECT count(*) FROM events WHERE user_id = ?", (rig.service.pseudonym(user),)
    )
    assert count == MAX_BATCH


@pytest.mark.parametrize(
    "bad",
    [
        {"channel": "erp.no.such.channel"},
        {"payload": payload_of_size(1019)},
        {"prio": "urgent"},
        {"user_id": 42},
        {"unexpected": True},
    ],
    ids=["unknown-channel", "payload-too-large", "bad-prio", "wrong-type", "extra-field"],
)
def test_a_batch_with_one_bad_event_stores_nothing(
    rig: Rig, gateway: GatewayThread, bad: dict[str, Any]
) -> None:
    """All or none: one bad event among good ones (last, so the good ones come first) refuses
    the whole batch — no event and no notification of it is stored, and nothing is sent."""
    alice, bob = new_user(), new_user()
    phones = [AppDevice(alice, gateway), AppDevice(bob, gateway)]
    for phone in phones:
        rig.register(phone)
    events = [event(alice), event(bob), event(alice, COMMUNICATION), {**event(bob), **bad}]
    response = rig.events.post(BATCH, json={"events": events})
    assert response.status_code == 400, response.text
    assert response.json()["errcode"] in ("M_INVALID_PARAM", "M_MISSING_PARAM")
    assert stored_events(rig.service, alice, bob) == 0

    # The same batch without the bad event goes through: the rest was fine.
    results = rig.emit_many(events[:3])
    assert [r["notifications"] for r in results] == [1, 1, 0]
    for result in results:
        rig.delivered(result["event_id"], result["notifications"])
    assert [len(phone.inbox()) for phone in phones] == [1, 1]


# --- what it answers ---------------------------------------------------------------------------


def test_notifications_counts_the_devices_subscribed_at_the_time_of_the_event(
    rig: Rig, gateway: GatewayThread
) -> None:
    """The 202's ``notifications`` is the number of the user's devices with the channel
    ``enabled`` — by the catalog default (enabled / not_set / disabled) or by their own choice —
    at the time of the event; others' devices never count; each count ends delivered."""
    user, other = new_user(), new_user()
    defaults = AppDevice(user, gateway)  # activate (enabled), communication (not_set), close
    chooser = AppDevice(user, gateway)
    silent = AppDevice(user, gateway)
    stranger = AppDevice(other, gateway)  # another user, everything enabled
    for phone in (defaults, chooser, silent, stranger):
        rig.register(phone)
    rig.choose(chooser, erp_task_activate="disabled", erp_communication_new="enabled")
    rig.choose(chooser, erp_task_close="enabled")
    rig.choose(silent, erp_task_activate="not_set", erp_task_close="disabled")
    rig.choose(stranger, erp_task_activate="enabled", erp_communication_new="enabled")
    rig.choose(stranger, erp_task_close="enabled")

    expected = {ACTIVATE: 1, COMMUNICATION: 1, CLOSE: 1}
    for channel, count in expected.items():
        answer = rig.emit(user, channel, {"channel": channel})
        assert set(answer) == {"event_id", "notifications"}
        assert answer["notifications"] == count, channel
        rig.delivered(answer["event_id"], count)

    # One batch: a result per event, in order.
    results = rig.emit_many([event(user, c) for c in (CLOSE, ACTIVATE, COMMUNICATION)])
    assert [r["notifications"] for r in results] == [1, 1, 1]

    # Choices made later count for later events.
    rig.choose(silent, erp_task_activate="enabled")
    rig.choose(defaults, erp_task_activate="disabled")
    rig.choose(chooser, erp_task_activate="enabled")
    assert rig.emit(user, ACTIVATE, {"later": True})["notifications"] == 2
    # Nobody subscribed, or nobody there at all.
    rig.choose(silent, erp_task_activate="disabled")
    rig.choose(chooser, erp_task_activate="not_set")
    answer = rig.emit(user, ACTIVATE, {"nobody": True})
    assert answer["notifications"] == 0
    assert rig.settled(answer["event_id"]) == {
        "pending": 0,
        "delivered": 0,
        "rejected": 0,
        "failed": 0,
    }
    assert rig.emit(new_user(), ACTIVATE, {"no devices": True})["notifications"] == 0
    # The stranger got exactly the other user's nothing.
    assert stranger.inbox() == []


def test_the_event_status_has_the_documented_shape(rig: Rig, gateway: GatewayThread) -> None:
    """GET /internal/v1/events/{id} → ``{"event_id", "channel", "created", "counts":
    {"pending", "delivered", "rejected", "failed"}}``, ``created`` an ISO time with its zone."""
    user = new_user()
    for _ in range(2):
        rig.register(AppDevice(user, gateway))
    before = datetime.now(UTC)
    answer = rig.emit(user, ACTIVATE, {"shape": True}, prio="low", identifier="status-1")
    rig.delivered(answer["event_id"], 2)

    status = rig.status(answer["event_id"])
    assert set(status) == {"event_id", "channel", "created", "counts"}
    assert status["event_id"] == answer["event_id"]
    assert status["channel"] == ACTIVATE
    assert status["counts"] == {"pending": 0, "delivered": 2, "rejected": 0, "failed": 0}
    created = datetime.fromisoformat(status["created"])
    assert created.utcoffset() is not None
    assert before - timedelta(seconds=5) <= created <= datetime.now(UTC) + timedelta(seconds=5)


@pytest.mark.parametrize(
    "event_id",
    ["0123456789abcdef0123456789abcdef", "nope", "x" * 300, "a%2Fb", "%C3%A4", "1%20OR%201=1"],
)
def test_an_unknown_event_is_404(rig: Rig, event_id: str) -> None:
    """An id the service never gave out, whatever it looks like: 404 M_NOT_FOUND."""
    response = rig.events.get(f"{EVENTS}/{event_id}")
    assert response.status_code == 404, response.text
    assert response.json()["errcode"] in ("M_NOT_FOUND", "M_UNRECOGNIZED")
    if "%2F" not in event_id:  # a slash makes it another path, not an event id
        error_of(response, 404, "M_NOT_FOUND")


# --- where it listens --------------------------------------------------------------------------


def test_with_its_own_port_the_internal_api_is_only_there(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> None:
    """FDPUSH_INTERNAL_PORT: the events API answers on its own listener and is 404 on the
    client port; the client API is 404 on the internal port and works on its own."""
    internal_port = free_port()
    service = start_service(**delivery_env(pki, [gateway], FDPUSH_INTERNAL_PORT=str(internal_port)))
    internal_url = f"http://127.0.0.1:{internal_port}"

    def internal_up() -> bool:
        try:
            httpx.get(internal_url + "/openapi.json", timeout=1)
        except httpx.TransportError:
            return False
        return True

    wait_for(internal_up, timeout=15, what="the internal listener")
    user = new_user()
    phone = AppDevice(user, gateway)
    with internal_client(internal_url) as internal, internal_client(service.base_url) as client:
        # Not on the client port, whatever the key.
        for method, path, body in calls(user):
            error_of(client.request(method, path, json=body), 404, "M_UNRECOGNIZED")
        # On its own port, with its key.
        for method, path, body in calls(user):
            response = internal.request(method, path, json=body, headers={"Authorization": ""})
            error_of(response, 401, "M_MISSING_TOKEN")
        rig = Rig(service)
        rig.register(phone)  # through the client port
        answer = internal.post(EVENTS, json=event(user, payload={"via": "internal port"}))
        assert answer.status_code == 202, answer.text
        event_id = answer.json()["event_id"]
        assert answer.json()["notifications"] == 1
        batch = internal.post(BATCH, json={"events": [event(user)]})
        assert batch.status_code == 202, batch.text
        wait_for(
            lambda: internal.get(f"{EVENTS}/{event_id}").json()["counts"]["delivered"] == 1,
            timeout=15,
            what="delivered",
        )
        rig.close()
    assert {"via": "internal port"} in phone.payloads()

    # The client API is not on the internal port ...
    with httpx.Client(base_url=internal_url, timeout=30) as http:
        token = {"Authorization": f"Bearer {dev_token(user)}"}
        for path in ("/push/v1/pushers", "/pushers/v1", "/push/v1/channels"):
            error_of(http.get(path, headers=token), 404, "M_UNRECOGNIZED")
    # ... but on its own.
    with service.client(user) as http:
        listed = http.get("/push/v1/pushers")
        assert listed.status_code == 200, listed.text
        assert [p["pushkey"] for p in listed.json()["pushers"]] == [phone.pushkey]
