"""The gateway client against the development Push Gateway, over mutual TLS on loopback.

One test per rule of docs/delivery.md's "What each answer does": which endpoint gets what, results
matched by id, what each 400/413 means, what counts as gateway trouble, TLS, connections and logs.
The few answers the development gateway never gives come from a scripted peer
(:class:`delivery.helpers.ScriptedGateway`) over the same mutual TLS.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import time
from collections.abc import Iterator, Sequence
from email.utils import format_datetime
from typing import Any

import orjson
import pytest

from delivery.helpers import (
    APNS_APP,
    Answer,
    ScriptedGateway,
    encrypted,
    new_pushkey,
    plain,
    pushkey_of,
    sent,
)
from fdpush.delivery.gateway import BatchOutcome, EncodedItem, GatewayClient, Verdict
from fdpush.gateway import DevGateway, GatewayThread, TestPki, make_test_pki
from fdpush.gateway_api import EncryptedBatchNotificationRequest, encode

ENCRYPTED_BATCH = "/push/v1/notifyEncrypted/batch"
PLAIN_BATCH = "/push/v1/notify/batch"
NOTIFY = "/push/v1/notify"


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def running_gateway(pki: TestPki) -> Iterator[GatewayThread]:
    """The development gateway in this process, HTTPS with client certificates required."""
    with GatewayThread(DevGateway(), pki=pki) as running:
        yield running


@pytest.fixture
def gateway(running_gateway: GatewayThread) -> GatewayThread:
    """The module's development gateway with every switch off, counters zeroed, inbox empty."""
    running_gateway.reset_trouble()
    running_gateway.reset_stats()
    running_gateway.clear()
    return running_gateway


@pytest.fixture(scope="module")
def scripted_server(pki: TestPki) -> Iterator[ScriptedGateway]:
    server = ScriptedGateway(pki)
    yield server
    server.stop()


@pytest.fixture
def scripted(scripted_server: ScriptedGateway) -> ScriptedGateway:
    """A peer over the same mutual TLS that answers what the test sets (default: success)."""
    scripted_server.reset()
    return scripted_server


# --- helpers -----------------------------------------------------------------------------------


def client_for(pki: TestPki, **options: Any) -> GatewayClient:
    """A client that trusts the test CA and presents the test client certificate."""
    tls: dict[str, Any] = {
        "ca_file": pki.ca_cert,
        "client_cert": pki.client_cert,
        "client_key": pki.client_key,
    }
    return GatewayClient(**{**tls, **options})


def send(pki: TestPki, base_url: str, items: Sequence[EncodedItem], **options: Any) -> BatchOutcome:
    """One ``send`` with a fresh client."""

    async def run() -> BatchOutcome:
        client = client_for(pki, **options)
        try:
            return await client.send(base_url, items)
        finally:
            await client.aclose()

    return asyncio.run(run())


def inbox_ids(gateway: GatewayThread, item: EncodedItem) -> list[str | None]:
    """The batch ids the gateway recorded for the item's device."""
    return [r.item_id for r in gateway.gateway.inbox(APNS_APP, pushkey_of(item))]


def requests_to(gateway: GatewayThread, endpoint: str) -> int:
    return int(gateway.stats()["requests_by_endpoint"].get(endpoint, 0))


def all_delivered(items: Sequence[EncodedItem]) -> dict[str, Verdict]:
    return {item.id: Verdict(item.id, "delivered") for item in items}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- which endpoint gets what ------------------------------------------------------------------


def test_encrypted_items_go_in_one_notify_encrypted_batch(
    gateway: GatewayThread, pki: TestPki
) -> None:
    """Encrypted items → one POST ``<base>notifyEncrypted/batch``; each is delivered as sent."""
    items = [encrypted() for _ in range(3)]

    outcome = send(pki, gateway.push_url, items)

    assert outcome == BatchOutcome(results=all_delivered(items), status_code=200)
    assert gateway.stats()["requests_by_endpoint"] == {ENCRYPTED_BATCH: 1}
    for item in items:
        (received,) = gateway.gateway.inbox(APNS_APP, pushkey_of(item))
        assert (received.endpoint, received.item_id) == (ENCRYPTED_BATCH, item.id)
        assert received.notification == sent(item)


def test_plain_items_go_in_one_notify_batch(gateway: GatewayThread, pki: TestPki) -> None:
    """Plain items → one POST ``<base>notify/batch``."""
    items = [plain() for _ in range(3)]

    outcome = send(pki, gateway.push_url, items)

    assert outcome == BatchOutcome(results=all_delivered(items), status_code=200)
    assert gateway.stats()["requests_by_endpoint"] == {PLAIN_BATCH: 1}
    for item in items:
        (received,) = gateway.gateway.inbox(APNS_APP, pushkey_of(item))
        assert (received.endpoint, received.item_id) == (PLAIN_BATCH, item.id)
        assert received.notification["content"] == sent(item)["content"]


def test_a_send_of_both_kinds_makes_one_request_per_kind(
    gateway: GatewayThread, pki: TestPki
) -> None:
    """Encrypted and plain items in one call: one batch request to each endpoint."""
    items = [encrypted(), plain(), encrypted(), plain()]

    outcome = send(pki, gateway.push_url, items)

    assert outcome.results == all_delivered(items)
    assert gateway.stats()["requests_by_endpoint"] == {ENCRYPTED_BATCH: 1, PLAIN_BATCH: 1}
    assert gateway.stats()["batch_sizes"] == {"2": 2}


@pytest.mark.parametrize("status", [404, 405])
def test_a_gateway_without_batch_gets_one_notify_per_plain_item(
    gateway: GatewayThread, pki: TestPki, status: int
) -> None:
    """404/405 on ``notify/batch`` → one ``notify`` per plain item, and the client remembers
    that this gateway lacks batch (encrypted items still go in batches)."""
    gateway.trouble(status=status, status_count=1)  # a gateway that does not know notify/batch
    first = [plain() for _ in range(3)]
    second = [plain(), plain(), encrypted()]

    async def run() -> tuple[BatchOutcome, BatchOutcome, bool]:
        client = client_for(pki)
        try:
            one = await client.send(gateway.push_url, first)
            two = await client.send(gateway.push_url, second)
            return one, two, client.lacks_batch(gateway.push_url)
        finally:
            await client.aclose()

    one, two, remembered = asyncio.run(run())

    assert one == BatchOutcome(results=all_delivered(first), status_code=200)
    assert two.results == all_delivered(second)
    assert remembered
    assert gateway.stats()["requests_by_endpoint"] == {
        PLAIN_BATCH: 1,
        NOTIFY: 5,
        ENCRYPTED_BATCH: 1,
    }
    for item in first + second[:2]:
        (received,) = gateway.gateway.inbox(APNS_APP, pushkey_of(item))
        assert received.endpoint == NOTIFY
        assert received.notification["event_id"] == item.id


# --- results, matched by id --------------------------------------------------------------------


@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_results_are_matched_by_id_in_whatever_order_they_come(
    gateway: GatewayThread, pki: TestPki, order: str
) -> None:
    """The reference gateway sorts its results by id: the verdicts still reach the right items."""
    gone = new_pushkey()
    items = [encrypted(gone, item_id="c-1"), encrypted(item_id="a-1")]
    items += [encrypted(item_id="d-1"), encrypted(item_id="b-1")]
    gateway.trouble(result_order=order, reject_pushkeys=[gone])

    outcome = send(pki, gateway.push_url, items)

    assert {i: r.outcome for i, r in outcome.results.items()} == {
        "c-1": "rejected",
        "a-1": "delivered",
        "d-1": "delivered",
        "b-1": "delivered",
    }
    assert outcome.results["c-1"].rejected_pushkeys == (gone,)


@pytest.mark.parametrize("make", [encrypted, plain], ids=["encrypted", "plain"])
def test_a_rejected_pushkey_makes_its_item_rejected(
    gateway: GatewayThread, pki: TestPki, make: Any
) -> None:
    """An item with pushkeys in ``rejected`` is "rejected" with those pushkeys, although the
    development gateway reports it as ``failed`` (never "retry": the pusher is to go)."""
    gone = new_pushkey()
    bad, good = make(gone), make()
    gateway.trouble(reject_pushkeys=[gone])

    outcome = send(pki, gateway.push_url, [bad, good])

    assert outcome.results == {
        bad.id: Verdict(bad.id, "rejected", (gone,), "Pushkey rejected by the push provider"),
        good.id: Verdict(good.id, "delivered"),
    }
    assert outcome.gateway_trouble is None
    assert inbox_ids(gateway, bad) == []


def test_failed_items_without_rejected_pushkeys_are_retried(
    gateway: GatewayThread, pki: TestPki
) -> None:
    """``failed`` without a rejected pushkey → "retry", with the gateway's error text."""
    gateway.trouble(fail_fraction=1.0, fail_error="APNs unavailable")
    items = [encrypted(), plain()]

    outcome = send(pki, gateway.push_url, items)

    assert outcome.results == {
        item.id: Verdict(item.id, "retry", error="APNs unavailable") for item in items
    }
    assert (outcome.status_code, outcome.gateway_trouble) == (200, None)


def test_error_may_be_null_empty_or_absent_and_strangers_are_ignored(
    scripted: ScriptedGateway, pki: TestPki
) -> None:
    """``error`` null, "" or absent still means retry (with a reason of our own); a result for
    an id we did not send is ignored; an item the answer leaves out gets no entry."""
    items = [encrypted(item_id=name) for name in ("a", "b", "c", "d", "e")]
    results = [
        {"id": "a", "status": "failed", "error": None},
        {"id": "b", "status": "failed", "error": ""},
        {"id": "c", "status": "partial", "rejected": []},
        {"id": "stranger", "status": "success"},
        "not an object",
        {"id": "d", "status": "success", "rejected": None},
    ]
    scripted.answer = Answer(200, orjson.dumps({"results": results, "summary": {}}))

    outcome = send(pki, scripted.push_url, items)

    assert set(outcome.results) == {"a", "b", "c", "d"}
    assert [outcome.results[i].outcome for i in "abcd"] == ["retry", "retry", "retry", "delivered"]
    assert all(outcome.results[i].error for i in "abc")
    assert outcome.gateway_trouble is None


# --- whole-request 400 and 413 -----------------------------------------------------------------


def test_a_too_big_batch_learns_the_gateways_limit(gateway: GatewayThread, pki: TestPki) -> None:
    """400 "Batch size exceeds maximum limit" → ``max_batch_size`` from its details; nothing
    is decided and nothing is delivered."""
    gateway.trouble(max_batch_size=3)

    outcome = send(pki, gateway.push_url, [encrypted() for _ in range(5)])

    assert outcome == BatchOutcome(results={}, status_code=400, max_batch_size=3)
    assert gateway.stats()["notifications_recorded"] == 0


def test_a_too_big_batch_without_details_halves(scripted: ScriptedGateway, pki: TestPki) -> None:
    """Without ``details.max_batch_size`` the limit learnt is half the batch."""
    scripted.answer = Answer(400, b'{"error": "Batch size exceeds maximum limit"}')

    outcome = send(pki, scripted.push_url, [encrypted() for _ in range(7)])

    assert outcome == BatchOutcome(results={}, status_code=400, max_batch_size=3)


def test_413_halves_the_batch(gateway: GatewayThread, pki: TestPki) -> None:
    """413 → ``max_batch_size`` of half the batch, nothing decided, no gateway trouble."""
    gateway.trouble(status=413, status_count=1)

    outcome = send(pki, gateway.push_url, [encrypted() for _ in range(5)])

    assert outcome == BatchOutcome(results={}, status_code=413, max_batch_size=2)


def test_413_for_a_single_notification_is_gateway_trouble(
    gateway: GatewayThread, pki: TestPki
) -> None:
    """A gateway must take 256 KB; refusing one notification of 2 KB is the gateway's trouble
    (the caller backs off rather than resending it at once)."""
    gateway.trouble(status=413, status_count=1)

    outcome = send(pki, gateway.push_url, [encrypted()])

    assert outcome.max_batch_size == 1
    assert outcome.results == {}
    assert outcome.gateway_trouble == "HTTP 413 for a single notification"


def test_an_invalid_item_is_split_off_and_fails_alone(gateway: GatewayThread, pki: TestPki) -> None:
    """400 "Invalid data format" for a batch → the halves are resent until the bad item stands
    alone: the good ones are delivered once each, only the bad one fails, with the reason."""
    items = [encrypted() for _ in range(5)]
    items[3] = encrypted(ciphertext="too short")

    outcome = send(pki, gateway.push_url, items)

    bad = items[3].id
    assert outcome.results == {
        **all_delivered(items[:3] + items[4:]),
        bad: Verdict(bad, "failed", error="HTTP 400: Invalid data format"),
    }
    assert [len(inbox_ids(gateway, item)) for item in items] == [1, 1, 1, 0, 1]
    # [0-4] → [0,1] ok, [2-4] → [2] ok, [3,4] → [3] fails, [4] ok
    assert requests_to(gateway, ENCRYPTED_BATCH) == 7


def test_an_oversized_item_is_split_off_and_fails_alone(
    gateway: GatewayThread, pki: TestPki
) -> None:
    """400 "Individual notification too large" → split; only the large one fails."""
    gateway.trouble(max_notification_size_kb=3)
    items = [encrypted() for _ in range(3)]
    big = encrypted(data={"blob": "x" * 3000})
    items.insert(1, big)

    outcome = send(pki, gateway.push_url, items)

    assert outcome.results.pop(big.id) == Verdict(
        big.id, "failed", error="HTTP 400: Individual notification too large"
    )
    assert outcome.results == all_delivered([items[0], *items[2:]])


def test_a_400_naming_duplicate_ids_splits_the_batch(gateway: GatewayThread, pki: TestPki) -> None:
    """Any other 400 reason, here "Duplicate notification IDs in batch", splits the batch."""
    body = orjson.dumps(
        {"error": "Duplicate notification IDs in batch", "details": {"duplicate_ids": ["x"]}}
    )
    gateway.trouble(status=400, status_count=1, status_body=body.decode())
    items = [plain() for _ in range(4)]

    outcome = send(pki, gateway.push_url, items)

    assert outcome.results == all_delivered(items)
    assert requests_to(gateway, PLAIN_BATCH) == 3


def test_a_400_that_is_not_json_fails_the_items_one_by_one(
    gateway: GatewayThread, pki: TestPki
) -> None:
    """A proxy's HTML 400: split, and each single item with such a 400 fails."""
    gateway.trouble(status=400, status_body="<html><h1>400 Bad Request</h1></html>")
    items = [encrypted(), encrypted()]

    outcome = send(pki, gateway.push_url, items)

    assert outcome.results == {
        item.id: Verdict(item.id, "failed", error="HTTP 400 (answer not JSON)") for item in items
    }
    assert outcome.gateway_trouble is None
    assert requests_to(gateway, ENCRYPTED_BATCH) == 3


# --- gateway trouble ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [
        (408, None),
        (429, 30),
        (500, None),
        (502, None),
        (503, 7),
        (504, None),
        (401, None),
        (403, 1),
    ],
)
def test_error_statuses_are_gateway_trouble(
    gateway: GatewayThread, pki: TestPki, status: int, retry_after: int | None
) -> None:
    """408/429/5xx/401/403 → gateway trouble with ``Retry-After`` when given; nothing decided,
    and the plain items of the same call are not even tried."""
    gateway.trouble(status=status, retry_after=retry_after)

    outcome = send(pki, gateway.push_url, [encrypted(), encrypted(), plain()])

    assert outcome == BatchOutcome(
        results={},
        status_code=status,
        gateway_trouble=f"HTTP {status}",
        retry_after_seconds=None if retry_after is None else float(retry_after),
    )
    assert gateway.stats()["requests_by_endpoint"] == {ENCRYPTED_BATCH: 1}


def test_a_retry_after_date_counts_from_now(scripted: ScriptedGateway, pki: TestPki) -> None:
    """``Retry-After`` as an HTTP date → the seconds until then."""
    then = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120)
    scripted.answer = Answer(503, b"{}", (("retry-after", format_datetime(then, usegmt=True)),))

    outcome = send(pki, scripted.push_url, [encrypted()])

    assert outcome.gateway_trouble == "HTTP 503"
    assert outcome.retry_after_seconds is not None
    assert 100 < outcome.retry_after_seconds <= 120


@pytest.mark.parametrize(
    "body",
    [b"OK", b"<html>queued</html>", b"", b"[]", b"{}", b'{"results": "all fine"}'],
    ids=["text", "html", "empty", "list", "no-results", "results-not-a-list"],
)
def test_a_200_that_is_not_a_batch_result_is_gateway_trouble(
    scripted: ScriptedGateway, pki: TestPki, body: bytes
) -> None:
    """An unparseable 200 is not success (the e-prescription peer's weakness): trouble."""
    scripted.answer = Answer(200, body)

    outcome = send(pki, scripted.push_url, [encrypted(), encrypted()])

    assert outcome == BatchOutcome(
        results={}, status_code=200, gateway_trouble="HTTP 200 without a batch result"
    )


def test_redirects_are_not_followed(
    scripted: ScriptedGateway, gateway: GatewayThread, pki: TestPki
) -> None:
    """A redirect is gateway trouble: sends go only to the stored URL, never where it points."""
    target = gateway.push_url + "notifyEncrypted/batch"
    scripted.answer = Answer(307, b"", (("location", target),))

    outcome = send(pki, scripted.push_url, [encrypted()])

    assert outcome.gateway_trouble == "HTTP 307: redirect not followed"
    assert outcome.results == {}
    assert len(scripted.seen) == 1
    assert gateway.stats()["requests"] == 0


def test_a_stalled_gateway_is_gateway_trouble_after_the_timeout(
    gateway: GatewayThread, pki: TestPki
) -> None:
    """No answer within ``timeout_seconds`` → trouble, without waiting for the gateway."""
    gateway.trouble(delay_ms=1000, delay_count=1)
    started = time.monotonic()

    outcome = send(pki, gateway.push_url, [encrypted()], timeout_seconds=0.3)

    assert time.monotonic() - started < 0.9
    assert outcome == BatchOutcome(
        results={}, status_code=None, gateway_trouble="no answer within 0.3s"
    )


def test_a_gateway_that_is_down_is_gateway_trouble(pki: TestPki) -> None:
    """Connection refused → trouble, no status."""
    outcome = send(pki, f"https://127.0.0.1:{free_port()}/push/v1/", [encrypted()])

    assert outcome.results == {}
    assert outcome.status_code is None
    assert outcome.gateway_trouble is not None
    assert outcome.gateway_trouble.startswith("cannot connect")


# --- TLS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("trust", ["another CA", "the system store"])
def test_the_gateway_certificate_is_verified(
    gateway: GatewayThread, pki: TestPki, tmp_path: Any, trust: str
) -> None:
    """A gateway whose certificate does not chain to ``ca_file`` (or, without one, to the
    system store) gets nothing: TLS trouble."""
    ca_file = make_test_pki(tmp_path).ca_cert if trust == "another CA" else None

    outcome = send(pki, gateway.push_url, [encrypted()], ca_file=ca_file)

    assert outcome.gateway_trouble is not None
    assert "certificate verify failed" in outcome.gateway_trouble
    assert gateway.stats()["requests"] == 0


def test_without_a_client_certificate_the_gateway_refuses(
    gateway: GatewayThread, pki: TestPki
) -> None:
    """Mutual TLS: the gateway takes nothing from a client without our certificate."""
    outcome = send(pki, gateway.push_url, [encrypted()], client_cert=None, client_key=None)

    assert outcome.gateway_trouble is not None
    assert outcome.results == {}
    assert gateway.stats()["requests"] == 0


# --- connections -------------------------------------------------------------------------------


def test_connections_are_kept_alive_and_the_body_is_compact_json(
    scripted: ScriptedGateway, pki: TestPki
) -> None:
    """Sends through one client reuse one connection; the body is the spec's request JSON."""
    batches = [[encrypted(), encrypted()] for _ in range(5)]

    async def run() -> list[BatchOutcome]:
        client = client_for(pki)
        try:
            return [await client.send(scripted.push_url, batch) for batch in batches]
        finally:
            await client.aclose()

    outcomes = asyncio.run(run())

    assert [o.results for o in outcomes] == [all_delivered(batch) for batch in batches]
    assert len({seen.client_port for seen in scripted.seen}) == 1
    first = scripted.seen[0]
    assert first.headers["content-type"] == "application/json"
    expected: EncryptedBatchNotificationRequest = {
        "notifications": [item.item for item in batches[0]]
    }
    assert first.body == encode(expected)


def test_requests_are_bounded_per_gateway_and_other_gateways_keep_flowing(
    scripted: ScriptedGateway, gateway: GatewayThread, pki: TestPki
) -> None:
    """At most ``max_connections_per_gateway`` requests at once to one gateway; a slow
    gateway does not hold up another."""
    scripted.delay = 0.3

    async def run() -> tuple[list[BatchOutcome], BatchOutcome, int]:
        client = client_for(pki, max_connections_per_gateway=2)
        try:
            slow = [
                asyncio.create_task(client.send(scripted.push_url, [encrypted()])) for _ in range(6)
            ]
            fast = await client.send(gateway.push_url, [encrypted()])
            finished_meanwhile = sum(task.done() for task in slow)
            return list(await asyncio.gather(*slow)), fast, finished_meanwhile
        finally:
            await client.aclose()

    slow, fast, finished_meanwhile = asyncio.run(run())

    assert all(len(o.results) == 1 and o.gateway_trouble is None for o in slow)
    assert scripted.most_in_flight == 2
    assert len({seen.client_port for seen in scripted.seen}) <= 2
    assert fast.gateway_trouble is None
    assert finished_meanwhile == 0


# --- the caller's side -------------------------------------------------------------------------


def test_an_empty_send_sends_nothing(gateway: GatewayThread, pki: TestPki) -> None:
    """No items, no request."""
    assert send(pki, gateway.push_url, []) == BatchOutcome(results={}, status_code=None)
    assert gateway.stats()["requests"] == 0


def test_item_ids_and_base_urls_are_checked(pki: TestPki) -> None:
    """Ids of 1..64 characters, unique within a send; base URLs end in ``/``."""
    with pytest.raises(ValueError, match="1 to 64"):
        encrypted(item_id="x" * 65)
    with pytest.raises(ValueError, match="1 to 64"):
        EncodedItem.of({"id": "", "notification": {"prio": "high", "devices": []}})
    assert len(encrypted(item_id="x" * 64).id) == 64
    item = encrypted()
    with pytest.raises(ValueError, match="unique"):
        send(pki, "https://127.0.0.1:1/push/v1/", [item, item])
    with pytest.raises(ValueError, match="ends with"):
        send(pki, "https://127.0.0.1:1/push/v1", [item])


def test_logs_name_the_gateway_but_carry_no_pushkey_payload_or_ciphertext(
    gateway: GatewayThread, pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    """Trouble is logged with the gateway's host:port; pushkeys, ciphertexts, key identifiers
    and payloads never appear."""
    gone = new_pushkey()
    items = [encrypted(gone), encrypted(), plain()]
    gateway.trouble(reject_pushkeys=[gone])
    caplog.set_level(logging.DEBUG, logger="fdpush.delivery")

    first = send(pki, gateway.push_url, items)
    gateway.trouble(status=503)
    second = send(pki, gateway.push_url, items)

    assert first.results[items[0].id].outcome == "rejected"
    assert second.gateway_trouble == "HTTP 503"
    host_port = gateway.url.removeprefix("https://")
    assert f"gateway {host_port} in trouble: HTTP 503" in caplog.text
    for item in items:
        note = sent(item)
        secrets = [pushkey_of(item), note.get("ciphertext"), note.get("key_identifier")]
        if "content" in note:
            secrets.append(orjson.dumps(note["content"]).decode())
        for secret in filter(None, secrets):
            assert secret not in caplog.text
