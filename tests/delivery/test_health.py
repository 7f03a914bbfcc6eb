"""``/health/ready`` of ``fdpush serve`` tells the truth: the database, whether its delivery
worker makes progress, and how long the oldest notification has waited (docs/operations.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from conftest import Service, new_user
from delivery.e2e_helpers import ACTIVATE, AppDevice, Rig, delivery_env, free_gateway_port, wait_for
from fdpush.gateway import GatewayThread, TestPki


def ready(service: Service) -> tuple[int, dict[str, Any]]:
    response = httpx.get(service.base_url + "/health/ready", timeout=10.0)
    body: dict[str, Any] = response.json()
    return response.status_code, body


def test_ready_names_each_check_and_fails_on_an_old_outbox(
    start_service: Callable[..., Service], pki: TestPki
) -> None:
    """Healthy: 200 with database, worker and outbox checks. A notification that cannot go out
    (its gateway is down) for longer than the threshold: 503 naming the outbox; live stays 200."""
    down = free_gateway_port(pki)
    service = start_service(**delivery_env(pki, [down], FDPUSH_READY_MAX_PENDING_AGE_SECONDS="2"))
    status, body = ready(service)
    assert status == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "worker", "outbox"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["outbox"]["oldest_pending_age_seconds"] == 0
    assert body["checks"]["outbox"]["max_seconds"] == 2

    rig = Rig(service)
    device = AppDevice(new_user(), None, url=f"https://127.0.0.1:{down}/push/v1/")
    rig.register(device)
    rig.emit(device.user, ACTIVATE, {"id": "160.000.000.000.001.02"})

    def unready() -> dict[str, Any] | None:
        code, answer = ready(service)
        return answer if code == 503 else None

    body = wait_for(unready, timeout=20.0, interval=0.2, what="readiness fails on the outbox")
    assert body["status"] == "unavailable"
    assert body["checks"]["outbox"]["ok"] is False
    # Just past the limit the age shown (to a tenth of a second) may still read 2.0.
    assert body["checks"]["outbox"]["oldest_pending_age_seconds"] >= 2
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["worker"]["ok"] is True
    assert httpx.get(service.base_url + "/health/live").status_code == 200
    rig.close()


def test_ready_without_a_worker_checks_the_database_only(
    start_service: Callable[..., Service],
) -> None:
    service = start_service(FDPUSH_SERVE_WORKER="0")
    status, body = ready(service)
    assert status == 200, body
    assert body == {"status": "ok", "checks": {"database": {"ok": True}}}


def test_ready_reports_a_stalled_worker(
    backend: str, start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> None:
    """A worker stuck on a lock stops looking for work: 503 naming the worker, and ready again
    once it moves. (PostgreSQL: a test can hold a table lock the worker's claim waits for.)"""
    if backend != "postgresql":
        pytest.skip("SQLite's busy timeout ends a blocked claim; the worker then goes on")
    import psycopg

    service = start_service(
        **delivery_env(pki, [gateway], FDPUSH_READY_MAX_WORKER_SILENCE_SECONDS="5")
    )
    assert ready(service)[0] == 200
    with psycopg.connect(service.database_url) as conn:
        conn.execute("LOCK TABLE pushers IN ACCESS EXCLUSIVE MODE")  # the claim joins pushers

        def stalled() -> dict[str, Any] | None:
            code, answer = ready(service)
            return answer if code == 503 else None

        body = wait_for(stalled, timeout=30.0, interval=0.2, what="readiness names the worker")
        assert body["checks"]["worker"]["ok"] is False
        assert body["checks"]["worker"]["last_progress_seconds_ago"] >= 5
        assert body["checks"]["database"]["ok"] is True
        conn.rollback()
    wait_for(lambda: ready(service)[0] == 200, timeout=30.0, interval=0.2, what="ready again")
