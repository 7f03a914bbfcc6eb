"""Micro-benchmark of the outbox's two hottest writes on PostgreSQL, from the service's side.

What it measures
    On a fresh database: ``--calls`` calls of :func:`fdpush.storage.outbox.queue` (100 events,
    one notification each, sealed-size payloads, the ``NOTIFY`` included), then as many calls
    of :func:`fdpush.storage.outbox.settle` ending each batch alike (all delivered) and as many
    ending each batch three ways (delivered, rejected, failed). For each: the service's CPU
    (this process's ``process_time``: building the parameters, asyncpg encoding them, the
    event loop) and the wall time per call, for the best of ``--rounds`` rounds. The database's
    own time is in ``bench_delivery.py``'s statement table.

    Compare code versions by running it with each on ``PYTHONPATH``, alternately.

Usage
    .venv/bin/python bench/bench_queue.py                     # 5 rounds of 200 calls
    .venv/bin/python bench/bench_queue.py --calls 500 --rounds 3

Exit status: 0 done and every notification settled as asked, 1 anything wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from sqlalchemy import text

from bench_api import postgres_database, text_table
from fdpush.storage import outbox
from fdpush.storage.database import Database

BATCH = 100
GATEWAY = "https://gateway.example:8443/push/v1/"
ENDINGS = [("delivered", None), ("rejected", "rejected"), ("failed", "refused")]


def _rows(tag: str, now_ms: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    events, notes = [], []
    for n in range(BATCH):
        event_id = f"{now_ms:012x}{tag}{n:04x}".ljust(32, "e")
        events.append(
            {
                "id": event_id,
                "user_id": os.urandom(32).hex(),
                "channel": "erp.task.activate",
                "prio": "high",
                "identifier": event_id,
                "created_at": now_ms,
                "payload": os.urandom(150),
                "history": True,
            }
        )
        notes.append(
            {
                "id": f"{now_ms:012x}{tag}{n:04x}".ljust(32, "n"),
                "event_id": event_id,
                "pusher_id": n,
                "gateway": GATEWAY,
                "encrypted": True,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now_ms,
                "created_at": now_ms,
            }
        )
    return events, notes


async def measure(url: str, calls: int, rounds: int) -> tuple[dict[str, tuple[float, float]], int]:
    db = Database(url, by_key=True)  # the service's settings: planned as it plans them
    try:
        await db.migrate()
        best: dict[str, tuple[float, float]] = {}

        async def timed(name: str, work: list[Any]) -> None:
            started_cpu, started = time.process_time(), time.perf_counter()
            for call in work:
                await call()
            cpu = (time.process_time() - started_cpu) / len(work) * 1e6
            wall = (time.perf_counter() - started) / len(work) * 1e6
            if name not in best or cpu < best[name][0]:
                best[name] = (cpu, wall)

        for r in range(rounds + 1):  # the first round warms the connections: not counted
            now_ms = int(time.time() * 1000)
            batches = [_rows(f"{r:04x}{c:06x}", now_ms) for c in range(2 * calls)]
            queue_calls = [
                (lambda b=b: outbox.queue(db, b[0], b[1], notify_channel="fdpush_bench"))
                for b in batches
            ]
            alike = [
                (
                    lambda b=b: outbox.settle(
                        db, [(n["id"], "delivered", None) for n in b[1]], now_ms=1
                    )
                )
                for b in batches[:calls]
            ]
            mixed = [
                (
                    lambda b=b: outbox.settle(
                        db,
                        [(n["id"], *ENDINGS[i % 3]) for i, n in enumerate(b[1])],
                        now_ms=1,
                    )
                )
                for b in batches[calls:]
            ]
            name = (lambda label: label) if r else (lambda label: "warm-up " + label)
            await timed(name("queue"), queue_calls)
            await timed(name("settle, all alike"), alike)
            await timed(name("settle, three endings"), mixed)
        async with db.read() as conn:
            pending = (
                await conn.execute(
                    text("SELECT count(*) FROM notifications WHERE status = 'pending'")
                )
            ).scalar_one()
        return {k: v for k, v in best.items() if not k.startswith("warm-up")}, pending
    finally:
        await db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per round (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--postgres-locale",
        metavar="LOCALE",
        help="create the database with this locale, not the server's default: a libc locale "
        "the server has (de_DE.UTF-8) or icu: and an ICU locale (icu:de-DE)",
    )
    args = parser.parse_args()
    with postgres_database(args.postgres_url, args.postgres_locale) as url:
        figures, pending = asyncio.run(measure(url, args.calls, args.rounds))
    print(
        f"outbox writes on PostgreSQL, {BATCH} notifications per call, best of {args.rounds} "
        f"rounds of {args.calls} calls\n"
    )
    rows = [(name, f"{cpu:,.0f}", f"{wall:,.0f}") for name, (cpu, wall) in figures.items()]
    print(text_table(("call", "service CPU µs", "wall µs"), rows, left_columns=1))
    if pending:
        print(f"\nWRONG: {pending} notifications still pending")
        return 1
    print("\nOK: every notification queued and settled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
