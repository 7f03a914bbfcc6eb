"""Pruning, on both databases: payloads are forgotten and old events deleted a chunk at a time,
never what is still needed.

Forgetting every unneeded payload in one statement rewrote 129,500 event rows in a 2.8 s
transaction after a backlog of 200,000 notifications; now each chunk of ``PRUNE_CHUNK`` is a
transaction of its own.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from fdpush.storage import outbox
from fdpush.storage.database import Database, lock_id
from storage.rows import event, notification

SENT = outbox.PRUNE_CHUNK + 30  # delivered: payload no longer needed
PENDING = 20  # still to be sent: payload kept


async def _fill(db: Database, pending: int = PENDING) -> None:
    """Migrate, then old events: SENT delivered (payload no longer needed), ``pending`` with a
    notification still to send."""
    await db.migrate()
    events = [event(f"s{n:05d}", created_at=100) for n in range(SENT)]
    events += [event(f"p{n:05d}", created_at=100) for n in range(pending)]
    notes = [notification(f"ns{n}", f"s{n:05d}") for n in range(SENT)]
    notes += [notification(f"np{n}", f"p{n:05d}") for n in range(pending)]
    await outbox.queue(db, events, notes, notify_channel=None)
    await outbox.settle(db, [(f"ns{n}", "delivered", None) for n in range(SENT)], now_ms=500)


async def _forget(url: str) -> tuple[list[int], int, int]:
    db = Database(url)
    try:
        await _fill(db)
        chunks: list[int] = []
        await outbox.forget_payloads(
            db, history_before_ms=0, sent_before_ms=1000, on_chunk=chunks.append
        )
        async with db.read() as conn:
            sealed = (
                await conn.execute(text("SELECT count(*) FROM events WHERE payload IS NOT NULL"))
            ).scalar_one()
            sealed_pending = (
                await conn.execute(
                    text("SELECT count(*) FROM events WHERE payload IS NOT NULL AND id LIKE 'p%'")
                )
            ).scalar_one()
        return chunks, sealed, sealed_pending
    finally:
        await db.close()


def test_payloads_are_forgotten_a_chunk_at_a_time_and_never_while_pending(
    database_url: str,
) -> None:
    chunks, sealed, sealed_pending = asyncio.run(_forget(database_url))
    assert chunks == [outbox.PRUNE_CHUNK, 30]
    assert sealed == sealed_pending == PENDING


async def _delete(url: str) -> tuple[list[int], int, list[str], int]:
    db = Database(url)
    try:
        await _fill(db)
        await outbox.queue(db, [event("recent", created_at=5000)], [], notify_channel=None)
        chunks: list[int] = []
        deleted = await outbox.prune(
            db, history_before_ms=1000, outbox_before_ms=1000, on_chunk=chunks.append
        )
        async with db.read() as conn:
            left = await conn.execute(text("SELECT id FROM events ORDER BY id"))
            kept = [r[0] for r in left]
            notes_left = (
                await conn.execute(text("SELECT count(*) FROM notifications"))
            ).scalar_one()
        return chunks, deleted, kept, notes_left
    finally:
        await db.close()


def test_old_finished_events_are_deleted_a_chunk_at_a_time_with_their_notifications(
    database_url: str,
) -> None:
    chunks, deleted, kept, notes_left = asyncio.run(_delete(database_url))
    assert chunks == [outbox.PRUNE_CHUNK, 30]
    assert deleted == SENT
    # Old events with a pending notification stay, and so does a recent one.
    assert kept == [*(f"p{n:05d}" for n in range(PENDING)), "recent"]
    assert notes_left == PENDING


async def _prune_while_another_prunes(url: str) -> tuple[int, int, int, int, list[int]]:
    db = Database(url)
    try:
        await _fill(db, pending=0)
        async with db.engine.connect() as other, other.begin():
            # Another worker process in the middle of a chunk: it holds the pruning's lock.
            await other.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id(outbox.PRUNE_LOCK)}
            )
            async with asyncio.timeout(5):  # skipped, never waited for
                forgotten = await outbox.forget_payloads(
                    db, history_before_ms=0, sent_before_ms=1000
                )
                deleted = await outbox.prune(db, history_before_ms=1000, outbox_before_ms=1000)
            async with db.read() as conn:
                untouched = (
                    await conn.execute(
                        text("SELECT count(*) FROM events WHERE payload IS NOT NULL")
                    )
                ).scalar_one()
        # Its turn over, the next pass does the work.
        chunks: list[int] = []
        forgotten_later = await outbox.forget_payloads(db, history_before_ms=0, sent_before_ms=1000)
        await outbox.prune(
            db, history_before_ms=1000, outbox_before_ms=1000, on_chunk=chunks.append
        )
        return forgotten, deleted, untouched, forgotten_later, chunks
    finally:
        await db.close()


def test_one_process_prunes_at_a_time_the_others_skip_their_pass(
    database_url: str, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("several processes on one database: PostgreSQL (SQLite has one writer)")
    forgotten, deleted, untouched, forgotten_later, chunks = asyncio.run(
        _prune_while_another_prunes(database_url)
    )
    assert (forgotten, deleted, untouched) == (0, 0, SENT)
    assert forgotten_later == SENT
    assert chunks == [outbox.PRUNE_CHUNK, 30]
