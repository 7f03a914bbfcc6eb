"""Failures (docs/delivery.md, "What each answer does"): whatever the gateways, the network
or our own process do, every notification ends delivered — or, past the maximum age, failed with its
reason, never dropped silently.

The gateways are development gateways over mutual TLS on loopback, told to misbehave through
their trouble switches; the service is the real ``fdpush serve`` (and ``fdpush worker``) on
SQLite and PostgreSQL. The only clock trick: the maximum-age test back-dates a notification's
``created_at`` in the database instead of waiting the minimum of 60 s (see its docstring).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Service, new_user
from delivery.e2e_helpers import (
    ACTIVATE,
    FCM_APP,
    AppDevice,
    Rig,
    WorkerProcess,
    delivery_env,
    free_gateway_port,
    restart,
    run_cli,
    start_gateway,
    wait_for,
)
from fdpush.gateway import GatewayThread, TestPki

LEASE_SECONDS = 3
GATEWAY_NAMES = ("flaky", "healthy", "order", "small", "dead", "retry", "unreadable")


@pytest.fixture(scope="module")
def gw(pki: TestPki) -> Iterator[dict[str, GatewayThread]]:
    """One development gateway per kind of trouble, so one test's trouble stays its own."""
    running = {name: start_gateway(pki) for name in GATEWAY_NAMES}
    yield running
    for gateway in running.values():
        gateway.stop()


@pytest.fixture(scope="module")
def down_port(pki: TestPki) -> int:
    """Where a gateway will listen once it comes up; nothing listens there at first."""
    return free_gateway_port(pki)


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service],
    pki: TestPki,
    gw: dict[str, GatewayThread],
    down_port: int,
) -> Iterator[Rig]:
    env = delivery_env(
        pki,
        [*gw.values(), down_port],
        FDPUSH_DELIVERY_LEASE_SECONDS=str(LEASE_SECONDS),
        FDPUSH_DELIVERY_MAX_AGE_SECONDS="60",
    )
    running = Rig(start_service(**env))
    yield running
    running.close()


@pytest.fixture(autouse=True)
def calm_gateways(gw: dict[str, GatewayThread]) -> Iterator[None]:
    for gateway in gw.values():
        gateway.reset_trouble()
    yield
    for gateway in gw.values():
        gateway.reset_trouble()


def phones(rig: Rig, gateway: GatewayThread | None, count: int, **kwargs) -> list[AppDevice]:
    """``count`` registered devices of one new user at ``gateway`` (iOS and Android mixed)."""
    user = new_user()
    devices = [
        AppDevice(user, gateway, **({"app_id": FCM_APP} if n % 2 else {}), **kwargs)
        for n in range(count)
    ]
    for device in devices:
        rig.register(device)
    return devices


def assert_each_got(devices: list[AppDevice], *payloads: dict) -> None:
    """Every device decrypts exactly ``payloads`` (each once, in any order)."""
    for device in devices:
        got = sorted(str(p) for p in device.payloads())
        assert got == sorted(str(p) for p in payloads), device.pushkey


def responses(gateway: GatewayThread, status: int) -> int:
    return int(gateway.gateway.stats()["responses_by_status"].get(str(status), 0))


# --- 5xx, 503, 429 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after"), [(500, None), (503, None), (429, 1)], ids=["500", "503", "429"]
)
def test_a_burst_of_errors_ends_with_everything_delivered(
    rig: Rig, gw: dict[str, GatewayThread], status: int, retry_after: int | None
) -> None:
    """The gateway answers ``status`` to two requests in a row: nothing is decided, the batch
    is retried with backoff until it goes through. ``Retry-After`` is honoured: with
    ``Retry-After: 1`` twice, delivery takes at least two seconds."""
    gateway = gw["flaky"]
    devices = phones(rig, gateway, 3)
    before = responses(gateway, status)
    gateway.trouble(status=status, status_count=2, retry_after=retry_after)

    started = time.monotonic()
    answer = rig.emit(devices[0].user, ACTIVATE, {"burst": status})
    rig.delivered(answer["event_id"], 3, timeout=20)
    elapsed = time.monotonic() - started

    assert responses(gateway, status) - before == 2
    assert_each_got(devices, {"burst": status})
    [attempts] = {row[3] for row in rig.notification_rows(answer["event_id"])}
    assert attempts == 2  # two failed tries counted, then delivered
    if retry_after is not None:
        assert elapsed >= 2 * retry_after - 0.1, elapsed


def test_a_gateway_that_is_down_for_a_while_gets_everything_once_it_is_up(
    rig: Rig, pki: TestPki, down_port: int
) -> None:
    """Connection refused is gateway trouble like any other: retried with backoff, and once
    the gateway listens the notifications go through."""
    url = f"https://127.0.0.1:{down_port}/push/v1/"
    devices = phones(rig, None, 2, url=url)
    answer = rig.emit(devices[0].user, ACTIVATE, {"while": "down"})

    def tried_twice() -> bool:
        rows = rig.notification_rows(answer["event_id"])
        return all(attempts >= 2 for _, _, _, attempts, _ in rows)

    wait_for(tried_twice, timeout=15, what="two failed attempts")
    rows = rig.notification_rows(answer["event_id"])
    assert {status for _, _, status, _, _ in rows} == {"pending"}
    assert all("connect" in (error or "") for *_, error in rows), rows

    gateway = start_gateway(pki, port=down_port)
    try:
        up = time.monotonic()
        for device in devices:
            device.gateway = gateway
        rig.delivered(answer["event_id"], 2, timeout=20)
        print(f"\ndelivered {time.monotonic() - up:.2f}s after the gateway came up")
        assert_each_got(devices, {"while": "down"})
    finally:
        gateway.stop()


def test_a_failing_gateway_backs_off_alone_while_the_others_keep_flowing(
    rig: Rig, gw: dict[str, GatewayThread]
) -> None:
    """Per-gateway backoff: while one gateway answers 503 (its circuit open, probed now and
    then, not stormed), events for devices at a healthy gateway arrive at once; once the sick
    gateway recovers, it gets everything it missed."""
    sick, healthy = gw["flaky"], gw["healthy"]
    user = new_user()
    at_sick, at_healthy = AppDevice(user, sick), AppDevice(user, healthy)
    rig.register(at_sick)
    rig.register(at_healthy)
    sick.trouble(status=503)
    sick_requests = sick.gateway.stats()["requests"]

    answers = [rig.emit(user, ACTIVATE, {"n": 0})]
    wait_for(lambda: len(at_healthy.inbox()) == 1, timeout=1.0, interval=0.001)
    latencies = []
    for n in range(1, 4):
        # Each round after the sick gateway has been tried (again): its circuit is open.
        seen = sick.gateway.stats()["requests"]
        wait_for(lambda s=seen: sick.gateway.stats()["requests"] > s, timeout=10, interval=0.005)
        started = time.perf_counter()
        answers.append(rig.emit(user, ACTIVATE, {"n": n}))
        wait_for(lambda n=n: len(at_healthy.inbox()) == n + 1, timeout=1.0, interval=0.001)
        latencies.append(time.perf_counter() - started)

    tries = sick.gateway.stats()["requests"] - sick_requests
    shown = ", ".join(f"{t * 1000:.1f}" for t in latencies)
    print(f"\nhealthy gateway latency while the other is down (ms): {shown}; sick tries {tries}")
    assert max(latencies) < 1.0
    assert at_sick.inbox() == []
    # A probe now and then, a batch per probe: far fewer requests than notifications retried.
    assert tries <= 6, tries

    sick.trouble(status=None)
    for answer in answers:
        rig.settled(answer["event_id"], timeout=30)
        counts = rig.status(answer["event_id"])["counts"]
        assert counts["delivered"] == 2, counts
    assert_each_got([at_sick, at_healthy], *({"n": n} for n in range(4)))


# --- answers the sender must read carefully -------------------------------------------------------


@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_results_in_another_order_are_matched_by_id(
    rig: Rig, gw: dict[str, GatewayThread], order: str
) -> None:
    """The gateway answers in another order than asked, with one pushkey rejected among six:
    exactly that device's pusher goes and its notification counts as rejected; the five
    others are delivered."""
    gateway = gw["order"]
    gateway.trouble(result_order=order)
    devices = phones(rig, gateway, 6)
    doomed = devices[1]
    gateway.gateway.reject(doomed.pushkey)
    sizes_before = Counter(gateway.gateway.stats()["batch_sizes"])

    answer = rig.emit(doomed.user, ACTIVATE, {"order": order})
    counts = rig.settled(answer["event_id"])

    assert counts == {"pending": 0, "delivered": 5, "rejected": 1, "failed": 0}
    assert Counter(gateway.gateway.stats()["batch_sizes"]) - sizes_before == {"6": 1}
    by_pushkey = {row[1]: row[2] for row in rig.notification_rows(answer["event_id"])}
    assert by_pushkey.pop(None) == "rejected"  # the doomed device's pusher is gone
    assert by_pushkey == {
        rig.service.pushkey_index(d.pushkey): "delivered" for d in devices if d is not doomed
    }
    assert sorted(p["pushkey"] for p in rig.pushers(doomed.user)) == sorted(
        d.pushkey for d in devices if d is not doomed
    )
    assert_each_got([d for d in devices if d is not doomed], {"order": order})
    assert doomed.inbox() == []


def test_items_the_gateway_failed_are_retried_until_delivered(
    rig: Rig, gw: dict[str, GatewayThread]
) -> None:
    """Half the items come back ``failed`` (per item, the request itself succeeds): those are
    retried, the others are not sent again, and each device ends with its notification once."""
    gateway = gw["retry"]
    # Seed 2: three of the first eight items fail, their retries succeed (fast and repeatable;
    # with another draw the test only takes longer).
    gateway.trouble(fail_fraction=0.5, fail_seed=2)
    stats_before = gateway.gateway.stats()
    devices = phones(rig, gateway, 8)

    answer = rig.emit(devices[0].user, ACTIVATE, {"flaky": True})
    rig.delivered(answer["event_id"], 8, timeout=30)

    stats = gateway.gateway.stats()
    failed = stats["items_failed"] - stats_before["items_failed"]
    assert failed >= 1
    assert stats["items_accepted"] - stats_before["items_accepted"] == 8
    assert stats["items_received"] - stats_before["items_received"] == 8 + failed
    assert_each_got(devices, {"flaky": True})
    retried = [row for row in rig.notification_rows(answer["event_id"]) if row[3] > 0]
    assert len(retried) >= 1


def test_a_gateway_with_a_smaller_batch_limit_gets_smaller_batches(
    rig: Rig, gw: dict[str, GatewayThread]
) -> None:
    """A gateway that takes at most 7 per batch answers 400 "Batch size exceeds maximum limit"
    with ``details.max_batch_size``: the batch is split to that size and all is delivered, at
    once: the rows given back wake the worker (its idle wait would otherwise last 5 s)."""
    gateway = gw["small"]
    gateway.trouble(max_batch_size=7)
    devices = [d for _ in range(4) for d in phones(rig, gateway, 5)]
    before = gateway.gateway.stats()

    started = time.monotonic()
    results = rig.emit_many(
        [
            {"user_id": user, "channel": ACTIVATE, "payload": {"batch": "small"}}
            for user in dict.fromkeys(d.user for d in devices)
        ]
    )
    for result in results:
        rig.delivered(result["event_id"], 5)
    took = time.monotonic() - started
    assert took < 4.0, f"the smaller batches waited {took:.1f}s"

    stats = gateway.gateway.stats()
    sizes = Counter(stats["batch_sizes"]) - Counter(before["batch_sizes"])
    assert max(int(size) for size in sizes) <= 7, sizes
    assert sum(int(size) * count for size, count in sizes.items()) == 20
    refused = Counter(stats["responses_by_status"]) - Counter(before["responses_by_status"])
    assert refused["400"] >= 1
    assert_each_got(devices, {"batch": "small"})


# --- giving up ---------------------------------------------------------------------------------


def test_a_notification_past_the_maximum_age_ends_failed_with_its_reason(
    rig: Rig, gw: dict[str, GatewayThread]
) -> None:
    """With a gateway that keeps failing, a notification older than
    FDPUSH_DELIVERY_MAX_AGE_SECONDS is given up: ``failed`` with its reason, in the event's
    counts and in ``fdpush failed`` — kept, never silently dropped.

    The setting's minimum is 60 s. Rather than wait that long, the test lets the service try
    and fail once, then back-dates the notification's ``created_at`` by 61 s in the database
    (what a notification pending for a minute looks like); the worker's next retry gives up.
    """
    gateway = gw["dead"]
    gateway.trouble(status=503)
    [device] = phones(rig, gateway, 1)
    answer = rig.emit(device.user, ACTIVATE, {"never": "arrives"})
    event_id = answer["event_id"]
    wait_for(
        lambda: rig.notification_rows(event_id)[0][3] >= 1, timeout=10, what="a failed attempt"
    )
    assert rig.status(event_id)["counts"]["pending"] == 1

    rig.service.query(
        "UPDATE notifications SET created_at = created_at - 61000 WHERE event_id = ?", (event_id,)
    )
    counts = rig.settled(event_id, timeout=20)

    assert counts == {"pending": 0, "delivered": 0, "rejected": 0, "failed": 1}
    [(_, _, status, _attempts, error)] = rig.notification_rows(event_id)
    assert status == "failed"
    assert error.startswith("gave up after 60s"), error
    assert "HTTP 503" in error
    listed = run_cli(rig.service, "failed")
    assert listed.returncode == 0, listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if event_id in line]
    assert "gave up after 60s" in line
    assert "HTTP 503" in line
    assert device.pushkey not in listed.stdout  # the device is named by a reference only
    assert device.inbox() == []


def test_a_stored_notification_that_does_not_open_waits_alone(
    rig: Rig, gw: dict[str, GatewayThread]
) -> None:
    """A notification whose stored body does not open under the master key (a damaged row, a
    wrong key; here a row in the layout before revision 0003, which carried its whole body) is
    kept pending with that reason — not dropped, not failed — while the others of its batch
    are delivered."""
    gateway = gw["unreadable"]
    gateway.trouble(status=503)  # keep everything pending while one row is damaged
    devices = phones(rig, gateway, 3)
    event_id = rig.emit(devices[0].user, ACTIVATE, {"k": "v"})["event_id"]
    wait_for(
        lambda: all(row[3] >= 1 for row in rig.notification_rows(event_id)),
        timeout=10,
        what="a first, failed attempt",
    )
    damaged_id, damaged_index = rig.notification_rows(event_id)[0][:2]
    rig.service.query(
        "UPDATE notifications SET body = ? WHERE id = ?", (b"\x01" + bytes(60), damaged_id)
    )
    rig.service.query("UPDATE dispatches SET next_attempt_at = 0")  # due now
    gateway.reset_trouble()

    def settled() -> list[tuple] | None:
        rows = rig.notification_rows(event_id)
        done = [r for r in rows if r[0] != damaged_id and r[2] == "delivered"]
        damaged = [r for r in rows if r[0] == damaged_id]
        return rows if len(done) == 2 and damaged[0][4] == "stored data cannot be opened" else None

    rows = wait_for(settled, timeout=20, what="the readable two delivered")
    assert [r[2] for r in rows if r[0] == damaged_id] == ["pending"]
    assert rig.status(event_id)["counts"] == {
        "pending": 1,
        "delivered": 2,
        "rejected": 0,
        "failed": 0,
    }
    for device in devices:
        damaged = rig.service.pushkey_index(device.pushkey) == damaged_index
        expected = [] if damaged else [{"k": "v"}]
        assert device.payloads() == expected


# --- our own process fails ------------------------------------------------------------------------


def test_kill_9_mid_batch_loses_nothing(
    start_service: Callable[..., Service], pki: TestPki, tmp_path: Path
) -> None:
    """``kill -9`` while the gateway stalls a batch: on restart on the same database the
    dead process's claims expire (lease of 3 s) and everything is delivered, once."""
    gateway = start_gateway(pki)
    try:
        first = start_service(
            **delivery_env(pki, [gateway], FDPUSH_DELIVERY_LEASE_SECONDS=str(LEASE_SECONDS))
        )
        rig = Rig(first)
        devices = phones(rig, gateway, 5)
        gateway.trouble(delay_ms=120_000, delay_count=1)  # stall before reading the batch

        answer = rig.emit(devices[0].user, ACTIVATE, {"survives": "kill -9"})
        wait_for(lambda: gateway.gateway.stats()["requests"] >= 1, timeout=10, what="a send")
        leased = rig.service.query(
            "SELECT count(*) FROM dispatches WHERE lease_owner IS NOT NULL AND "
            + (
                "json_array_length(notification_ids)"
                if rig.service.database_url.startswith("sqlite")
                else "cardinality(notification_ids)"
            )
            + " = 5"
        )
        assert leased == [(1,)]  # the event's five notifications, claimed as one dispatch
        first.process.kill()  # SIGKILL: no clean-up of any kind
        first.process.wait(10)
        rig.close()
        assert all(device.inbox() == [] for device in devices)

        second = restart(first, tmp_path / "restarted")
        try:
            restarted = time.monotonic()
            rig = Rig(second)
            rig.delivered(answer["event_id"], 5, timeout=LEASE_SECONDS + 10)
            took = time.monotonic() - restarted
            print(f"\ndelivered {took:.2f}s after the restart (lease {LEASE_SECONDS}s)")
            assert took < LEASE_SECONDS + 5
            assert_each_got(devices, {"survives": "kill -9"})
            rig.close()
        finally:
            second.stop()
    finally:
        gateway.stop()


def test_two_workers_on_postgresql_send_each_notification_once(
    backend: str, start_service: Callable[..., Service], pki: TestPki, tmp_path: Path
) -> None:
    """``fdpush serve`` without its worker plus two ``fdpush worker`` processes on one
    PostgreSQL: 300 notifications, each arrives at the gateway exactly once."""
    if backend != "postgresql":
        pytest.skip("several workers share one PostgreSQL; with SQLite one process does it all")
    gateway = start_gateway(pki)
    workers: list[WorkerProcess] = []
    try:
        service = start_service(**delivery_env(pki, [gateway], FDPUSH_SERVE_WORKER="0"))
        rig = Rig(service)
        workers = [WorkerProcess(service, tmp_path / f"worker-{n}") for n in range(2)]
        users = [phones(rig, gateway, 10) for _ in range(3)]

        results = []
        for n in range(10):  # ten requests, so both workers are woken again and again
            results += rig.emit_many(
                [
                    {"user_id": devices[0].user, "channel": ACTIVATE, "payload": {"n": n}}
                    for devices in users
                ]
            )
        assert sum(r["notifications"] for r in results) == 300
        for result in results:
            rig.delivered(result["event_id"], 10, timeout=30)

        ids = {row[0] for r in results for row in rig.notification_rows(r["event_id"])}
        arrived = Counter(r.item_id for r in gateway.gateway.notifications(limit=10_000))
        assert len(ids) == 300
        assert set(arrived) == ids
        assert set(arrived.values()) == {1}, [i for i, n in arrived.items() if n > 1]
        for devices in users:
            assert_each_got(devices, *({"n": n} for n in range(10)))
        rig.close()
    finally:
        for worker in workers:
            worker.stop()
        gateway.stop()
