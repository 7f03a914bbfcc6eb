"""Pushers: ``POST pushers/set`` and ``GET pushers`` in both layouts (docs/concept.md, "What the
Client-FD API promises").

Every rule runs against the real service over HTTP, on SQLite and PostgreSQL. Where a request
must fail, the test also checks that it left nothing behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from conftest import GATEWAY_URL, Service, new_user, registration

# --- the two layouts and small helpers --------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    name: str
    pushers: str
    pushers_set: str


SEED = Layout("seed", "/pushers/v1", "/pushers/v1/set")
CURRENT = Layout("current", "/push/v1/pushers", "/push/v1/pushers/set")

PUSHER_FIELDS = {
    "pushkey",
    "kind",
    "app_id",
    "app_display_name",
    "device_display_name",
    "profile_tag",
    "lang",
    "data",
}


@pytest.fixture(params=[SEED, CURRENT], ids=lambda layout: layout.name)
def layout(request: pytest.FixtureRequest) -> Layout:
    return request.param  # type: ignore[no-any-return]


def error_of(response: httpx.Response, status: int, errcode: str) -> str:
    """Assert a Matrix error answer; return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errcode"] == errcode, body
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


def stored(service: Service, user: str) -> list[tuple[Any, ...]]:
    """The user's pusher rows as the database holds them (the pushkey as its keyed index)."""
    return service.query(
        "SELECT app_id, pushkey, app_display_name FROM pushers WHERE user_id = ? ORDER BY id",
        (service.pseudonym(user),),
    )


def pushkey_ts(service: Service, user: str, pushkey: str) -> int:
    [(ts,)] = service.query(
        "SELECT pushkey_ts FROM pushers WHERE user_id = ? AND pushkey = ?",
        (service.pseudonym(user), service.pushkey_index(pushkey)),
    )
    return int(ts)


def listed(http: httpx.Client, layout: Layout = CURRENT) -> list[dict[str, Any]]:
    response = http.get(layout.pushers)
    assert response.status_code == 200, response.text
    return response.json()["pushers"]  # type: ignore[no-any-return]


DROP = object()


def set_path(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``body`` with the (dotted) ``path`` set to ``value``; the sentinel DROP removes it."""
    *parents, last = path.split(".")
    target = body
    for name in parents:
        target[name] = dict(target[name])
        target = target[name]
    if value is DROP:
        target.pop(last, None)
    else:
        target[last] = value
    return body


# --- create, update, list ---------------------------------------------------------------------


def test_register_creates_a_pusher_listed_in_both_layouts(service: Service, layout: Layout) -> None:
    """kind "http" creates the pusher; GET pushers (either layout) shows exactly what was sent."""
    user = new_user()
    body = registration(profile_tag="tag-1", data={"url": GATEWAY_URL, "format": "event_id_only"})
    with service.client(user) as http:
        response = http.post(layout.pushers_set, json=body)
        assert response.status_code == 200 and response.json() == {}
        for other in (SEED, CURRENT):
            assert listed(http, other) == [
                {
                    "pushkey": body["pushkey"],
                    "kind": "http",
                    "app_id": body["app_id"],
                    "app_display_name": "Test App",
                    "device_display_name": "Test Phone",
                    "profile_tag": "tag-1",
                    "lang": "de",
                    "data": {"url": GATEWAY_URL, "format": "event_id_only"},
                }
            ]


def test_get_pushers_shows_only_the_published_fields_never_key_material(service: Service) -> None:
    """GET pushers: the eight fields of the spec (data with url and whatever else it held)."""
    user = new_user()
    body = registration(data={"url": GATEWAY_URL, "format": "event_id_only", "extra": [1, "x"]})
    with service.client(user) as http:
        assert http.post("/push/v1/pushers/set", json=body).status_code == 200
        response = http.get("/push/v1/pushers")
    [pusher] = response.json()["pushers"]
    # profile_tag was not sent: the spec types it as a string, so it is absent rather than null.
    assert set(pusher) | {"profile_tag"} == PUSHER_FIELDS
    assert pusher.get("profile_tag", "") is not None
    assert pusher["data"] == {"url": GATEWAY_URL, "format": "event_id_only", "extra": [1, "x"]}
    text = response.text.lower()
    for secret in ("iss", "encryption", "key_identifier", "material", "pushkey_ts"):
        assert f'"{secret}"' not in text
    assert body["encryption"]["iss"].lower() not in text
    assert body["encryption"]["key_identifier"].lower() not in text


def test_reregistration_updates_in_place(service: Service, layout: Layout) -> None:
    """The caller's own pusher (user, app_id, pushkey) is updated, never duplicated."""
    user = new_user()
    first = registration()
    with service.client(user) as http:
        assert http.post(layout.pushers_set, json=first).status_code == 200
        again = registration(
            first["pushkey"],
            app_display_name="Renamed",
            device_display_name="Other Phone",
            lang="en",
            profile_tag="p",
            data={"url": "https://gw2.test:8443/push/v1/"},
        )
        assert http.post(layout.pushers_set, json=again).status_code == 200
        [pusher] = listed(http, layout)
    assert pusher["app_display_name"] == "Renamed"
    assert pusher["device_display_name"] == "Other Phone"
    assert pusher["lang"] == "en" and pusher["profile_tag"] == "p"
    assert pusher["data"] == {"url": "https://gw2.test:8443/push/v1/"}
    index = service.pushkey_index(first["pushkey"])
    assert stored(service, user) == [(first["app_id"], index, "Renamed")]


def test_pushkey_ts_is_recorded_on_create_and_renewed_on_update(service: Service) -> None:
    """pushkey_ts (seconds) is set when the pusher is created and again on every update."""
    user = new_user()
    body = registration()
    with service.client(user) as http:
        before = int(time.time())
        assert http.post("/push/v1/pushers/set", json=body).status_code == 200
        assert before <= pushkey_ts(service, user, body["pushkey"]) <= time.time()
        # Age the stored value, so that the update must visibly write a new one.
        service.query(
            "UPDATE pushers SET pushkey_ts = 1000 WHERE user_id = ? RETURNING id",
            (service.pseudonym(user),),
        )
        before = int(time.time())
        again = registration(body["pushkey"], device_display_name="Renamed")
        assert http.post("/pushers/v1/set", json=again).status_code == 200
    assert before <= pushkey_ts(service, user, body["pushkey"]) <= time.time()


def test_pushers_are_listed_in_a_stable_order(service: Service) -> None:
    """Registration order, unchanged by updates and the same on every call."""
    user = new_user()
    bodies = [registration(app_id=f"app.{i}") for i in (3, 1, 2)] + [registration()]
    with service.client(user) as http:
        for body in bodies:
            assert http.post("/push/v1/pushers/set", json=body).status_code == 200
        updated = {**bodies[0], "device_display_name": "Updated"}
        assert http.post("/push/v1/pushers/set", json=updated).status_code == 200
        orders = [[(p["app_id"], p["pushkey"]) for p in listed(http)] for _ in range(3)]
    expected = [(b["app_id"], b["pushkey"]) for b in bodies]
    assert orders == [expected] * 3


def test_pushers_of_other_users_are_invisible_and_untouchable(service: Service) -> None:
    """User B never sees A's pushers; B's delete of A's (app_id, pushkey) leaves A's alone."""
    alice, bob = new_user(), new_user()
    body = registration()
    with service.client(alice) as a, service.client(bob) as b:
        assert a.post("/push/v1/pushers/set", json=body).status_code == 200
        assert listed(b) == [] and listed(b, SEED) == []
        delete = {"kind": None, "app_id": body["app_id"], "pushkey": body["pushkey"]}
        response = b.post("/pushers/v1/set", json=delete)
        assert response.status_code == 200 and response.json() == {}
        assert [p["pushkey"] for p in listed(a)] == [body["pushkey"]]
        # Sharing the pushkey (append: true) gives B a pusher of its own; A's stays as it was.
        shared = registration(body["pushkey"], append=True, app_display_name="Bob's")
        assert b.post("/push/v1/pushers/set", json=shared).status_code == 200
        assert listed(a)[0]["app_display_name"] == "Test App"
        assert listed(b)[0]["app_display_name"] == "Bob's"


# --- delete -------------------------------------------------------------------------------------


def test_kind_null_deletes_idempotently(service: Service, layout: Layout) -> None:
    """kind null deletes the caller's pusher; 200 {} again when there is none (any more)."""
    user = new_user()
    body = registration()
    keep = registration(body["pushkey"], app_id="other.app")
    delete = {"kind": None, "app_id": body["app_id"], "pushkey": body["pushkey"]}
    with service.client(user) as http:
        for created in (body, keep):
            assert http.post(layout.pushers_set, json=created).status_code == 200
        for _ in range(2):
            response = http.post(layout.pushers_set, json=delete)
            assert response.status_code == 200 and response.json() == {}
        # Only that app's pusher went; the same pushkey of another app_id stays.
        assert [(p["app_id"], p["pushkey"]) for p in listed(http, layout)] == [
            ("other.app", body["pushkey"])
        ]
        never = {"kind": None, "app_id": "never.registered", "pushkey": "nothing-here"}
        response = http.post(layout.pushers_set, json=never)
        assert response.status_code == 200 and response.json() == {}
    index = service.pushkey_index(body["pushkey"])
    assert stored(service, user) == [("other.app", index, "Test App")]
    assert service.query(
        "SELECT count(*) FROM pusher_keys k JOIN pushers p ON p.id = k.pusher_id "
        "WHERE p.user_id = ? AND p.app_id = ?",
        (service.pseudonym(user), body["app_id"]),
    ) == [(0,)]


def test_delete_needs_app_id_and_pushkey_only(service: Service) -> None:
    """kind null: only app_id and pushkey are required, and both are."""
    with service.client(new_user()) as http:
        response = http.post("/push/v1/pushers/set", json={"kind": None})
        message = error_of(response, 400, "M_MISSING_PARAM")
        assert "app_id" in message and "pushkey" in message
        for field in ("lang", "data", "encryption", "app_display_name"):
            assert field not in message


# --- kind and required fields ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["email", "", "HTTP", "pusher", 1, True, [], {}])
def test_kind_other_than_http_or_null_is_invalid(
    service: Service, layout: Layout, kind: object
) -> None:
    user = new_user()
    with service.client(user) as http:
        response = http.post(layout.pushers_set, json=registration(kind=kind))
        assert "kind" in error_of(response, 400, "M_INVALID_PARAM")
        assert listed(http) == []
    assert stored(service, user) == []


def test_missing_kind_is_missing_param(service: Service, layout: Layout) -> None:
    user = new_user()
    body = registration()
    del body["kind"]
    with service.client(user) as http:
        response = http.post(layout.pushers_set, json=body)
        assert error_of(response, 400, "M_MISSING_PARAM") == "Missing parameters: kind"
        message = error_of(http.post(layout.pushers_set, json={}), 400, "M_MISSING_PARAM")
    assert all(name in message for name in ("kind", "app_id", "pushkey"))
    assert stored(service, user) == []


ALL_REQUIRED = [
    "app_id",
    "pushkey",
    "app_display_name",
    "device_display_name",
    "lang",
    "data",
    "encryption",
]


@pytest.mark.parametrize(
    "absent",
    [
        ["lang", "data"],
        ["app_id"],
        ["pushkey"],
        ["app_display_name"],
        ["device_display_name"],
        ["encryption"],
        ["data.url"],
        ["encryption.iss"],
        ["encryption.method", "encryption.time_iss_created", "encryption.key_identifier"],
        ALL_REQUIRED,
    ],
    ids=lambda absent: "+".join(absent),
)
def test_missing_fields_are_all_named(service: Service, layout: Layout, absent: list[str]) -> None:
    """M_MISSING_PARAM names every missing field at once (a null counts as missing)."""
    user = new_user()
    for how in (DROP, None):
        body = registration()
        for path in absent:
            set_path(body, path, how)
        with service.client(user) as http:
            message = error_of(http.post(layout.pushers_set, json=body), 400, "M_MISSING_PARAM")
        assert message == "Missing parameters: " + ", ".join(absent)
    assert stored(service, user) == []


def test_data_without_url_names_data_url(service: Service) -> None:
    user = new_user()
    with service.client(user) as http:
        response = http.post("/pushers/v1/set", json=registration(data={"format": "event_id_only"}))
        assert error_of(response, 400, "M_MISSING_PARAM") == "Missing parameters: data.url"
    assert stored(service, user) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("app_id", 5),
        ("app_id", ["de.gematik.app"]),
        ("pushkey", 123),
        ("pushkey", ["pk"]),
        ("app_display_name", 1),
        ("device_display_name", False),
        ("profile_tag", 7),
        ("lang", ["de"]),
        ("data", GATEWAY_URL),
        ("data", [GATEWAY_URL]),
        ("data.url", 5),
        ("data.url", {"href": GATEWAY_URL}),
        ("append", "false"),
        ("append", 0),
        ("append", 1),
        ("encryption", "aes-hmac-sha256"),
        ("encryption", ["aes-hmac-sha256"]),
        ("encryption.method", 1),
        ("encryption.iss", 5),
        ("encryption.time_iss_created", 202310),
        ("encryption.key_identifier", 5),
    ],
    ids=lambda value: repr(value)[:24],
)
def test_wrong_json_types_are_invalid_and_store_nothing(
    service: Service, layout: Layout, path: str, value: object
) -> None:
    """A field of the wrong JSON type is M_INVALID_PARAM, named in the message."""
    user = new_user()
    body = set_path(registration(), path, value)
    with service.client(user) as http:
        message = error_of(http.post(layout.pushers_set, json=body), 400, "M_INVALID_PARAM")
        assert path.rsplit(".", 1)[-1] in message
        assert listed(http) == []
    assert stored(service, user) == []


def test_a_failed_update_leaves_the_pusher_as_it_was(service: Service) -> None:
    """Nothing is stored when a request fails: not a half-applied update either."""
    user = new_user()
    body = registration()
    with service.client(user) as http:
        assert http.post("/push/v1/pushers/set", json=body).status_code == 200
        [before] = listed(http)
        [(material,)] = service.query(
            "SELECT k.material FROM pusher_keys k JOIN pushers p ON p.id = k.pusher_id "
            "WHERE p.user_id = ?",
            (service.pseudonym(user),),
        )
        failing = [
            registration(
                body["pushkey"], app_display_name="New", data={"url": "https://evil.test/push/v1/"}
            ),
            registration(body["pushkey"], app_display_name="New", lang="x" * 33),
            set_path(registration(body["pushkey"], app_display_name="New"), "encryption.iss", "00"),
        ]
        for bad in failing:
            assert http.post("/push/v1/pushers/set", json=bad).status_code == 400
        assert listed(http) == [before]
    assert service.query(
        "SELECT k.material FROM pusher_keys k JOIN pushers p ON p.id = k.pusher_id "
        "WHERE p.user_id = ?",
        (service.pseudonym(user),),
    ) == [(material,)]


# --- bounds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pushkey", "a" * 512),
        ("pushkey", "€" * 170),  # 510 bytes of UTF-8
        ("pushkey", "ü" * 256),  # 512 bytes of UTF-8
        ("pushkey", "x"),
        ("app_id", "a" * 64),
        ("app_id", "é" * 64),  # 64 characters, 128 bytes
        ("app_id", "a"),
        ("app_display_name", "n" * 256),
        ("device_display_name", "d" * 256),
        ("profile_tag", "t" * 256),
        ("lang", "l" * 32),
    ],
    ids=lambda value: f"{value[:12]}({len(value)})" if isinstance(value, str) else str(value),
)
def test_values_at_their_bounds_are_accepted(service: Service, field: str, value: str) -> None:
    user = new_user()
    body = set_path(registration(), field, value)
    with service.client(user) as http:
        response = http.post("/push/v1/pushers/set", json=body)
        assert response.status_code == 200, response.text
        [pusher] = listed(http)
    assert pusher[field] == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pushkey", ""),
        ("pushkey", "a" * 513),
        ("pushkey", "€" * 171),  # 171 characters, but 513 bytes of UTF-8
        ("pushkey", "ü" * 256 + "a"),  # 513 bytes
        ("pushkey", "line\nbreak"),
        ("app_id", ""),
        ("app_id", "a" * 65),
        ("app_id", "é" * 65),
        ("app_display_name", "n" * 257),
        ("device_display_name", "d" * 257),
        ("profile_tag", "t" * 257),
        ("lang", "l" * 33),
        ("data", {"url": GATEWAY_URL, "padding": "p" * 4096}),
    ],
    ids=lambda value: f"{str(value)[:12]}({len(value)})" if isinstance(value, str) else "big",
)
def test_values_out_of_bounds_are_invalid(
    service: Service, layout: Layout, field: str, value: object
) -> None:
    user = new_user()
    with service.client(user) as http:
        body = set_path(registration(), field, value)
        response = http.post(layout.pushers_set, json=body)
        assert field in error_of(response, 400, "M_INVALID_PARAM")
    assert stored(service, user) == []


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("k" * 128, True), ("k" * 129, False), ("", False), ("has space", False)],
    ids=["128", "129", "empty", "space"],
)
def test_key_identifier_is_a_non_empty_bounded_string(
    service: Service, value: str, accepted: bool
) -> None:
    user = new_user()
    body = set_path(registration(), "encryption.key_identifier", value)
    with service.client(user) as http:
        response = http.post("/push/v1/pushers/set", json=body)
    if accepted:
        assert response.status_code == 200, response.text
        assert service.query(
            "SELECT key_identifier FROM pushers WHERE user_id = ?", (service.pseudonym(user),)
        ) == [(value,)]
    else:
        assert "key_identifier" in error_of(response, 400, "M_INVALID_PARAM")
        assert stored(service, user) == []


# --- data.url ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://gateway.test/push/v1/",
        "https://gateway.test:443/push/v1/",  # the allow-list's implicit port, written out
        "https://GATEWAY.test/push/v1/",
        "https://gw2.test:8443/push/v1/",  # an entry with an explicit port
        "https://127.0.0.1:8443/push/v1/",
        "https://gateway.test/tenant-a/push/v1/",  # a base below a prefix
        "https://gateway.test/push/v1/notify",  # seed-era full URL
        "https://gateway.test/_matrix/push/v1/notify",  # seed-era (Matrix) full URL
    ],
)
def test_gateway_urls_the_rules_accept(service: Service, layout: Layout, url: str) -> None:
    user = new_user()
    with service.client(user) as http:
        response = http.post(layout.pushers_set, json=registration(data={"url": url}))
        assert response.status_code == 200, response.text
        assert listed(http)[0]["data"]["url"] == url


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://gateway.test/push/v1/", "https"),
        ("http://gateway.test:443/push/v1/", "https"),
        ("ftp://gateway.test/push/v1/", "https"),
        ("gateway.test/push/v1/", "https"),
        ("https://gw2.test/push/v1/", "allow-list"),  # gw2.test is allowed on 8443 only
        ("https://gateway.test:8443/push/v1/", "allow-list"),  # gateway.test on 443 only
        ("https://evil.test/push/v1/", "allow-list"),
        ("https://gateway.test.evil.test/push/v1/", "allow-list"),
        ("https://127.0.0.1/push/v1/", "allow-list"),
        ("https://gateway.test/push/v1", "path"),
        ("https://gateway.test/", "path"),
        ("https://gateway.test", "path"),
        ("https://gateway.test/push/v2/", "path"),
        ("https://gateway.test/push/v1/notify/", "path"),
        ("https://gateway.test/push/v1/notifyEncrypted/batch", "path"),
        ("https://gateway.test/x/../push/v1/", "path"),
        ("https://gateway.test/%70ush/v1/", "path"),
        ("https://user:secret@gateway.test/push/v1/", "credentials"),
        ("https://user@gateway.test/push/v1/", "credentials"),
        ("https://gateway.test/push/v1/?next=1", "query"),
        ("https://gateway.test/push/v1/?", "query"),
        ("https://gateway.test/push/v1/#top", "fragment"),
        ("https://gateway.test:99999/push/v1/", "valid URL"),
        ("https://gateway.test/push/ v1/", "spaces"),
        ("", "https"),
    ],
)
def test_gateway_urls_the_rules_refuse_say_which_rule(
    service: Service, layout: Layout, url: str, rule: str
) -> None:
    """Every refusal is M_INVALID_PARAM about data.url, naming the rule that failed."""
    user = new_user()
    with service.client(user) as http:
        response = http.post(layout.pushers_set, json=registration(data={"url": url}))
        message = error_of(response, 400, "M_INVALID_PARAM")
    assert "data.url" in message and rule in message, message
    assert stored(service, user) == []


@pytest.fixture(scope="module")
def http_service(start_service: Callable[..., Service]) -> Service:
    """Plain http allowed (the operator's test setting)."""
    return start_service(FDPUSH_GATEWAY_ALLOW_HTTP="1")


def test_plain_http_only_when_the_operator_allows_it(
    service: Service, http_service: Service
) -> None:
    url = "http://127.0.0.1:8443/push/v1/"
    with service.client(new_user()) as http:
        response = http.post("/push/v1/pushers/set", json=registration(data={"url": url}))
        assert "https" in error_of(response, 400, "M_INVALID_PARAM")
    user = new_user()
    with http_service.client(user) as http:
        response = http.post("/push/v1/pushers/set", json=registration(data={"url": url}))
        assert response.status_code == 200, response.text
        https = registration(data={"url": GATEWAY_URL})
        assert http.post("/pushers/v1/set", json=https).status_code == 200
        # The allow-list still applies: plain http defaults to port 80, not listed.
        response = http.post(
            "/pushers/v1/set", json=registration(data={"url": "http://gateway.test/push/v1/"})
        )
        assert "allow-list" in error_of(response, 400, "M_INVALID_PARAM")
        assert [p["data"]["url"] for p in listed(http)] == [url, GATEWAY_URL]


@pytest.fixture(scope="module")
def closed_service(start_service: Callable[..., Service]) -> Service:
    """No gateway on the allow-list."""
    return start_service(FDPUSH_GATEWAY_ALLOWLIST="")


def test_an_empty_allow_list_allows_nothing_and_says_so(
    closed_service: Service, layout: Layout
) -> None:
    user = new_user()
    with closed_service.client(user) as http:
        response = http.post(layout.pushers_set, json=registration())
        message = error_of(response, 400, "M_INVALID_PARAM")
        assert "no Push Gateway is allowed" in message
        assert "FDPUSH_GATEWAY_ALLOWLIST" in message
        assert listed(http) == []


# --- append -----------------------------------------------------------------------------------


def test_append_false_takes_the_pushkey_over_from_other_users(
    service: Service, layout: Layout
) -> None:
    """append false (the default) removes the same app_id + pushkey of other users."""
    alice, bob, carol = new_user(), new_user(), new_user()
    pushkey = registration()["pushkey"]
    with service.client(alice) as a, service.client(bob) as b, service.client(carol) as c:
        assert a.post(layout.pushers_set, json=registration(pushkey)).status_code == 200
        assert (
            b.post(layout.pushers_set, json=registration(pushkey, append=True)).status_code == 200
        )
        explicit = registration(pushkey, append=False)
        implicit = registration(pushkey)
        assert "append" not in implicit
        for body in (explicit, implicit):
            assert c.post(layout.pushers_set, json=body).status_code == 200
            assert listed(a, layout) == [] and listed(b, layout) == []
            assert [p["pushkey"] for p in listed(c, layout)] == [pushkey]
    rows = service.query(
        "SELECT user_id FROM pushers WHERE pushkey = ?", (service.pushkey_index(pushkey),)
    )
    assert rows == [(service.pseudonym(carol),)]


def test_append_true_keeps_other_users_pushers(service: Service, layout: Layout) -> None:
    alice, bob = new_user(), new_user()
    pushkey = registration()["pushkey"]
    with service.client(alice) as a, service.client(bob) as b:
        assert a.post(layout.pushers_set, json=registration(pushkey)).status_code == 200
        assert (
            b.post(layout.pushers_set, json=registration(pushkey, append=True)).status_code == 200
        )
        assert [p["pushkey"] for p in listed(a, layout)] == [pushkey]
        assert [p["pushkey"] for p in listed(b, layout)] == [pushkey]


def test_append_false_spares_other_app_ids_and_the_callers_own_pusher(service: Service) -> None:
    """Only the same app_id + pushkey of *other* users goes; the caller's is updated in place."""
    alice, bob = new_user(), new_user()
    pushkey = registration()["pushkey"]
    with service.client(alice) as a, service.client(bob) as b:
        assert (
            a.post("/push/v1/pushers/set", json=registration(pushkey, app_id="app.one")).status_code
            == 200
        )
        assert (
            b.post("/push/v1/pushers/set", json=registration(pushkey, app_id="app.two")).status_code
            == 200
        )
        assert (
            b.post("/push/v1/pushers/set", json=registration(pushkey, app_id="app.two")).status_code
            == 200
        )
        assert [p["app_id"] for p in listed(a)] == ["app.one"]
        assert [p["app_id"] for p in listed(b)] == ["app.two"]
    assert stored(service, bob) == [("app.two", service.pushkey_index(pushkey), "Test App")]


def test_append_false_removes_the_channel_states_of_a_device_losing_its_last_pusher(
    service: Service,
) -> None:
    """The removed user's channel choices go with the device's last pusher, and only then."""
    alice, bob, carol = new_user(), new_user(), new_user()
    pushkey = registration()["pushkey"]
    choice = {"channels": [{"id": "erp.communication.new", "status": "enabled"}]}
    device = f"/push/v1/channels/{pushkey}"
    with service.client(alice) as a, service.client(bob) as b, service.client(carol) as c:
        # Alice has the device under one app; Bob under two.
        assert a.post("/push/v1/pushers/set", json=registration(pushkey)).status_code == 200
        for app_id in ("de.gematik.test.apns", "other.app"):
            body = registration(pushkey, app_id=app_id, append=True)
            assert b.post("/push/v1/pushers/set", json=body).status_code == 200
        for http in (a, b):
            assert http.post(device, json=choice).status_code == 200
        assert c.post("/push/v1/pushers/set", json=registration(pushkey)).status_code == 200
        assert a.get(device).status_code == 404
        assert b.get(device).json()["channels"][1] == {
            "id": "erp.communication.new",
            "status": "enabled",
        }
        # Alice registering again starts from the catalog defaults.
        again = registration(pushkey, app_id="third.app", append=True)
        assert a.post("/push/v1/pushers/set", json=again).status_code == 200
        assert a.get(device).json()["channels"][1]["status"] == "not_set"
    states = service.query(
        "SELECT user_id FROM channel_states WHERE pushkey = ? ORDER BY user_id",
        (service.pushkey_index(pushkey),),
    )
    assert states == [(service.pseudonym(bob),)]


def test_a_failed_registration_removes_nobody(service: Service) -> None:
    """append false happens in the registration's transaction: a refusal removes nothing."""
    alice, bob = new_user(), new_user()
    pushkey = registration()["pushkey"]
    with service.client(alice) as a, service.client(bob) as b:
        assert a.post("/push/v1/pushers/set", json=registration(pushkey)).status_code == 200
        bad = registration(pushkey, data={"url": "https://evil.test/push/v1/"})
        assert b.post("/push/v1/pushers/set", json=bad).status_code == 400
        assert [p["pushkey"] for p in listed(a)] == [pushkey]
    assert stored(service, bob) == []


# --- encryption -------------------------------------------------------------------------------


def key_periods(service: Service, user: str) -> list[str]:
    rows = service.query(
        "SELECT k.period FROM pusher_keys k JOIN pushers p ON p.id = k.pusher_id "
        "WHERE p.user_id = ? ORDER BY k.period",
        (service.pseudonym(user),),
    )
    return [row[0] for row in rows]


@pytest.mark.parametrize(
    "encryption",
    [
        {"iss": os.urandom(32).hex(), "time_iss_created": "2025-01"},
        {"iss": os.urandom(32).hex().upper(), "time_iss_created": "2025-01"},
        {"initial_shared_secret": os.urandom(32).hex(), "initial_key_period": "2025-01"},
        {"iss": os.urandom(32).hex(), "initial_key_period": "2025-01"},
        {"initial_shared_secret": os.urandom(32).hex(), "time_iss_created": "2025-01"},
    ],
    ids=["current", "upper-case", "seed", "mixed-1", "mixed-2"],
)
def test_encryption_is_accepted_in_every_published_spelling(
    service: Service, layout: Layout, encryption: dict[str, str]
) -> None:
    """iss or initial_shared_secret; time_iss_created or initial_key_period."""
    user = new_user()
    body = registration(
        encryption={"method": "aes-hmac-sha256", "key_identifier": "kid-1", **encryption}
    )
    with service.client(user) as http:
        response = http.post(layout.pushers_set, json=body)
        assert response.status_code == 200, response.text
    assert key_periods(service, user) == ["2025-01"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "aes-gcm"),
        ("method", "AES-HMAC-SHA256"),
        ("method", ""),
        ("iss", "ab" * 31 + "a"),  # 63 hex digits
        ("iss", "ab" * 32 + "a"),  # 65
        ("iss", "g" * 64),
        ("iss", "0x" + "ab" * 31),
        ("iss", ""),
        ("initial_shared_secret", "ab" * 31),
        ("time_iss_created", "2023-1"),
        ("time_iss_created", "2023-13"),
        ("time_iss_created", "2023-00"),
        ("time_iss_created", "23-10"),
        ("time_iss_created", "2023-10-01"),
        ("time_iss_created", "2023/10"),
        ("time_iss_created", ""),
        ("initial_key_period", "October 2023"),
    ],
)
def test_bad_encryption_values_are_invalid(
    service: Service, layout: Layout, field: str, value: str
) -> None:
    user = new_user()
    body = registration()
    encryption = dict(body["encryption"])
    replaces = {"initial_shared_secret": "iss", "initial_key_period": "time_iss_created"}
    if field in replaces:  # the seed spelling instead of the current one
        del encryption[replaces[field]]
    encryption[field] = value
    body["encryption"] = encryption
    with service.client(user) as http:
        message = error_of(http.post(layout.pushers_set, json=body), 400, "M_INVALID_PARAM")
    assert "encryption" in message or field in message, message
    assert stored(service, user) == []


def test_disagreeing_spellings_are_invalid(service: Service) -> None:
    """iss and initial_shared_secret together must say the same."""
    user = new_user()
    body = registration()
    body["encryption"] = {**body["encryption"], "initial_shared_secret": os.urandom(32).hex()}
    with service.client(user) as http:
        message = error_of(http.post("/pushers/v1/set", json=body), 400, "M_INVALID_PARAM")
    assert "iss" in message
    assert stored(service, user) == []


def test_encryption_is_required_by_default(service: Service, layout: Layout) -> None:
    user = new_user()
    without = registration()
    del without["encryption"]
    with service.client(user) as http:
        for body in (without, registration(encryption=None)):
            message = error_of(http.post(layout.pushers_set, json=body), 400, "M_MISSING_PARAM")
            assert message == "Missing parameters: encryption"
    assert stored(service, user) == []


@pytest.fixture(scope="module")
def optional_service(start_service: Callable[..., Service]) -> Service:
    return start_service(FDPUSH_ENCRYPTION="optional")


@pytest.fixture(scope="module")
def forbidden_service(start_service: Callable[..., Service]) -> Service:
    return start_service(FDPUSH_ENCRYPTION="forbidden")


def test_encryption_optional(optional_service: Service) -> None:
    """FDPUSH_ENCRYPTION=optional: with or without; a given block must still be valid."""
    plain_user, encrypted_user, bad_user = new_user(), new_user(), new_user()
    with optional_service.client(plain_user) as http:
        response = http.post("/push/v1/pushers/set", json=registration(encryption=None))
        assert response.status_code == 200, response.text
        body = registration()
        del body["encryption"]
        assert http.post("/pushers/v1/set", json=body).status_code == 200
        assert len(listed(http)) == 2
    assert key_periods(optional_service, plain_user) == []
    with optional_service.client(encrypted_user) as http:
        body = set_path(registration(), "encryption.time_iss_created", "2025-06")
        assert http.post("/push/v1/pushers/set", json=body).status_code == 200
    assert key_periods(optional_service, encrypted_user) == ["2025-06"]
    with optional_service.client(bad_user) as http:
        bad = set_path(registration(), "encryption.iss", "abc")
        assert http.post("/push/v1/pushers/set", json=bad).status_code == 400
    assert stored(optional_service, bad_user) == []


def test_encryption_forbidden(forbidden_service: Service, layout: Layout) -> None:
    """FDPUSH_ENCRYPTION=forbidden: a registration with encryption is M_INVALID_PARAM."""
    user = new_user()
    with forbidden_service.client(user) as http:
        message = error_of(
            http.post(layout.pushers_set, json=registration()), 400, "M_INVALID_PARAM"
        )
        assert "encryption" in message
        assert listed(http) == []
        response = http.post(layout.pushers_set, json=registration(encryption=None))
        assert response.status_code == 200, response.text
        assert len(listed(http)) == 1
    assert key_periods(forbidden_service, user) == []


def test_reregistration_with_a_new_iss_replaces_the_key_chain(service: Service) -> None:
    """One key chain per pusher: the new registration's first generation, nothing older."""
    user = new_user()
    body = set_path(registration(), "encryption.time_iss_created", "2024-02")
    with service.client(user) as http:
        assert http.post("/push/v1/pushers/set", json=body).status_code == 200
        assert key_periods(service, user) == ["2024-02"]
        again = set_path(registration(body["pushkey"]), "encryption.time_iss_created", "2025-03")
        assert http.post("/push/v1/pushers/set", json=again).status_code == 200
    assert key_periods(service, user) == ["2025-03"]
    assert service.query(
        "SELECT key_identifier FROM pushers WHERE user_id = ?", (service.pseudonym(user),)
    ) == [(again["encryption"]["key_identifier"],)]


# --- the per-user limit -----------------------------------------------------------------------

LIMIT = 3


@pytest.fixture(scope="module")
def limited_service(start_service: Callable[..., Service]) -> Service:
    return start_service(FDPUSH_MAX_PUSHERS_PER_USER=str(LIMIT))


def test_pushers_per_user_are_bounded_with_a_clear_error(
    limited_service: Service, layout: Layout
) -> None:
    user = new_user()
    bodies = [registration() for _ in range(LIMIT)]
    with limited_service.client(user) as http:
        for body in bodies:
            assert http.post(layout.pushers_set, json=body).status_code == 200
        response = http.post(layout.pushers_set, json=registration())
        message = error_of(response, 400, "M_RESOURCE_LIMIT_EXCEEDED")
        assert f"at most {LIMIT}" in message and "pushers" in message.lower()
        assert len(listed(http)) == LIMIT
        # At the limit an existing pusher can still be updated ...
        update = registration(bodies[0]["pushkey"], device_display_name="Updated")
        assert http.post(layout.pushers_set, json=update).status_code == 200
        assert listed(http)[0]["device_display_name"] == "Updated"
        # ... and a deletion makes room.
        delete = {"kind": None, "app_id": bodies[1]["app_id"], "pushkey": bodies[1]["pushkey"]}
        assert http.post(layout.pushers_set, json=delete).status_code == 200
        assert http.post(layout.pushers_set, json=registration()).status_code == 200
    assert len(stored(limited_service, user)) == LIMIT
    # The limit is per user.
    with limited_service.client(new_user()) as other:
        assert other.post(layout.pushers_set, json=registration()).status_code == 200


def test_a_registration_refused_by_the_limit_removes_nobody(limited_service: Service) -> None:
    alice, bob = new_user(), new_user()
    pushkey = registration()["pushkey"]
    with limited_service.client(alice) as a, limited_service.client(bob) as b:
        assert a.post("/push/v1/pushers/set", json=registration(pushkey)).status_code == 200
        for _ in range(LIMIT):
            assert b.post("/push/v1/pushers/set", json=registration()).status_code == 200
        response = b.post("/push/v1/pushers/set", json=registration(pushkey))
        error_of(response, 400, "M_RESOURCE_LIMIT_EXCEEDED")
        assert [p["pushkey"] for p in listed(a)] == [pushkey]
