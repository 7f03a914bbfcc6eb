"""Events from Python, delivery metrics, and the list of given-up notifications (docs/delivery.md).

- ``fdpush.Notifier`` in this (the test's) process emits into a running service's database;
  the service's worker delivers (woken by PostgreSQL ``NOTIFY``; with SQLite it finds the work
  by polling, at most every 5 s). All or none, as over HTTP.
- ``/metrics`` after deliveries: ``fdpush_notifications_total`` by outcome agrees with the
  notifications' end states in the database; batch sizes, queue depth and age, and per-gateway
  circuit state follow what the gateways do.
- ``fdpush failed``: what ``tests/delivery/test_failures.py`` does not check already — the
  empty list, ``--limit``, newest first, and a reason from a refusing gateway (400).

The real ``fdpush serve`` (SQLite and PostgreSQL) and development gateways over mutual TLS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Service, new_user
from delivery.e2e_helpers import (
    ACTIVATE,
    CLOSE,
    AppDevice,
    Rig,
    delivery_env,
    run_cli,
    start_gateway,
    wait_for,
)
from fdpush import EventRequest, Notifier
from fdpush.config import Settings
from fdpush.domain.errors import InvalidParam
from fdpush.gateway import GatewayThread, TestPki

GATEWAY_NAMES = ("main", "sick", "tiny")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def gw(pki: TestPki) -> Iterator[dict[str, GatewayThread]]:
    """``main`` is healthy; ``sick`` and ``tiny`` are told to misbehave by the tests."""
    running = {name: start_gateway(pki) for name in GATEWAY_NAMES}
    yield running
    for gateway in running.values():
        gateway.stop()


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service], pki: TestPki, gw: dict[str, GatewayThread]
) -> Iterator[Rig]:
    running = Rig(start_service(**delivery_env(pki, gw.values())))
    yield running
    running.close()


@pytest.fixture(autouse=True)
def calm_gateways(gw: dict[str, GatewayThread]) -> Iterator[None]:
    yield
    for gateway in gw.values():
        gateway.reset_trouble()


def settings_of(service: Service) -> Settings:
    """The service's settings (its FDPUSH_* environment), for a Notifier beside it."""
    values = {
        name.removeprefix("FDPUSH_").lower(): value
        for name, value in service.env.items()
        if name.startswith("FDPUSH_")
    }
    return Settings(**values)


# --- fdpush.Notifier ------------------------------------------------------------------------------


def test_the_notifier_emits_into_the_services_database_and_its_worker_delivers(
    rig: Rig, gw: dict[str, GatewayThread], backend: str
) -> None:
    """``Notifier.emit`` from another process than the service: the result counts the
    subscribed devices, ``status`` is readable at once, and the service's worker delivers it
    — the app decrypts exactly the payload, with ``prio`` and ``identifier``. On PostgreSQL the
    worker is woken by NOTIFY (well under its 5 s idle poll); with SQLite it polls."""
    user = new_user()
    phone, muted = AppDevice(user, gw["main"]), AppDevice(user, gw["main"])
    rig.register(phone)
    rig.register(muted)
    rig.choose(muted, erp_task_activate="disabled")
    payload = {"ChannelId": ACTIVATE, "Identifier": "160.000.000.042", "text": "Grüße"}

    async def emit() -> tuple[Any, Any, list[Any]]:
        async with Notifier.open(settings_of(rig.service)) as notifier:
            result = await notifier.emit(user, ACTIVATE, payload, prio="low", identifier="py-1")
            status = await notifier.status(result.event_id)
            many = await notifier.emit_many(
                [
                    EventRequest(user, ACTIVATE, {"n": 1}),
                    EventRequest(user, CLOSE, {"n": 2}),  # default disabled: nobody
                ]
            )
            return result, status, many

    started = time.monotonic()
    result, status, many = asyncio.run(emit())
    assert result.notifications == 1
    assert status.event_id == result.event_id
    assert status.channel == ACTIVATE
    assert sum(status.counts.values()) == 1
    assert set(status.counts) == {"pending", "delivered", "rejected", "failed"}
    assert [r.notifications for r in many] == [1, 0]

    rig.delivered(result.event_id, 1, timeout=20)
    took = time.monotonic() - started
    rig.delivered(many[0].event_id, 1)
    rig.delivered(many[1].event_id, 0)
    print(f"\nNotifier → gateway on {backend}: {took:.2f}s")
    if backend == "postgresql":
        assert took < 3.0, took

    received = {r.notification.get("identifier"): r for r in phone.inbox()}
    assert phone.decrypt(received["py-1"]) == payload
    assert received["py-1"].notification["prio"] == "low"
    assert sorted(map(str, phone.payloads())) == sorted(map(str, [payload, {"n": 1}]))
    assert muted.inbox() == []
    # What the service answers over HTTP agrees with what the Notifier read.
    assert rig.status(result.event_id)["channel"] == ACTIVATE


@pytest.mark.parametrize(
    "bad",
    [
        EventRequest("someone", "erp.no.such.channel", {"n": 1}),
        EventRequest("someone", ACTIVATE, {"p": "x" * 1011}),
        EventRequest("someone", ACTIVATE, {"n": 1}, prio="urgent"),
        EventRequest("someone", ACTIVATE, {"not json": {1, 2}}),
    ],
    ids=["unknown-channel", "payload-too-large", "bad-prio", "not-json-serialisable"],
)
def test_notifier_emit_many_is_all_or_none(
    rig: Rig, gw: dict[str, GatewayThread], bad: EventRequest
) -> None:
    """One bad event among good ones: ``emit_many`` raises ``InvalidParam`` (not some other
    error) and stores none of them; the good ones alone are stored, each for the device."""
    user = new_user()
    rig.register(AppDevice(user, gw["main"]))
    good = [EventRequest(user, ACTIVATE, {"n": n}) for n in range(2)]
    bad = EventRequest(user, bad.channel, bad.payload, bad.prio, bad.identifier)

    async def emit(events: list[EventRequest]) -> list[Any]:
        async with Notifier.open(settings_of(rig.service)) as notifier:
            return await notifier.emit_many(events)

    with pytest.raises(InvalidParam):
        asyncio.run(emit([*good, bad]))
    assert rig.service.query(
        "SELECT count(*) FROM events WHERE user_id = ?", (rig.service.pseudonym(user),)
    ) == [(0,)]
    results = asyncio.run(emit(good))
    assert [r.notifications for r in results] == [1, 1]
    for result in results:
        assert sum(rig.status(result.event_id)["counts"].values()) == 1


# --- /metrics -------------------------------------------------------------------------------------


def metrics(service: Service) -> Samples:
    response = httpx.get(service.base_url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def outcomes_agree_with_the_database(service: Service) -> bool:
    """fdpush_notifications_total{outcome} equals the database's count of that end state."""
    stored = dict(
        service.query(
            "SELECT status, count(*) FROM notifications WHERE status != 'pending' GROUP BY status"
        )
    )
    samples = metrics(service)
    return all(
        value(samples, "fdpush_notifications_total", outcome=outcome) == stored.get(outcome, 0)
        for outcome in ("delivered", "rejected", "failed")
    )


def quiet(service: Service) -> bool:
    """Nothing pending (earlier tests' notifications all sent) and the metrics in step."""
    [(pending,)] = service.query("SELECT count(*) FROM notifications WHERE status = 'pending'")
    return pending == 0 and outcomes_agree_with_the_database(service)


def gateway_label(gateway: GatewayThread) -> str:
    return gateway.url.split("://", 1)[1].rstrip("/")


def test_metrics_count_deliveries_and_batch_sizes(rig: Rig, gw: dict[str, GatewayThread]) -> None:
    """After deliveries, ``fdpush_notifications_total`` by outcome equals the end states in the
    database (the service is the only sender); one event to three devices (one of them rejected)
    adds 2 delivered, 1 rejected and one batch of 3 to ``fdpush_gateway_batch_size``; the
    gateway's circuit is closed (0) and the outbox empty."""
    gateway = gw["main"]
    wait_for(lambda: quiet(rig.service), timeout=15, interval=0.1, what="a quiet service")
    before = metrics(rig.service)
    user = new_user()
    phones = [AppDevice(user, gateway) for _ in range(3)]
    for phone in phones:
        rig.register(phone)
    gateway.gateway.reject(phones[2].pushkey)

    answer = rig.emit(user, ACTIVATE, {"metrics": True})
    counts = rig.settled(answer["event_id"])
    assert counts == {"pending": 0, "delivered": 2, "rejected": 1, "failed": 0}
    wait_for(lambda: outcomes_agree_with_the_database(rig.service), timeout=10, what="counted")
    after = metrics(rig.service)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("fdpush_notifications_total", outcome="delivered") == 2
    assert delta("fdpush_notifications_total", outcome="rejected") == 1
    assert delta("fdpush_notifications_total", outcome="failed") == 0
    assert delta("fdpush_gateway_batch_size_count") == 1
    assert delta("fdpush_gateway_batch_size_sum") == 3
    assert delta("fdpush_gateway_batch_size_bucket", le="2.0") == 0
    assert delta("fdpush_gateway_batch_size_bucket", le="5.0") == 1
    label = gateway_label(gateway)
    assert delta("fdpush_gateway_responses_total", gateway=label, status="200") == 1
    assert delta("fdpush_gateway_request_duration_seconds_count", gateway=label) == 1
    assert value(after, "fdpush_gateway_circuit_open", gateway=label) == 0
    wait_for(
        lambda: value(metrics(rig.service), "fdpush_outbox_pending") == 0,
        timeout=10,
        what="an empty outbox in the metrics",
    )


def test_an_idle_worker_claims_once_per_lone_event(rig: Rig, gw: dict[str, GatewayThread]) -> None:
    """Events one at a time, each delivered before the next: the worker claims once for each
    (``fdpush_delivery_claims_total{found="rows"}``) and hardly ever finds nothing. It used to
    claim three times per lone event: again at once after a claim that had taken every due
    dispatch, again after each send, and again when PostgreSQL's NOTIFY from its own process
    arrived after it had been woken directly."""
    gateway = gw["main"]
    wait_for(lambda: quiet(rig.service), timeout=15, interval=0.1, what="a quiet service")
    user = new_user()
    phone = AppDevice(user, gateway)
    rig.register(phone)
    before = metrics(rig.service)
    lone = 10
    for n in range(lone):
        answer = rig.emit(user, ACTIVATE, {"lone": n})
        rig.delivered(answer["event_id"], 1)
    wait_for(lambda: outcomes_agree_with_the_database(rig.service), timeout=10, what="counted")
    after = metrics(rig.service)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("fdpush_delivery_claims_total", found="rows") == lone
    # The idle wait's 5 s poll may claim in between; three claims per event made 20 or more.
    assert delta("fdpush_delivery_claims_total", found="nothing") <= 3


def test_metrics_show_a_waiting_outbox_and_an_open_circuit_until_the_gateway_recovers(
    rig: Rig, gw: dict[str, GatewayThread]
) -> None:
    """While a gateway answers 503: ``fdpush_outbox_pending`` counts the waiting notification,
    ``fdpush_outbox_oldest_pending_age_seconds`` grows, ``fdpush_gateway_circuit_open`` is 1
    for that gateway only, ``fdpush_gateway_responses_total`` counts the 503s. Once it
    recovers: delivered, circuit 0, outbox 0."""
    sick, healthy = gw["sick"], gw["main"]
    sick_label, healthy_label = gateway_label(sick), gateway_label(healthy)
    user = new_user()
    waiting, flowing = AppDevice(user, sick), AppDevice(user, healthy)
    rig.register(waiting)
    rig.register(flowing)
    wait_for(lambda: quiet(rig.service), timeout=15, interval=0.1, what="a quiet service")
    sick.trouble(status=503)

    answer = rig.emit(user, ACTIVATE, {"while": "sick"})
    wait_for(lambda: len(flowing.inbox()) == 1, timeout=10, what="the healthy gateway")

    def in_trouble() -> Samples | None:
        samples = metrics(rig.service)
        ok = (
            value(samples, "fdpush_outbox_pending") >= 1
            and value(samples, "fdpush_outbox_oldest_pending_age_seconds") > 0
            and value(samples, "fdpush_gateway_circuit_open", gateway=sick_label) == 1
        )
        return samples if ok else None

    samples = wait_for(in_trouble, timeout=15, interval=0.2, what="the metrics show the trouble")
    assert value(samples, "fdpush_gateway_circuit_open", gateway=healthy_label) == 0
    assert value(samples, "fdpush_gateway_responses_total", gateway=sick_label, status="503") >= 1
    assert rig.status(answer["event_id"])["counts"]["pending"] == 1

    sick.trouble(status=None)
    rig.settled(answer["event_id"], timeout=40)
    assert rig.status(answer["event_id"])["counts"]["delivered"] == 2
    assert len(waiting.inbox()) == 1

    def recovered() -> bool:
        samples = metrics(rig.service)
        return (
            value(samples, "fdpush_gateway_circuit_open", gateway=sick_label) == 0
            and value(samples, "fdpush_outbox_pending") == 0
            and value(samples, "fdpush_outbox_oldest_pending_age_seconds") == 0
        )

    wait_for(recovered, timeout=10, interval=0.2, what="the metrics show the recovery")
    assert outcomes_agree_with_the_database(rig.service)


# --- fdpush failed --------------------------------------------------------------------------------


def test_fdpush_failed_lists_refused_notifications_newest_first_with_a_limit(
    rig: Rig, gw: dict[str, GatewayThread]
) -> None:
    """Before anything failed: ``no failed deliveries``. A gateway that refuses every
    notification as too large (400 ``Individual notification too large``) fails each at once
    with that reason: ``fdpush failed`` lists them newest first (device by reference, gateway
    host:port, the reason), ``--limit 2`` the newest two; the failed metric agrees.

    The only test of this module that makes notifications fail."""
    assert rig.service.query("SELECT count(*) FROM notifications WHERE status = 'failed'") == [(0,)]
    empty = run_cli(rig.service, "failed")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip() == "no failed deliveries"

    tiny = gw["tiny"]
    tiny.trouble(max_notification_size_kb=1)  # a sealed notification is about 2 KB of JSON
    phone = AppDevice(new_user(), tiny)
    rig.register(phone)
    event_ids = []
    for n in range(3):  # one at a time, so that "newest first" is well defined
        answer = rig.emit(phone.user, ACTIVATE, {"n": n})
        assert rig.settled(answer["event_id"]) == {
            "pending": 0,
            "delivered": 0,
            "rejected": 0,
            "failed": 1,
        }
        event_ids.append(answer["event_id"])
    assert phone.inbox() == []
    [(_, _, status, attempts, error)] = rig.notification_rows(event_ids[0])
    assert (status, attempts, error) == ("failed", 0, "HTTP 400: Individual notification too large")

    listed = run_cli(rig.service, "failed")
    assert listed.returncode == 0, listed.stderr
    header, *lines = listed.stdout.splitlines()
    assert header.split()[:3] == ["when", "(UTC)", "event"]
    assert [line.split()[2] for line in lines] == event_ids[::-1]
    for line in lines:
        assert gateway_label(tiny) in line
        assert line.endswith("HTTP 400: Individual notification too large")
        assert line.split()[3].startswith("pk:")
    assert phone.pushkey not in listed.stdout
    assert phone.user not in listed.stdout

    limited = run_cli(rig.service, "failed", "--limit", "2")
    assert limited.returncode == 0, limited.stderr
    assert [line.split()[2] for line in limited.stdout.splitlines()[1:]] == event_ids[:0:-1]

    wait_for(lambda: outcomes_agree_with_the_database(rig.service), timeout=10, what="counted")
    assert value(metrics(rig.service), "fdpush_notifications_total", outcome="failed") == 3
