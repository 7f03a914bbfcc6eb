"""The trouble switches: rejected pushkeys (reported once), failing items, forced statuses,
stalls, result order and a smaller batch limit — at run time over ``POST /_dev/trouble`` and
at start as ``fdpush gateway`` options."""

from __future__ import annotations

import time

import httpx
import pytest

from fdpush.gateway import GatewayProcess, TestPki
from gateway.helpers import (
    APNS_APP,
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


def send(gateway: GatewayProcess, *items: dict, endpoint: str = ENCRYPTED) -> dict:
    response = gateway.http.post(endpoint, json={"notifications": list(items)})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert_spec_response(endpoint, 200, answer)
    return answer


# --- rejected pushkeys -------------------------------------------------------------------------


def test_a_rejected_pushkey_is_reported_once_then_forgotten(gateway: GatewayProcess) -> None:
    """The next request naming the pushkey gets it in ``rejected`` (that item fails and is not
    delivered; the others go through); the request after that is served normally."""
    gone, fine = new_pushkey(), new_pushkey()
    gateway.trouble(reject_pushkeys=[gone])

    first = send(gateway, encrypted_item("x", pushkey=gone), encrypted_item("y", pushkey=fine))

    assert first["results"][0] == {
        "id": "x",
        "status": "failed",
        "rejected": [gone],
        "error": "Pushkey rejected by the push provider",
    }
    assert first["results"][1] == {"id": "y", "status": "success", "rejected": []}
    assert first["summary"] == {"total": 2, "successful": 1, "failed": 1, "partial": 0}
    assert gateway.inbox(APNS_APP, gone) == []
    assert gateway.trouble()["reject_pushkeys"] == []

    second = send(gateway, encrypted_item("z", pushkey=gone))

    assert second["results"] == [{"id": "z", "status": "success", "rejected": []}]
    assert [r["id"] for r in gateway.inbox(APNS_APP, gone)] == ["z"]
    assert gateway.stats()["pushkeys_rejected"] == 1


def test_a_rejected_pushkey_waits_for_a_request_that_names_it(gateway: GatewayProcess) -> None:
    """Requests for other devices do not use the rejection up."""
    gone = new_pushkey()
    gateway.trouble(reject_pushkeys=[gone])

    send(gateway, encrypted_item())
    send(gateway, encrypted_item())

    assert gateway.trouble()["reject_pushkeys"] == [gone]
    assert send(gateway, encrypted_item(pushkey=gone))["results"][0]["rejected"] == [gone]


def test_every_item_of_the_reporting_request_names_the_rejected_pushkey(
    gateway: GatewayProcess,
) -> None:
    """Two notifications for the same device in the reporting request both carry it."""
    gone = new_pushkey()
    gateway.trouble(reject_pushkeys=[gone])

    answer = send(gateway, encrypted_item("a", pushkey=gone), encrypted_item("b", pushkey=gone))

    assert [r["rejected"] for r in answer["results"]] == [[gone], [gone]]


def test_a_plain_notification_with_some_devices_rejected_is_partial(
    gateway: GatewayProcess,
) -> None:
    """``notify/batch``: some devices rejected → ``partial`` (the rest get it); all → ``failed``;
    ``notify`` answers ``{"rejected": [...]}``."""
    gone, kept, lone = new_pushkey(), new_pushkey(), new_pushkey()
    gateway.trouble(reject_pushkeys=[gone, lone])
    two = plain_item("two", device(gone), device(kept))
    one = plain_item("one", device(lone))

    answer = send(gateway, two, one, endpoint=PLAIN_BATCH)

    assert answer["results"][0] == {"id": "two", "status": "partial", "rejected": [gone]}
    assert answer["results"][1]["status"] == "failed"
    assert answer["results"][1]["rejected"] == [lone]
    assert answer["summary"] == {"total": 2, "successful": 0, "failed": 1, "partial": 1}
    assert len(gateway.inbox(APNS_APP, kept)) == 1
    assert gateway.inbox(APNS_APP, gone) == []

    again = new_pushkey()
    gateway.trouble(reject_pushkeys=[again])
    notify = gateway.http.post(NOTIFY, json={"notification": plain_notification(device(again))})
    assert notify.json() == {"rejected": [again]}
    assert_spec_response(NOTIFY, 200, notify.json())
    repeat = gateway.http.post(NOTIFY, json={"notification": plain_notification(device(again))})
    assert repeat.json() == {"rejected": []}


# --- failing items -----------------------------------------------------------------------------


def test_fail_fraction_1_fails_every_item_with_the_error_text(gateway: GatewayProcess) -> None:
    """Failed items say why, and are not delivered."""
    gateway.trouble(fail_fraction=1.0, fail_error="APNs said no")
    pushkey = new_pushkey()

    answer = send(gateway, encrypted_item("a", pushkey=pushkey), encrypted_item("b"))

    assert answer["results"][0] == {
        "id": "a",
        "status": "failed",
        "rejected": [],
        "error": "APNs said no",
    }
    assert answer["summary"] == {"total": 2, "successful": 0, "failed": 2, "partial": 0}
    assert gateway.inbox(APNS_APP, pushkey) == []
    assert gateway.http.post(NOTIFY, json={"notification": plain_notification()}).json() == {
        "error": "APNs said no"
    }


def test_a_failed_notify_keeps_its_rejection_for_the_next_request(gateway: GatewayProcess) -> None:
    """``notify`` has no per-item status: when it fails as a whole (500), the rejection it
    would have carried is not lost but reported by the next request naming the pushkey."""
    gone = new_pushkey()
    gateway.trouble(reject_pushkeys=[gone], fail_fraction=1.0)
    body = {"notification": plain_notification(device(gone), device())}

    assert gateway.http.post(NOTIFY, json=body).status_code == 500
    assert gateway.trouble(fail_fraction=0.0)["reject_pushkeys"] == [gone]

    assert gateway.http.post(NOTIFY, json=body).json() == {"rejected": [gone]}


def test_a_fail_fraction_fails_that_share_reproducibly_with_a_seed(
    gateway: GatewayProcess,
) -> None:
    """About half of 100 items fail at 0.5; the same seed fails the same items again; exactly
    the successful ones are delivered."""

    def failed_positions() -> list[int]:
        gateway.trouble(fail_fraction=0.5, fail_seed=7)
        items = [encrypted_item(f"{n:03d}") for n in range(100)]
        answer = send(gateway, *items)
        for item, result in zip(items, answer["results"], strict=True):
            pushkey = item["notification"]["device"]["pushkey"]
            delivered = gateway.inbox(APNS_APP, pushkey)
            assert len(delivered) == (result["status"] == "success")
        return [n for n, r in enumerate(answer["results"]) if r["status"] == "failed"]

    first = failed_positions()
    assert 25 <= len(first) <= 75
    assert failed_positions() == first


# --- forced statuses ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_forced_status_answers_the_next_requests_with_retry_after(
    gateway: GatewayProcess, status: int
) -> None:
    """``status`` with ``status_count`` N: the next N requests get it (with ``Retry-After``
    and a JSON ``error``), nothing is delivered; then requests are served again."""
    gateway.trouble(status=status, status_count=2, retry_after=3)
    item = encrypted_item()

    for _ in range(2):
        response = gateway.http.post(ENCRYPTED, json={"notifications": [item]})
        assert response.status_code == status
        assert response.headers["Retry-After"] == "3"
        assert isinstance(response.json()["error"], str)
        if status in (500, 503):
            assert_spec_response(ENCRYPTED, status, response.json())

    assert gateway.stats()["notifications_recorded"] == 0
    assert send(gateway, item)["summary"]["successful"] == 1
    assert gateway.trouble()["status"] is None


def test_a_forced_status_without_count_lasts_until_cleared(gateway: GatewayProcess) -> None:
    """No ``status_count``: every request gets the status until ``status: null``; the ``/_dev``
    API keeps working meanwhile. Without ``retry_after`` there is no ``Retry-After``."""
    gateway.trouble(status=503)

    for endpoint in (ENCRYPTED, PLAIN_BATCH, NOTIFY, ENCRYPTED):
        response = gateway.http.post(endpoint, json={})
        assert response.status_code == 503
        assert "Retry-After" not in response.headers

    gateway.trouble(status=None)
    assert send(gateway, encrypted_item())["summary"]["successful"] == 1
    assert gateway.stats()["responses_by_status"] == {"503": 4, "200": 1}


def test_a_forced_status_can_come_with_a_body_that_is_not_json(gateway: GatewayProcess) -> None:
    """``status_body``: what a proxy in front of a gateway sends (e.g. an HTML 502 page)."""
    gateway.trouble(status=502, status_count=1, status_body="<html>Bad Gateway</html>")

    response = gateway.http.post(ENCRYPTED, json={"notifications": [encrypted_item()]})

    assert response.status_code == 502
    assert response.text == "<html>Bad Gateway</html>"
    assert response.headers["content-type"].startswith("text/plain")


def test_a_forced_413_names_the_request_cap(gateway: GatewayProcess) -> None:
    """413 forced: the spec's 413 body, so a sender's "smaller batches" path can be tested."""
    gateway.trouble(status=413, status_count=1)

    response = gateway.http.post(ENCRYPTED, json={"notifications": [encrypted_item()]})

    assert response.status_code == 413
    assert response.json()["details"] == {"max_request_size_kb": 1024}
    assert_spec_response(ENCRYPTED, 413, response.json())


# --- stalls ------------------------------------------------------------------------------------


def test_delay_stalls_answers(gateway: GatewayProcess) -> None:
    """``delay_ms`` with ``delay_count`` 1: the next answer comes that much later, the one
    after at once; the stalled request is still processed."""
    gateway.trouble(delay_ms=400, delay_count=1)
    pushkey = new_pushkey()

    started = time.monotonic()
    send(gateway, encrypted_item(pushkey=pushkey))
    stalled = time.monotonic() - started
    started = time.monotonic()
    send(gateway, encrypted_item())
    prompt = time.monotonic() - started

    assert stalled >= 0.4
    assert prompt < 0.4
    assert len(gateway.inbox(APNS_APP, pushkey)) == 1


def test_a_sender_that_gives_up_during_a_stall_has_delivered_nothing(
    gateway: GatewayProcess,
) -> None:
    """``delay_point`` before (the default): the stall comes before the request is read, so a
    sender with a shorter timeout sees a timeout and nothing is delivered."""
    gateway.trouble(delay_ms=800)
    pushkey = new_pushkey()

    with gateway.client(timeout=0.2) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(ENCRYPTED, json={"notifications": [encrypted_item(pushkey=pushkey)]})

    gateway.wait_until(lambda: gateway.stats()["requests_abandoned"] == 1, timeout=5)
    assert gateway.inbox(APNS_APP, pushkey) == []


def test_a_stalled_answer_after_delivery_delivers_though_the_sender_gave_up(
    gateway: GatewayProcess,
) -> None:
    """``delay_point`` after: the notification is delivered, only the answer is late — a
    sender that times out and retries delivers twice, as with a slow real gateway."""
    gateway.trouble(delay_ms=800, delay_point="after")
    pushkey = new_pushkey()

    with gateway.client(timeout=0.2) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(ENCRYPTED, json={"notifications": [encrypted_item(pushkey=pushkey)]})

    gateway.wait_until(lambda: len(gateway.inbox(APNS_APP, pushkey)) == 1, timeout=5)
    # The late answer is still written (to nobody) and counted, then the stall is over.
    gateway.wait_until(lambda: gateway.stats()["responses_by_status"] == {"200": 1}, timeout=5)
    assert gateway.stats()["requests_abandoned"] == 0


# --- result order and batch limit ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("request", ["m", "z", "a"]),
        ("sorted", ["a", "m", "z"]),
        ("reversed", ["a", "z", "m"]),
    ],
)
def test_result_order_can_be_sorted_or_reversed(
    gateway: GatewayProcess, order: str, expected: list[str]
) -> None:
    """The spec promises request order; the reference gateway sorts by id; reversed is for
    senders that must match by ``id``."""
    gateway.trouble(result_order=order)

    for endpoint, make in ((ENCRYPTED, encrypted_item), (PLAIN_BATCH, plain_item)):
        answer = send(gateway, *(make(item_id) for item_id in ("m", "z", "a")), endpoint=endpoint)

        assert [r["id"] for r in answer["results"]] == expected


def test_a_smaller_max_batch_size_is_announced_in_the_error(gateway: GatewayProcess) -> None:
    """``max_batch_size`` 10: 11 items → "Batch size exceeds maximum limit" with
    ``details.max_batch_size`` 10; 10 items are fine. ``reset`` restores 100."""
    gateway.trouble(max_batch_size=10)

    too_many = gateway.http.post(
        ENCRYPTED, json={"notifications": [encrypted_item() for _ in range(11)]}
    )
    assert too_many.status_code == 400
    assert too_many.json() == {
        "error": "Batch size exceeds maximum limit",
        "details": {"max_batch_size": 10},
    }
    assert send(gateway, *(encrypted_item() for _ in range(10)))["summary"]["total"] == 10

    assert gateway.reset_trouble()["max_batch_size"] == 100


# --- the switches themselves ---------------------------------------------------------------------


def test_the_switches_can_be_read_changed_and_reset(gateway: GatewayProcess) -> None:
    """``GET /_dev/trouble`` shows every switch; a POST changes only those it names; ``null``
    restores a default; ``reset`` turns everything off."""
    switches = gateway.trouble(fail_fraction=0.25, status=503, delay_ms=5, result_order="sorted")
    assert switches["fail_fraction"] == 0.25 and switches["status"] == 503

    switches = gateway.trouble(status=None)
    assert switches["status"] is None
    assert switches["fail_fraction"] == 0.25  # untouched
    assert gateway.http.get("/_dev/trouble").json() == switches

    switches = gateway.trouble(fail_fraction=None)
    assert switches["fail_fraction"] == 0.0

    switches = gateway.reset_trouble()
    assert switches["delay_ms"] == 0 and switches["result_order"] == "request"


@pytest.mark.parametrize(
    "body",
    [
        {"fail_fraction": 1.5},
        {"status": 200},
        {"status": "503"},
        {"delay_ms": -1},
        {"result_order": "random"},
        {"max_batch_size": 0},
        {"max_request_size_kb": 100},
        {"reject_pushkeys": "pk"},
        {"no_such_switch": True},
    ],
)
def test_switch_values_out_of_range_are_refused(gateway: GatewayProcess, body: dict) -> None:
    """A bad switch is a 400 naming it, and changes nothing."""
    before = gateway.http.get("/_dev/trouble").json()

    response = gateway.http.post("/_dev/trouble", json=body)

    assert response.status_code == 400
    assert gateway.http.get("/_dev/trouble").json() == before


def test_the_switches_can_be_set_at_start(pki: TestPki, tmp_path) -> None:
    """``fdpush gateway --reject PK --status 503 --status-count 1 --retry-after 7
    --result-order reversed --max-batch-size 2``."""
    gone = new_pushkey()
    args = [
        "--reject", gone,
        "--status", "503", "--status-count", "1", "--retry-after", "7",
        "--result-order", "reversed",
        "--max-batch-size", "2",
    ]  # fmt: skip
    with GatewayProcess(tmp_path, pki=pki, args=args) as running:
        items = [encrypted_item("a", pushkey=gone), encrypted_item("b")]

        unavailable = running.http.post(ENCRYPTED, json={"notifications": items})
        assert unavailable.status_code == 503
        assert unavailable.headers["Retry-After"] == "7"

        answer = send(running, *items)
        assert [r["id"] for r in answer["results"]] == ["b", "a"]
        assert answer["results"][1]["rejected"] == [gone]

        too_many = running.http.post(ENCRYPTED, json={"notifications": [*items, items[1]]})
        assert too_many.json()["details"] == {"max_batch_size": 2}
