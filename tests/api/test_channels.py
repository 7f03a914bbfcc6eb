"""Channels: the catalog and each device's choices, in both layouts (docs/concept.md, "Channels").

The default test catalog (``conftest.CHANNELS``) is
``erp.task.activate=enabled, erp.communication.new, erp.task.close=disabled``: one channel of
each default status, deliberately not in alphabetical order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from conftest import Service, new_user, registration


@dataclass(frozen=True)
class Layout:
    name: str
    pushers_set: str
    channels: str

    def device(self, pushkey: str, *, safe: str = "") -> str:
        """The device's channels path, with the pushkey URL-encoded."""
        encoded = quote(pushkey, safe=safe)
        if encoded in (".", ".."):  # a bare dot segment would be resolved away by the client
            encoded = encoded.replace(".", "%2E")
        return f"{self.channels}/{encoded}"


SEED = Layout("seed", "/pushers/v1/set", "/channels/v1")
CURRENT = Layout("current", "/push/v1/pushers/set", "/push/v1/channels")

CATALOG = [
    {"id": "erp.task.activate", "status": "enabled"},
    {"id": "erp.communication.new", "status": "not_set"},
    {"id": "erp.task.close", "status": "disabled"},
]


@pytest.fixture(params=[SEED, CURRENT], ids=lambda layout: layout.name)
def layout(request: pytest.FixtureRequest) -> Layout:
    return request.param  # type: ignore[no-any-return]


def statuses(http: httpx.Client, path: str) -> dict[str, str]:
    response = http.get(path)
    assert response.status_code == 200, response.text
    return {c["id"]: c["status"] for c in response.json()["channels"]}


def change(http: httpx.Client, path: str, *changes: tuple[str, str]) -> None:
    """POST the changes in the current spelling; the answer must be 200 {}."""
    body = {"channels": [{"id": i, "status": s} for i, s in changes]}
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {}


def error_of(response: httpx.Response, status: int, errcode: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errcode"] == errcode, body
    return str(body["error"])


def register(http: httpx.Client, pushkey: str | None = None, **overrides: Any) -> str:
    body = registration(pushkey, **overrides)
    response = http.post("/push/v1/pushers/set", json=body)
    assert response.status_code == 200, response.text
    return str(body["pushkey"])


def defaults() -> dict[str, str]:
    return {c["id"]: c["status"] for c in CATALOG}


# --- the catalog ------------------------------------------------------------------------------


def test_catalog_in_operator_order_with_defaults(service: Service, layout: Layout) -> None:
    with service.client(new_user()) as http:
        response = http.get(layout.channels)
    assert response.status_code == 200
    assert response.json() == {"channels": CATALOG}


@pytest.fixture(scope="module")
def other_catalog(start_service: Callable[..., Service]) -> Service:
    return start_service(FDPUSH_CHANNELS=" zeta=disabled, alpha ,mid=enabled,beta=not_set")


def test_the_catalog_is_the_operators(other_catalog: Service, layout: Layout) -> None:
    """FDPUSH_CHANNELS: comma-separated ids, optional =enabled/=disabled, plain id → not_set."""
    expected = [
        {"id": "zeta", "status": "disabled"},
        {"id": "alpha", "status": "not_set"},
        {"id": "mid", "status": "enabled"},
        {"id": "beta", "status": "not_set"},
    ]
    with other_catalog.client(new_user()) as http:
        assert http.get(layout.channels).json() == {"channels": expected}
        pushkey = register(http)
        assert http.get(layout.device(pushkey)).json() == {"channels": expected}
        change(http, layout.device(pushkey), ("beta", "enabled"))
        assert statuses(http, layout.device(pushkey))["beta"] == "enabled"
        response = http.post(
            layout.device(pushkey),
            json={"channels": [{"id": "erp.task.close", "status": "enabled"}]},
        )
        error_of(response, 400, "M_INVALID_PARAM")


# --- a device's channels ----------------------------------------------------------------------


def test_a_device_starts_with_the_defaults(service: Service, layout: Layout) -> None:
    with service.client(new_user()) as http:
        pushkey = register(http)
        response = http.get(layout.device(pushkey))
    assert response.status_code == 200
    assert response.json() == {"channels": CATALOG}


def test_post_changes_only_the_named_channels(service: Service, layout: Layout) -> None:
    with service.client(new_user()) as http:
        device = layout.device(register(http))
        change(http, device, ("erp.communication.new", "enabled"))
        assert statuses(http, device) == {**defaults(), "erp.communication.new": "enabled"}
        change(http, device, ("erp.task.activate", "disabled"), ("erp.task.close", "enabled"))
        assert statuses(http, device) == {
            "erp.task.activate": "disabled",
            "erp.communication.new": "enabled",
            "erp.task.close": "enabled",
        }
        change(http, device)  # an empty list changes nothing
        assert statuses(http, device)["erp.communication.new"] == "enabled"
        # The answer keeps the catalog order, whatever order the changes came in.
        assert [c["id"] for c in http.get(device).json()["channels"]] == [c["id"] for c in CATALOG]


@pytest.mark.parametrize(
    ("id_name", "status_name"), [("id", "status"), ("name", "value")], ids=["current", "seed"]
)
def test_both_body_spellings_in_both_layouts(
    service: Service, layout: Layout, id_name: str, status_name: str
) -> None:
    """{"id", "status"} (current spec) and {"name", "value"} (seed spec) mean the same."""
    with service.client(new_user()) as http:
        device = layout.device(register(http))
        body = {
            "channels": [
                {id_name: "erp.communication.new", status_name: "enabled"},
                {id_name: "erp.task.activate", status_name: "disabled"},
            ]
        }
        response = http.post(device, json=body)
        assert response.status_code == 200 and response.json() == {}
        assert statuses(http, device) == {
            **defaults(),
            "erp.communication.new": "enabled",
            "erp.task.activate": "disabled",
        }


def test_not_set_resets_a_choice(service: Service, layout: Layout) -> None:
    with service.client(new_user()) as http:
        device = layout.device(register(http))
        change(http, device, ("erp.communication.new", "enabled"))
        change(http, device, ("erp.communication.new", "not_set"))
        assert statuses(http, device) == defaults()


def test_not_set_is_stored_even_where_the_default_is_enabled(
    service: Service, layout: Layout
) -> None:
    """``not_set`` is the device's own choice (and counts as disabled): it does not fall back
    to an ``enabled`` catalog default (docs/decisions.md)."""
    with service.client(new_user()) as http:
        device = layout.device(register(http))
        assert statuses(http, device)["erp.task.activate"] == "enabled"  # the catalog default
        change(http, device, ("erp.task.activate", "not_set"))
        assert statuses(http, device) == {**defaults(), "erp.task.activate": "not_set"}


def test_the_layouts_share_one_state(service: Service) -> None:
    """A choice made through one layout is what the other layout reads."""
    with service.client(new_user()) as http:
        pushkey = register(http)
        change(http, SEED.device(pushkey), ("erp.task.close", "enabled"))
        assert statuses(http, CURRENT.device(pushkey))["erp.task.close"] == "enabled"
        change(http, CURRENT.device(pushkey), ("erp.task.close", "disabled"))
        assert statuses(http, SEED.device(pushkey))["erp.task.close"] == "disabled"


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "erp.unknown", "status": "enabled"},
        {"id": "", "status": "enabled"},
        {"id": "ERP.TASK.CLOSE", "status": "enabled"},
        {"id": "erp.task.close", "status": "on"},
        {"id": "erp.task.close", "status": "ENABLED"},
        {"id": "erp.task.close", "status": ""},
        {"id": "erp.task.close", "status": True},
        {"id": "erp.task.close", "status": 1},
        {"id": 5, "status": "enabled"},
        {"name": "erp.unknown", "value": "enabled"},
        {"name": "erp.task.close", "value": "yes"},
    ],
    ids=lambda bad: "-".join(str(v) for v in bad.values()),
)
def test_unknown_ids_and_bad_statuses_are_invalid_and_change_nothing(
    service: Service, layout: Layout, bad: dict[str, Any]
) -> None:
    """The whole request is refused: the valid change next to the bad one is not applied."""
    user = new_user()
    with service.client(user) as http:
        device = layout.device(register(http))
        body = {"channels": [{"id": "erp.communication.new", "status": "enabled"}, bad]}
        error_of(http.post(device, json=body), 400, "M_INVALID_PARAM")
        assert statuses(http, device) == defaults()
    assert service.query(
        "SELECT count(*) FROM channel_states WHERE user_id = ?", (service.pseudonym(user),)
    ) == [(0,)]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({}, "channels"),
        ({"channels": None}, "channels"),
        ({"channels": [{"id": "erp.task.close"}]}, "channels[0].status"),
        ({"channels": [{"id": "erp.task.close", "status": None}]}, "channels[0].status"),
        ({"channels": [{"status": "enabled"}]}, "channels[0].id"),
        ({"channels": [{}]}, "channels[0].id, channels[0].status"),
        ({"channels": [{"name": "erp.task.close"}]}, "channels[0].value"),
        ({"channels": [{"value": "enabled"}]}, "channels[0].name"),
        (
            {"channels": [{"id": "erp.task.close", "status": "enabled"}, {"id": "erp.task.close"}]},
            "channels[1].status",
        ),
    ],
    ids=[
        "no-channels",
        "null-channels",
        "no-status",
        "null-status",
        "no-id",
        "empty",
        "no-value",
        "no-name",
        "second",
    ],
)
def test_missing_members_are_missing_param(
    service: Service, layout: Layout, body: dict[str, Any], named: str
) -> None:
    """M_MISSING_PARAM names each missing member, in the spelling the client used."""
    with service.client(new_user()) as http:
        device = layout.device(register(http))
        message = error_of(http.post(device, json=body), 400, "M_MISSING_PARAM")
        assert message == f"Missing parameters: {named}"
        assert statuses(http, device) == defaults()


def test_unknown_pushkey_is_not_found(service: Service, layout: Layout) -> None:
    """GET and POST for a pushkey that is not one of the caller's pushers: 404 M_NOT_FOUND."""
    with service.client(new_user()) as http:
        known = register(http)
        body = {"channels": [{"id": "erp.task.close", "status": "enabled"}]}
        for pushkey in ("never-registered", known + "x", known[:-1], known.upper()):
            error_of(http.get(layout.device(pushkey)), 404, "M_NOT_FOUND")
            error_of(http.post(layout.device(pushkey), json=body), 404, "M_NOT_FOUND")
        # 404 also wins over a bad body: the device is looked up before anything else matters.
        error_of(
            http.post(layout.device("never-registered"), json={"channels": []}),
            404,
            "M_NOT_FOUND",
        )


# --- the device's life cycle ------------------------------------------------------------------


def test_reregistering_keeps_the_channel_states(service: Service, layout: Layout) -> None:
    with service.client(new_user()) as http:
        pushkey = register(http)
        device = layout.device(pushkey)
        change(
            http, device, ("erp.communication.new", "enabled"), ("erp.task.activate", "disabled")
        )
        before = statuses(http, device)
        register(http, pushkey, device_display_name="Renamed")
        assert statuses(http, device) == before
        # A second app's pusher on the same device shares its channel states.
        register(http, pushkey, app_id="other.app")
        assert statuses(http, device) == before


def test_deleting_the_last_pusher_of_a_device_removes_its_states(
    service: Service, layout: Layout
) -> None:
    user = new_user()
    with service.client(user) as http:
        pushkey = register(http)
        register(http, pushkey, app_id="other.app")
        device = layout.device(pushkey)
        change(http, device, ("erp.communication.new", "enabled"))
        for app_id, still_there in (("de.gematik.test.apns", True), ("other.app", False)):
            delete = {"kind": None, "app_id": app_id, "pushkey": pushkey}
            assert http.post(layout.pushers_set, json=delete).status_code == 200
            if still_there:
                assert statuses(http, device)["erp.communication.new"] == "enabled"
        error_of(http.get(device), 404, "M_NOT_FOUND")
        assert service.query(
            "SELECT count(*) FROM channel_states WHERE user_id = ?", (service.pseudonym(user),)
        ) == [(0,)]
        # Registering the device again starts from the catalog defaults.
        register(http, pushkey)
        assert statuses(http, device) == defaults()


def test_a_device_answers_as_stored_now_however_often_it_was_asked_before(
    service: Service, layout: Layout
) -> None:
    """The process remembers pushkey indexes and pseudonyms, never answers: a device asked for
    many times answers from the database each time, through deletion, re-registration and a
    takeover by another user (``append: false``)."""
    alice, bob = new_user(), new_user()
    with service.client(alice) as a_http, service.client(bob) as b_http:
        pushkey = register(a_http)
        device = layout.device(pushkey)
        change(a_http, device, ("erp.task.close", "enabled"))
        for _ in range(3):
            assert statuses(a_http, device)["erp.task.close"] == "enabled"
        delete = {"kind": None, "app_id": "de.gematik.test.apns", "pushkey": pushkey}
        assert a_http.post(layout.pushers_set, json=delete).status_code == 200
        error_of(a_http.get(device), 404, "M_NOT_FOUND")
        register(a_http, pushkey)
        assert statuses(a_http, device) == defaults()
        register(b_http, pushkey)  # append: false takes the device from alice
        error_of(a_http.get(device), 404, "M_NOT_FOUND")
        assert statuses(b_http, device) == defaults()


# --- isolation --------------------------------------------------------------------------------


def test_users_never_see_or_change_each_others_channels(service: Service, layout: Layout) -> None:
    alice, bob = new_user(), new_user()
    with service.client(alice) as a, service.client(bob) as b:
        pushkey = register(a)
        device = layout.device(pushkey)
        change(a, device, ("erp.communication.new", "enabled"))
        error_of(b.get(device), 404, "M_NOT_FOUND")
        body = {"channels": [{"id": "erp.communication.new", "status": "disabled"}]}
        error_of(b.post(device, json=body), 404, "M_NOT_FOUND")
        assert statuses(a, device)["erp.communication.new"] == "enabled"
        # Sharing the pushkey (append: true), each user has a state of their own.
        register(b, pushkey, append=True)
        assert statuses(b, device) == defaults()
        change(b, device, ("erp.communication.new", "disabled"), ("erp.task.close", "enabled"))
        assert statuses(a, device) == {**defaults(), "erp.communication.new": "enabled"}
        # Bob deleting his pusher leaves Alice's device and states alone.
        delete = {"kind": None, "app_id": "de.gematik.test.apns", "pushkey": pushkey}
        assert b.post(layout.pushers_set, json=delete).status_code == 200
        error_of(b.get(device), 404, "M_NOT_FOUND")
        assert statuses(a, device)["erp.communication.new"] == "enabled"


# --- URL-encoded pushkeys ---------------------------------------------------------------------

PUSHKEYS = [
    "dGVzdA+/bG9uZw==",  # Base64 with '+', '/' and '='
    "/leading/and/trailing/",
    "a//b",
    "per%cent%2F%",
    "with space + plus",
    "ünïcødé-€-😀",
    "q?uery#frag&x=y;z",
    "cXyZ:APA91bH-Abc_def~.",
    "..",
    "a/../b",
    "€" * 170,  # 510 bytes of UTF-8
]


@pytest.mark.parametrize("pushkey", PUSHKEYS, ids=lambda pk: pk[:16])
def test_url_encoded_pushkeys(service: Service, layout: Layout, pushkey: str) -> None:
    """{pushkey} arrives URL-encoded; real pushkeys contain '/', '+' and '='."""
    with service.client(new_user()) as http:
        register(http, pushkey)
        device = layout.device(pushkey)
        assert statuses(http, device) == defaults()
        change(http, device, ("erp.task.close", "enabled"))
        assert statuses(http, device)["erp.task.close"] == "enabled"
        # The same device through the other layout, and a near miss that is another device.
        other = CURRENT if layout is SEED else SEED
        assert statuses(http, other.device(pushkey))["erp.task.close"] == "enabled"
        error_of(http.get(layout.device(pushkey + "/")), 404, "M_NOT_FOUND")


def test_base64_pushkeys_work_unencoded_too(service: Service, layout: Layout) -> None:
    """Clients that leave '/', '+' and '=' unencoded reach the same device."""
    pushkey = "APA91b/Hx+yZ=="
    with service.client(new_user()) as http:
        register(http, pushkey)
        change(http, layout.device(pushkey), ("erp.task.close", "enabled"))
        assert statuses(http, layout.device(pushkey, safe="/+="))["erp.task.close"] == "enabled"
