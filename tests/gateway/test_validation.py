"""The gateway validates like the spec says, answers with the spec's error bodies, and applies
the spec's priority order: Invalid data format → Batch size → Duplicate IDs → Individual size.

Every error body is checked against the spec's response schema for that endpoint and status.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from fdpush.gateway import GatewayProcess
from gateway.helpers import (
    ENCRYPTED,
    NOTIFY,
    PLAIN_BATCH,
    SEED_NOTIFY,
    assert_spec_response,
    device,
    encrypted_item,
    plain_item,
    plain_notification,
    spec_request_valid,
)


def post(gateway: GatewayProcess, endpoint: str, body: Any) -> httpx.Response:
    return gateway.http.post(endpoint, json=body)


def post_raw(gateway: GatewayProcess, endpoint: str, content: bytes) -> httpx.Response:
    return gateway.http.post(
        endpoint, content=content, headers={"Content-Type": "application/json"}
    )


def assert_error(response: httpx.Response, endpoint: str, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert_spec_response(endpoint, status, body)
    return body


# --- valid requests ---------------------------------------------------------------------------


def test_a_valid_encrypted_batch_is_accepted_with_results_in_request_order(gateway) -> None:
    """200 with one result per item, in request order, and a summary (BatchNotificationResponse)."""
    items = [encrypted_item(item_id) for item_id in ("c", "a", "b")]
    body = {"notifications": items}
    assert spec_request_valid(ENCRYPTED, body)

    response = post(gateway, ENCRYPTED, body)

    assert response.status_code == 200
    answer = response.json()
    assert_spec_response(ENCRYPTED, 200, answer)
    assert [r["id"] for r in answer["results"]] == ["c", "a", "b"]
    assert all(r["status"] == "success" and r["rejected"] == [] for r in answer["results"])
    assert answer["summary"] == {"total": 3, "successful": 3, "failed": 0, "partial": 0}


def test_a_full_batch_of_100_at_the_limits_is_accepted(gateway) -> None:
    """100 items, ids of 64 characters, optional fields left out: all within the spec."""
    items = [encrypted_item(f"{i:064d}") for i in range(100)]
    for item in items:
        del item["notification"]["prio"], item["notification"]["device"]["data"]

    response = post(gateway, ENCRYPTED, {"notifications": items})

    assert response.status_code == 200, response.text
    assert response.json()["summary"]["successful"] == 100


def test_the_plain_endpoints_accept_the_specs_own_examples(gateway) -> None:
    """The request examples of ``notify`` and ``notify/batch`` in the spec are accepted."""
    import yaml

    from gateway.helpers import SPEC_PATH

    paths = yaml.safe_load(SPEC_PATH.read_text())["paths"]
    for spec_path, example in (
        ("/notify", "plainPushNotification"),
        ("/notify/batch", "plainBatch"),
    ):
        content = paths[spec_path]["post"]["requestBody"]["content"]["application/json"]
        body = content["examples"][example]["value"]
        response = post(gateway, "/push/v1" + spec_path, body)
        assert response.status_code == 200, (spec_path, response.text)
        assert_spec_response("/push/v1" + spec_path, 200, response.json())


def test_requests_of_256_kb_are_accepted(gateway) -> None:
    """ "Push Gateway implementations MUST support request payloads of at least 256 KB"."""
    items = [encrypted_item() for _ in range(100)]
    for item in items:
        item["notification"]["device"]["tweaks"] = {"padding": "x" * 1200}
    content = orjson.dumps({"notifications": items})
    assert len(content) > 256 * 1024

    response = post_raw(gateway, ENCRYPTED, content)

    assert response.status_code == 200, response.text


# --- Invalid data format: the request schema --------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation of the first item's notification: set ``path`` (dotted) to ``value``."""

    def mutate(body: dict) -> None:
        *parents, last = path.split(".")
        target = body["notifications"][0]
        for name in parents:
            target = target[name]
        target[last] = value

    return mutate


def _delete(path: str) -> Callable[[dict], None]:
    def mutate(body: dict) -> None:
        *parents, last = path.split(".")
        target = body["notifications"][0]
        for name in parents:
            target = target[name]
        del target[last]

    return mutate


ENCRYPTED_MUTATIONS: dict[str, tuple[Callable[[dict], None], bool]] = {
    # name: (mutation, still valid per the spec)
    "ciphertext of 1403 chars": (_set("notification.ciphertext", "A" * 1403), False),
    "ciphertext of 1405 chars": (_set("notification.ciphertext", "A" * 1405), False),
    "ciphertext of exactly 1404 chars": (_set("notification.ciphertext", "A" * 1404), True),
    "ciphertext not a string": (_set("notification.ciphertext", 1404), False),
    "no ciphertext": (_delete("notification.ciphertext"), False),
    "no time_message_encrypted": (_delete("notification.time_message_encrypted"), False),
    "no key_identifier": (_delete("notification.key_identifier"), False),
    "no device": (_delete("notification.device"), False),
    "no device.app_id": (_delete("notification.device.app_id"), False),
    "no device.pushkey": (_delete("notification.device.pushkey"), False),
    "pushkey not a string": (_set("notification.device.pushkey", 42), False),
    "pushkey_ts a string": (_set("notification.device.pushkey_ts", "1750000000"), False),
    "pushkey_ts true": (_set("notification.device.pushkey_ts", True), False),
    "prio urgent": (_set("notification.prio", "urgent"), False),
    "prio low": (_set("notification.prio", "low"), True),
    "no prio (default high)": (_delete("notification.prio"), True),
    "identifier null": (_set("notification.identifier", None), False),
    "identifier set": (_set("notification.identifier", "task/160.000.000.000.001"), True),
    "counts.unread a string": (_set("notification.counts", {"unread": "1"}), False),
    "counts": (_set("notification.counts", {"unread": 2, "missed_calls": 0}), True),
    "data.format a number": (_set("notification.device.data", {"format": 1}), False),
    "data with custom keys": (_set("notification.device.data", {"format": "x", "k": 1}), True),
    "tweaks not an object": (_set("notification.device.tweaks", ["sound"]), False),
    "unknown extra field": (_set("notification.extra", {"anything": True}), True),
    "id of 65 chars": (_set("id", "i" * 65), False),
    "id of 64 chars": (_set("id", "i" * 64), True),
    "id a number": (_set("id", 7), False),
    "no id": (_delete("id"), False),
    "no notification": (_delete("notification"), False),
    "notification a string": (_set("notification", "hello"), False),
}


@pytest.mark.parametrize("name", list(ENCRYPTED_MUTATIONS))
def test_encrypted_items_are_validated_exactly_like_the_spec_schema(gateway, name: str) -> None:
    """Each mutation is accepted exactly when the spec's request schema accepts it; when not,
    the answer is 400 "Invalid data format" and nothing is delivered."""
    mutate, valid = ENCRYPTED_MUTATIONS[name]
    body = {"notifications": [encrypted_item(), encrypted_item()]}
    mutate(body)
    assert spec_request_valid(ENCRYPTED, body) is valid  # the table agrees with the spec

    response = post(gateway, ENCRYPTED, body)

    if valid:
        assert response.status_code == 200, response.text
        assert response.json()["summary"]["successful"] == 2
    else:
        body = assert_error(response, ENCRYPTED, 400, "Invalid data format")
        assert body["details"]["problems"]  # says what is wrong
        assert gateway.stats()["notifications_recorded"] == 0


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("not JSON", b"{notifications: []"),
        ("empty body", b""),
        ("a JSON array", b"[]"),
        ("a JSON string", b'"notifications"'),
        ("no notifications", b"{}"),
        ("notifications null", b'{"notifications": null}'),
        ("notifications an object", b'{"notifications": {}}'),
        ("an empty batch", b'{"notifications": []}'),
        ("an item that is not an object", b'{"notifications": [1]}'),
    ],
)
def test_bodies_that_are_not_a_batch_are_invalid_data_format(
    gateway, name: str, content: bytes
) -> None:
    """Not JSON, not an object, no items, or items that are no objects: "Invalid data format"."""
    for endpoint in (ENCRYPTED, PLAIN_BATCH):
        assert_error(post_raw(gateway, endpoint, content), endpoint, 400, "Invalid data format")


@pytest.mark.parametrize(
    ("name", "mutate", "valid"),
    [
        ("no prio (required for plain)", _delete("notification.prio"), False),
        ("no devices", _delete("notification.devices"), False),
        ("no devices at all", _set("notification.devices", []), True),
        ("a device twice", _set("notification.devices", [device("d"), device("d")]), False),
        ("content not an object", _set("notification.content", "text"), False),
        ("user_is_target a string", _set("notification.user_is_target", "yes"), False),
        ("event_id null", _set("notification.event_id", None), False),
        ("two devices", _set("notification.devices", [device(), device()]), True),
    ],
)
def test_plain_batch_items_are_validated_like_the_spec_schema(
    gateway, name: str, mutate: Callable[[dict], None], valid: bool
) -> None:
    """``notify/batch`` items follow ``PlainNotification``: ``prio`` and ``devices`` required,
    ``devices`` unique."""
    body = {"notifications": [plain_item()]}
    mutate(body)
    assert spec_request_valid(PLAIN_BATCH, body) is valid

    response = post(gateway, PLAIN_BATCH, body)

    if valid:
        assert response.status_code == 200, response.text
    else:
        assert_error(response, PLAIN_BATCH, 400, "Invalid data format")


def test_notify_follows_the_current_spec_and_the_seed_path_the_seed_spec(gateway) -> None:
    """``/push/v1/notify`` needs ``prio`` (current spec); ``/_matrix/push/v1/notify`` defaults
    it to high, as the seed spec and Matrix do. Both answer ``{"rejected": [...]}``."""
    notification = plain_notification()
    del notification["prio"]

    assert_error(
        post(gateway, NOTIFY, {"notification": notification}), NOTIFY, 400, "Invalid data format"
    )
    seed = post(gateway, SEED_NOTIFY, {"notification": notification})
    assert seed.status_code == 200
    assert seed.json() == {"rejected": []}

    current = post(gateway, NOTIFY, {"notification": plain_notification()})
    assert current.status_code == 200
    assert_spec_response(NOTIFY, 200, current.json())
    assert_error(post_raw(gateway, NOTIFY, b"[1]"), NOTIFY, 400, "Invalid data format")


# --- the batch rules and their priority ---------------------------------------------------------


def test_more_than_100_items_is_batch_size_exceeds_maximum_limit(gateway) -> None:
    """101 valid items → 400 with ``details.max_batch_size`` = 100; nothing delivered."""
    for endpoint, make in ((ENCRYPTED, encrypted_item), (PLAIN_BATCH, plain_item)):
        response = post(gateway, endpoint, {"notifications": [make() for _ in range(101)]})

        body = assert_error(response, endpoint, 400, "Batch size exceeds maximum limit")
        assert body["details"] == {"max_batch_size": 100}
    assert gateway.stats()["notifications_recorded"] == 0


def test_duplicate_ids_are_named_each_once(gateway) -> None:
    """Ids repeated in a batch → 400 with ``details.duplicate_ids``, each duplicate once."""
    ids = ["a", "b", "a", "c", "b", "a"]
    for endpoint, make in ((ENCRYPTED, encrypted_item), (PLAIN_BATCH, plain_item)):
        response = post(gateway, endpoint, {"notifications": [make(i) for i in ids]})

        body = assert_error(response, endpoint, 400, "Duplicate notification IDs in batch")
        assert sorted(body["details"]["duplicate_ids"]) == ["a", "b"]
    assert gateway.stats()["notifications_recorded"] == 0


def test_an_item_repeated_verbatim_is_a_duplicate_id(gateway) -> None:
    """The same item twice (the batch's ``uniqueItems``) is reported as its duplicate id."""
    item = encrypted_item("same")

    response = post(gateway, ENCRYPTED, {"notifications": [item, copy.deepcopy(item)]})

    body = assert_error(response, ENCRYPTED, 400, "Duplicate notification IDs in batch")
    assert body["details"]["duplicate_ids"] == ["same"]


def test_a_notification_over_64_kb_is_individual_notification_too_large(gateway) -> None:
    """One notification whose JSON is over 64 KB → 400 with ``max_notification_size_kb``."""
    big = plain_item(content={"text": "x" * (64 * 1024)})

    response = post(gateway, PLAIN_BATCH, {"notifications": [plain_item(), big]})

    body = assert_error(response, PLAIN_BATCH, 400, "Individual notification too large")
    assert body["details"] == {"max_notification_size_kb": 64}
    fits = plain_item(content={"text": "x" * (63 * 1024)})
    assert post(gateway, PLAIN_BATCH, {"notifications": [fits]}).status_code == 200


def test_invalid_data_format_comes_before_batch_size(gateway) -> None:
    """A batch that is too big *and* has an invalid item: the invalid item is named first."""
    items = [encrypted_item() for _ in range(101)]
    items[50]["notification"]["ciphertext"] = "short"

    assert_error(
        post(gateway, ENCRYPTED, {"notifications": items}), ENCRYPTED, 400, "Invalid data format"
    )


def test_batch_size_comes_before_duplicate_ids(gateway) -> None:
    """A batch that is too big *and* repeats ids: the size is named first."""
    items = [encrypted_item("same") for _ in range(101)]

    assert_error(
        post(gateway, ENCRYPTED, {"notifications": items}),
        ENCRYPTED,
        400,
        "Batch size exceeds maximum limit",
    )


def test_duplicate_ids_come_before_individual_size(gateway) -> None:
    """Repeated ids *and* an oversized notification: the duplicates are named first."""
    big = plain_item("x", content={"text": "x" * (65 * 1024)})
    items = [plain_item("dup"), plain_item("dup"), big]

    assert_error(
        post(gateway, PLAIN_BATCH, {"notifications": items}),
        PLAIN_BATCH,
        400,
        "Duplicate notification IDs in batch",
    )


def test_invalid_data_format_comes_before_individual_size(gateway) -> None:
    """An oversized notification *and* an invalid one: the invalid one is named first."""
    big = plain_item(content={"text": "x" * (65 * 1024)})
    invalid = plain_item()
    del invalid["notification"]["devices"]

    assert_error(
        post(gateway, PLAIN_BATCH, {"notifications": [big, invalid]}),
        PLAIN_BATCH,
        400,
        "Invalid data format",
    )


# --- 413 -------------------------------------------------------------------------------------


def test_a_request_over_the_cap_is_413_with_max_request_size_kb(gateway) -> None:
    """A body over 1024 KB → 413 with ``details.max_request_size_kb`` = 1024, whether its
    length is declared or it is streamed in chunks."""
    oversized = b'{"notifications": [' + b" " * (1024 * 1024) + b"]}"

    declared = post_raw(gateway, ENCRYPTED, oversized)
    assert declared.status_code == 413
    assert declared.json()["details"] == {"max_request_size_kb": 1024}
    assert_spec_response(ENCRYPTED, 413, declared.json())

    def chunks():
        for start in range(0, len(oversized), 64 * 1024):
            yield oversized[start : start + 64 * 1024]

    streamed = gateway.client().post(ENCRYPTED, content=chunks())
    assert streamed.status_code == 413
    assert_spec_response(ENCRYPTED, 413, streamed.json())

    notify = post_raw(gateway, NOTIFY, oversized)
    assert notify.status_code == 413
    assert_spec_response(NOTIFY, 413, notify.json())
    assert notify.json()["details"]["max_request_size_kb"] == 1024


def test_a_request_just_under_the_cap_is_not_413(gateway) -> None:
    """The cap is the request size, not less: 1023 KB of valid JSON goes through to validation."""
    body = orjson.dumps({"notifications": [encrypted_item()]})
    padded = body[:-1] + b" " * (1023 * 1024 - len(body)) + b"}"

    response = post_raw(gateway, ENCRYPTED, padded)

    assert response.status_code == 200, response.text
