"""Benchmark of a large backlog: memory with 200,000 notifications pending, and the drain.

What it measures
    The gateway is down (it answers 503 to every request) while the Fachdienst keeps sending:
    ``--devices`` devices get ``--events-per-device`` events each, so that many notifications
    wait in the outbox. Then the gateway recovers and the backlog drains. Figures:

    - peak resident memory (``VmHWM``) of the API process and of the worker processes, with the
      whole backlog pending and after the drain (the target: under 250 MB each);
    - how long the worker took to notice the recovery and how fast it drained (notifications/s);
    - every notification delivered exactly once in the end.

How
    Per backend, a throwaway PKI, the development gateway (``fdpush gateway``), ``fdpush serve``
    without its worker and ``fdpush worker`` (``--worker-processes``, default 1) on a fresh
    database; devices registered through the client API (setup, not timed), events through
    ``POST /internal/v1/events/batch``, 100 per request.

Usage
    .venv/bin/python bench/bench_backlog.py                       # PostgreSQL, 200,000 pending
    .venv/bin/python bench/bench_backlog.py --backend sqlite --devices 500 --events-per-device 40

Exit status: 0 all delivered exactly once, 1 anything lost or duplicated, 3 setup failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

from bench_api import Call, expect_empty_object, run_phase, text_table
from bench_delivery import (
    CHANNEL,
    INTERNAL_API_KEY,
    REQUEST_TIMEOUT_S,
    Database,
    Gateway,
    Options,
    Service,
    Workload,
    database_for,
    parse_options,
    peak_rss_mb,
    process_tree,
    tree_peak_rss_mb,
)
from fdpush.gateway import make_test_pki

POLL_S = 0.5  # how often the drain's progress is read


def parse(argv: list[str] | None) -> tuple[Options, int, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--events-per-device", type=int, default=100)
    parser.add_argument("--worker-processes", type=int, default=1)
    parser.add_argument("--json", dest="json_path", type=Path)
    args = parser.parse_args(argv)
    options = parse_options(
        [
            "--backend",
            args.backend,
            "--devices",
            str(args.devices),
            "--worker-processes",
            str(args.worker_processes),
            "--time-limit",
            "900",
            "--idle-events",  # no idle phase here (its default needs 50 users)
            "0",
        ]
    )
    return options, args.events_per_device, str(args.json_path or "")


async def emit(service: Service, workload: Workload, rounds: int) -> float:
    """``rounds`` events per user, 100 per request, 4 requests in flight; the seconds taken."""
    headers = {"Authorization": f"Bearer {INTERNAL_API_KEY}"}
    bodies = [
        {
            "events": [
                {"user_id": user, "channel": CHANNEL, "payload": {"round": r, "user": user}}
                for user in workload.users[start : start + 100]
            ]
        }
        for r in range(rounds)
        for start in range(0, len(workload.users), 100)
    ]
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    started = time.monotonic()

    async def sender() -> None:
        async with httpx.AsyncClient(
            base_url=service.base_url, timeout=REQUEST_TIMEOUT_S
        ) as client:
            while not queue.empty():
                body = queue.get_nowait()
                response = await client.post(
                    "/internal/v1/events/batch", headers=headers, json=body
                )
                if response.status_code != 202:
                    raise RuntimeError(f"events refused: {response.status_code} {response.text}")

    await asyncio.gather(*(sender() for _ in range(4)))
    return time.monotonic() - started


def worker_peak_mb(service: Service) -> float | None:
    """The worker's processes together (the supervisor and its delivery processes)."""
    if service.worker is None:
        return None
    return tree_peak_rss_mb([service.worker.pid])


def largest_worker_process_mb(service: Service) -> float | None:
    """The largest peak of one of the worker's processes."""
    if service.worker is None:
        return None
    peaks = [peak_rss_mb(pid) for pid in process_tree(service.worker.pid)]
    known = [p for p in peaks if p is not None]
    return max(known) if known else None


async def measure(
    options: Options, rounds: int, service: Service, gateway: Gateway, db: Database
) -> dict[str, Any]:
    workload = Workload(options)
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=service.base_url, timeout=REQUEST_TIMEOUT_S)
            )
            for _ in range(16)
        ]
        calls: list[Call] = workload.register(gateway.push_url)
        phase = await run_phase(clients, service, calls, expect_empty_object, time_limit=600)
        if phase.errors:
            raise RuntimeError(f"registration failed: {phase.error_samples}")
    print(f"  registered {len(workload.devices)} devices in {phase.seconds:.1f} s", flush=True)

    gateway.running.trouble(status=503, retry_after=1)
    expected = len(workload.devices) * rounds
    emit_seconds = await emit(service, workload, rounds)
    print(f"  {expected} notifications emitted in {emit_seconds:.1f} s", flush=True)
    pending_rss = {
        "api_peak_mb": tree_peak_rss_mb([service.pid]),
        "worker_peak_mb": worker_peak_mb(service),
        "largest_worker_process_mb": largest_worker_process_mb(service),
    }
    gateway.running.reset_trouble()
    recovered = time.monotonic()
    first_at: float | None = None
    delivered = 0
    while time.monotonic() - recovered < options.time_limit:
        delivered = db.delivered()
        if delivered and first_at is None:
            first_at = time.monotonic()
        if delivered >= expected:
            break
        await asyncio.sleep(POLL_S)
    drained = time.monotonic()
    arrived = Counter(r["id"] for r in gateway.records())
    if len(arrived) != expected or any(n > 1 for n in arrived.values()):
        # What the service and the worker said about it (warnings and errors only).
        worker_log = Path(service.log_path).with_name("worker.log")
        lines = service.log_problems(0)
        if worker_log.exists():
            keep = False
            for line in worker_log.read_text(errors="replace").splitlines():
                stamped = line[:4].isdigit()
                if stamped:
                    keep = " WARNING " in line or " ERROR " in line
                if keep:  # the line and its traceback
                    lines.append(line)
        for line in lines[:80]:
            print("  log:", line[:300])
    return {
        "backend": options.backends[0],
        "devices": len(workload.devices),
        "events_per_device": rounds,
        "pending": expected,
        "worker_processes": options.worker_processes,
        "emit_seconds": round(emit_seconds, 1),
        "api_peak_mb_pending": pending_rss["api_peak_mb"],
        "worker_peak_mb_pending": pending_rss["worker_peak_mb"],
        "largest_worker_process_mb_pending": pending_rss["largest_worker_process_mb"],
        "api_peak_mb": tree_peak_rss_mb([service.pid]),
        "worker_peak_mb": worker_peak_mb(service),
        "largest_worker_process_mb": largest_worker_process_mb(service),
        "first_delivery_after_recovery_s": None
        if first_at is None
        else round(first_at - recovered, 2),
        "drain_seconds": round(drained - recovered, 1),
        "drain_per_second": round(delivered / (drained - recovered)),
        "delivered": delivered,
        "lost": expected - len(arrived),
        "duplicated": sum(n - 1 for n in arrived.values()),
        "worker_pids": [] if service.worker is None else process_tree(service.worker.pid),
    }


def main(argv: list[str] | None = None) -> int:
    options, rounds, json_path = parse(argv)
    backend = options.backends[0]
    with (
        tempfile.TemporaryDirectory(prefix="fdpush-bench-backlog-") as tmp,
        database_for(backend, options, Path(tmp)) as database_url,
    ):
        workdir = Path(tmp)
        pki = make_test_pki(workdir / "pki")
        # Room for every notification of a device, repeats included: the check counts them all.
        gateway = Gateway(workdir / "gateway", pki, options.devices * rounds, per_device=2 * rounds)
        try:
            service = Service(options, database_url, workdir, gateway.running.url, pki)
        except Exception as exc:
            gateway.stop()
            print(f"setup failed: {exc}", file=sys.stderr)
            return 3
        try:
            figures = asyncio.run(
                measure(options, rounds, service, gateway, Database(database_url))
            )
        finally:
            service.stop()
            gateway.stop()
    header = (
        "backend",
        "pending",
        "worker procs",
        "API MB (pending)",
        "worker MB (pending): all / largest",
        "API MB (end)",
        "worker MB (end): all / largest",
        "1st after recovery s",
        "drain s",
        "drain notif/s",
        "lost",
        "dup",
    )
    row = (
        figures["backend"],
        f"{figures['pending']:,}",
        str(figures["worker_processes"]),
        f"{figures['api_peak_mb_pending']:.0f}",
        f"{figures['worker_peak_mb_pending'] or 0:.0f} / "
        f"{figures['largest_worker_process_mb_pending'] or 0:.0f}",
        f"{figures['api_peak_mb']:.0f}",
        f"{figures['worker_peak_mb'] or 0:.0f} / {figures['largest_worker_process_mb'] or 0:.0f}",
        str(figures["first_delivery_after_recovery_s"]),
        str(figures["drain_seconds"]),
        f"{figures['drain_per_second']:,}",
        str(figures["lost"]),
        str(figures["duplicated"]),
    )
    print(text_table(header, [row], left_columns=1))
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2))
    return 0 if figures["lost"] == 0 and figures["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
