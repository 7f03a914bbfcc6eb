"""Several processes on one PostgreSQL: ``fdpush worker --processes N`` beside API processes.

PostgreSQL is what scales fdpush out: any number of ``serve`` and ``worker`` processes share
one database, claim with ``FOR UPDATE SKIP LOCKED`` and never lose a notification, even when a
worker dies by SIGKILL in the middle of a run.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Service, drop_postgres_database
from delivery.e2e_helpers import (
    ACTIVATE,
    AppDevice,
    Rig,
    WorkerProcess,
    delivery_env,
    restart,
    start_gateway,
    wait_for,
)
from fdpush.gateway import GatewayThread, TestPki

LEASE_SECONDS = "2"


@pytest.fixture
def postgres_only(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("several processes share one PostgreSQL; SQLite is one process's database")


@pytest.fixture
def gateway(pki: TestPki) -> Iterator[GatewayThread]:
    running = start_gateway(pki)
    yield running
    running.stop()


def wait_ready(worker: WorkerProcess) -> httpx.Response:
    """The supervisor's 200 to ``/health/ready``, once it comes."""
    return wait_for(
        lambda: (r := httpx.get(worker.url("/health/ready"))).status_code == 200 and r,
        timeout=15,
        what="the supervisor ready",
    )


def test_the_worker_supervisor_serves_health_and_one_scrape_for_all_its_processes(
    postgres_only: None,
    start_service: Callable[..., Service],
    pki: TestPki,
    gateway: GatewayThread,
    tmp_path: Path,
) -> None:
    """``worker --processes 2``: ready with both alive; ``/metrics`` counts what both sent
    and shows each process's progress; a process killed by SIGKILL is restarted."""
    service = start_service(
        **delivery_env(pki, [gateway], FDPUSH_SERVE_WORKER="0"),
        FDPUSH_DELIVERY_LEASE_SECONDS=LEASE_SECONDS,
    )
    rig = Rig(service)
    worker = WorkerProcess(service, tmp_path / "worker", processes=2)
    try:
        assert httpx.get(worker.url("/health/live")).json() == {"status": "ok"}
        assert wait_ready(worker).json() == {"status": "ok", "processes": 2}
        devices = [AppDevice(f"u-{os.urandom(6).hex()}", gateway) for _ in range(40)]
        for device in devices:
            rig.register(device)
        results = rig.emit_many(
            [{"user_id": d.user, "channel": ACTIVATE, "payload": {"n": 1}} for d in devices]
        )
        for result in results:
            rig.delivered(result["event_id"], 1, timeout=30)

        def delivered_total() -> float:
            text = httpx.get(worker.url("/metrics")).text
            for line in text.splitlines():
                if line.startswith('fdpush_notifications_total{outcome="delivered"}'):
                    return float(line.split()[-1])
            return 0.0

        assert delivered_total() == 40.0
        metrics = httpx.get(worker.url("/metrics")).text
        progress = [
            line
            for line in metrics.splitlines()
            if line.startswith("fdpush_worker_last_progress_timestamp_seconds{")
        ]
        assert len(progress) == 2, progress  # one per live process, by pid

        first, second = worker.children()
        os.kill(first, signal.SIGKILL)
        wait_for(
            lambda: first not in worker.children() and len(worker.children()) == 2,
            timeout=30,
            what="the killed process replaced",
        )
        assert second in worker.children()
        wait_ready(worker)
        assert "exited with -9; restarting" in worker.logs()
    finally:
        worker.stop()
        rig.close()
    # SIGTERM: the supervisor stops its processes and exits cleanly.
    assert worker.process.returncode == 0, worker.logs()


def test_the_supervisor_is_not_ready_while_the_database_does_not_answer(
    postgres_only: None,
    start_service: Callable[..., Service],
    pki: TestPki,
    gateway: GatewayThread,
    tmp_path: Path,
) -> None:
    """The supervisor opens no connection of its own: its processes report when the database
    last answered them, and readiness says which one it has left waiting."""
    service = start_service(**delivery_env(pki, [gateway], FDPUSH_SERVE_WORKER="0"))
    worker = WorkerProcess(service, tmp_path / "worker", processes=1)
    try:
        wait_ready(worker)
        (pid,) = worker.children()
        drop_postgres_database(service.database_url)
        answer = wait_for(
            lambda: (r := httpx.get(worker.url("/health/ready"))).status_code == 503 and r,
            timeout=40,
            what="readiness to notice the database gone",
        )
        [problem] = answer.json()["problems"]
        assert problem.startswith(f"the database has not answered worker pid {pid} for ")
        assert httpx.get(worker.url("/health/live")).status_code == 200
    finally:
        worker.stop()


def test_three_workers_two_api_processes_and_a_sigkill_lose_nothing(
    postgres_only: None,
    start_service: Callable[..., Service],
    pki: TestPki,
    gateway: GatewayThread,
    tmp_path: Path,
) -> None:
    """Two API processes take 10,000 notifications (1,000 devices, ten events each) while
    three worker processes deliver them; one worker is killed with SIGKILL in the middle.
    Every notification arrives and ends ``delivered``; duplicates are only what the killed
    process had in flight (at most its concurrent batches)."""
    service = start_service(
        **delivery_env(pki, [gateway], FDPUSH_SERVE_WORKER="0"),
        FDPUSH_DELIVERY_LEASE_SECONDS=LEASE_SECONDS,
    )
    second_api = restart(service, tmp_path / "api-2")  # same database and master key
    # Slow answers, delivered first: the kill lands while batches are in flight.
    gateway.trouble(delay_ms=20, delay_point="after")
    rigs = [Rig(service), Rig(second_api)]
    worker = WorkerProcess(service, tmp_path / "workers", processes=3)
    try:
        devices = [AppDevice(f"u-{os.urandom(6).hex()}", gateway) for _ in range(1000)]
        for n, device in enumerate(devices):
            rigs[n % 2].register(device)

        def recorded() -> int:
            return int(gateway.gateway.stats()["notifications_recorded"])

        results = []
        for round_ in range(10):
            for start in range(0, len(devices), 100):
                rig = rigs[(start // 100) % 2]
                results += rig.emit_many(
                    [
                        {"user_id": d.user, "channel": ACTIVATE, "payload": {"r": round_}}
                        for d in devices[start : start + 100]
                    ]
                )
            if round_ == 2:
                # In the middle, whatever the machine's speed: 3,000 taken, 2,000 of them
                # delivered, 7,000 still to come when one worker dies.
                wait_for(lambda: recorded() >= 2_000, timeout=60, what="a fifth delivered")
                victim = worker.children()[0]
                os.kill(victim, signal.SIGKILL)
        assert sum(r["notifications"] for r in results) == 10_000

        def all_delivered() -> bool:
            [(done,)] = service.query(
                "SELECT count(*) FROM notifications WHERE status = 'delivered'"
            )
            return int(done) == 10_000

        wait_for(all_delivered, timeout=120, interval=0.2, what="all 10,000 delivered")
        arrived = Counter(r.item_id for r in gateway.gateway.notifications(limit=20_000))
        ids = {row[0] for row in service.query("SELECT id FROM notifications")}
        assert set(arrived) == ids and len(ids) == 10_000  # none lost
        duplicates = sum(n - 1 for n in arrived.values())
        # At most the killed process's in-flight batches: 4 concurrent batches of 100.
        assert duplicates <= 400, duplicates
        for device in devices[:50]:  # and what arrived opens to what was sent
            assert {p["r"] for p in device.payloads()} == set(range(10))
    finally:
        worker.stop()
        second_api.stop()
        for rig in rigs:
            rig.close()
