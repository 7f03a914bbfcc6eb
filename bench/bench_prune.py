"""Benchmark of pruning: what forgetting old events and notifications costs PostgreSQL.

What it measures
    A fresh database holds ``--events`` finished events older than the retention, each with
    ``--devices`` delivered notifications (made with ``generate_series``, not through the
    service), ``--sent`` recent events whose one notification was delivered (their payloads
    are no longer needed: forgotten, the rows kept), and ``--keep`` recent events with a
    notification still pending (payload and rows kept). Then the worker's pruning runs:
    :func:`fdpush.storage.outbox.forget_payloads` (chunks of 5,000 payloads), then
    :func:`fdpush.storage.outbox.prune` (chunks of 5,000 events) until nothing is left, each
    chunk its own transaction. Figures: payloads forgotten, events pruned, chunks, total time, the
    CPU this process spent (the worker's part: building, sending and reading the statements),
    events per second, the longest chunk of each kind (how long any lock is held), the tables'
    dead tuples right after and the table size before and after a plain ``VACUUM``. The recent
    rows are checked: the sent ones without payload, the pending ones untouched.

Usage
    .venv/bin/python bench/bench_prune.py                      # 200,000 events x 1 device
    .venv/bin/python bench/bench_prune.py --events 50000 --devices 5 --sent 20000

Exit status: 0 done and the recent rows kept, 1 anything wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time

import psycopg

from bench_api import postgres_database, text_table
from fdpush.storage import outbox
from fdpush.storage.database import Database

DAY_MS = 86_400_000


def fill(url: str, events: int, devices: int, sent: int, keep: int, now_ms: int) -> None:
    old = now_ms - 30 * DAY_MS
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (id, user_id, channel, prio, identifier, created_at, payload,"
            " history) SELECT md5(g::text), 'u' || g, 'erp.task.activate', 'high', NULL,"
            " %s + g, NULL, false FROM generate_series(1, %s) g",
            (old, events),
        )
        conn.execute(
            "INSERT INTO notifications (id, event_id, gateway, encrypted, status, attempts,"
            " next_attempt_at, created_at, finished_at, pusher_id)"
            " SELECT left(md5(g::text), 28) || lpad(d::text, 4, '0'), md5(g::text),"
            " 'https://gw.example/push/v1/', true,"
            " 'delivered', 1, %s + g, %s + g, %s + g, NULL"
            " FROM generate_series(1, %s) g, generate_series(1, %s) d",
            (old, old, old, events, devices),
        )
        # Recent events with a sealed-size payload: sent (delivered) or still pending.
        for prefix, count, status in (("sent", sent, "delivered"), ("keep", keep, "pending")):
            conn.execute(
                "INSERT INTO events (id, user_id, channel, prio, identifier, created_at,"
                " payload, history) SELECT %s || g, 'u' || g, 'erp.task.activate', 'high',"
                " NULL, %s, decode(repeat('ab', 150), 'hex'), false"
                " FROM generate_series(1, %s) g",
                (prefix, now_ms - 60_000, count),
            )
            conn.execute(
                "INSERT INTO notifications (id, event_id, gateway, encrypted, status, attempts,"
                " next_attempt_at, created_at, pusher_id) SELECT %s || g || 'n', %s || g,"
                " 'https://gw.example/push/v1/', true, %s, 1, %s, %s, NULL"
                " FROM generate_series(1, %s) g",
                (prefix, prefix, status, now_ms, now_ms - 60_000, count),
            )
        conn.execute("ANALYZE")


def table_stats(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        rows = conn.execute(
            "SELECT relname, n_dead_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables"
            " WHERE relname IN ('events', 'notifications')"
        ).fetchall()
    stats: dict[str, int] = {}
    for name, dead, size in rows:
        stats[f"{name}_dead"] = int(dead)
        stats[f"{name}_bytes"] = int(size)
    return stats


async def prune_all(
    url: str, now_ms: int
) -> tuple[int, int, float, float, float, float, int, float]:
    """Prune as the worker does until nothing is left: events removed, payloads forgotten, the
    forgetting's seconds and its longest chunk's, seconds in all, the longest delete chunk's
    seconds, chunks (both kinds), and the CPU seconds this process (the worker's part) spent."""
    db = Database(url, by_key=True)  # the worker's settings: planned as it plans them
    try:
        started, started_cpu = time.perf_counter(), time.process_time()
        ends = [started]
        forgotten = await outbox.forget_payloads(
            db,
            history_before_ms=now_ms,
            sent_before_ms=now_ms,
            on_chunk=lambda _: ends.append(time.perf_counter()),
        )
        forgetting, forget_chunks = ends[-1] - started, len(ends) - 1
        longest_forget = max(b - a for a, b in itertools.pairwise(ends))
        ends = [time.perf_counter()]
        total = await outbox.prune(
            db,
            history_before_ms=now_ms,
            outbox_before_ms=now_ms - 7 * DAY_MS,
            on_chunk=lambda _: ends.append(time.perf_counter()),
        )
        longest = max(b - a for a, b in itertools.pairwise(ends))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - started_cpu
        chunks = forget_chunks + len(ends) - 1
        return total, forgotten, forgetting, longest_forget, seconds, longest, chunks, cpu
    finally:
        await db.close()


async def migrate(url: str) -> None:
    db = Database(url)
    try:
        await db.migrate()
    finally:
        await db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--sent", type=int, default=100_000)
    parser.add_argument("--keep", type=int, default=10_000)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    now_ms = int(time.time() * 1000)
    with postgres_database(args.postgres_url) as url:
        asyncio.run(migrate(url))
        print(f"filling {args.events:,} old events x {args.devices} notifications ...", flush=True)
        fill(url, args.events, args.devices, args.sent, args.keep, now_ms)
        before = table_stats(url)
        removed, forgotten, forgetting, longest_forget, seconds, longest, chunks, cpu = asyncio.run(
            prune_all(url, now_ms)
        )
        after = table_stats(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM events, notifications")
            [(kept,)] = conn.execute("SELECT count(*) FROM events").fetchall()
            [(left,)] = conn.execute("SELECT count(*) FROM notifications").fetchall()
            [(still_sealed,)] = conn.execute(
                "SELECT count(*) FROM events WHERE payload IS NOT NULL"
            ).fetchall()
            [(kept_sealed,)] = conn.execute(
                "SELECT count(*) FROM events WHERE payload IS NOT NULL AND id LIKE 'keep%'"
            ).fetchall()
        vacuumed = table_stats(url)
    header = (
        "events pruned",
        "notifications",
        "payloads forgotten",
        "forget s",
        "chunks",
        "seconds",
        "worker CPU s",
        "events/s",
        "longest forget chunk ms",
        "longest delete chunk ms",
        "dead tuples after",
        "MB before",
        "MB after VACUUM",
    )
    mb = 1024 * 1024
    row = (
        f"{removed:,}",
        f"{removed * args.devices:,}",
        f"{forgotten:,}",
        f"{forgetting:.2f}",
        str(chunks),
        f"{seconds:.2f}",
        f"{cpu:.2f}",
        f"{removed / seconds:,.0f}",
        f"{longest_forget * 1000:.0f}",
        f"{longest * 1000:.0f}",
        f"{after.get('events_dead', 0) + after.get('notifications_dead', 0):,}",
        f"{(before['events_bytes'] + before['notifications_bytes']) / mb:.1f}",
        f"{(vacuumed['events_bytes'] + vacuumed['notifications_bytes']) / mb:.1f}",
    )
    print(text_table(header, [row], left_columns=0))
    ok = (
        removed == args.events
        and forgotten == args.sent
        and kept == args.sent + args.keep
        and left == args.sent + args.keep
        and still_sealed == kept_sealed == args.keep
    )
    print(
        "OK: the old rows are gone, the sent payloads forgotten, the pending ones kept"
        if ok
        else "WRONG: see the counts"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
