"""PostgreSQL: a claim does not write the outbox's rows, and settling them stays on each row's
page (a HOT update, no index entries).

A claim leases dispatches, one row for up to a hundred notifications (revision 0008). Ending a
notification changes no column an index holds, and the outbox keeps room on its pages for the
new row versions (revision 0007): before 0008 every settle wrote a new entry into each of the
outbox's indexes.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text

from fdpush.storage import outbox
from fdpush.storage.database import Database
from storage.rows import event, notification

COUNT = 2000


@pytest.fixture
def database_url(database_url: str, backend: str) -> str:
    """The storage tests' fresh database, on PostgreSQL only."""
    if backend != "postgresql":
        pytest.skip("HOT updates and fill factors are PostgreSQL's")
    return database_url


async def _queue_claim_settle_and_count(url: str) -> tuple[int, int, int]:
    db = Database(url)
    try:
        await db.migrate()
        events = [event(f"{n:012x}{'e' * 20}", payload=b"x" * 200) for n in range(COUNT)]
        notes = [
            notification(
                f"{n:012x}{'n' * 20}",
                f"{n:012x}{'e' * 20}",
                pusher_id=n,
                gateway="https://gateway.example/push/v1/",
            )
            for n in range(COUNT)
        ]
        for start in range(0, COUNT, 100):  # as the event API queues them: 100 a statement
            chunk = slice(start, start + 100)
            await outbox.queue(db, events[chunk], notes[chunk], notify_channel=None)
        claimed = 0
        while True:
            rows = (
                await outbox.claim_with_context(
                    db, owner="w", now_ms=10, lease_ms=60_000, limit=100
                )
            ).rows
            if not rows:
                break
            claimed += len(rows)
            outcomes = [(r.id, "delivered", None) for r in rows]
            await outbox.settle(db, outcomes, now_ms=20, done=sorted({r.dispatch for r in rows}))
        # Table statistics reach the shared view when a session flushes them (at most every
        # second while it is busy, at once when asked); wait for all the claims' updates.
        deadline = time.monotonic() + 20
        while True:
            async with db.read() as conn:
                await conn.execute(text("SELECT pg_stat_force_next_flush()"))
            async with db.read() as conn:
                updated, hot = (
                    await conn.execute(
                        text(
                            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                            " WHERE relname = 'notifications'"
                        )
                    )
                ).one()
            if updated >= claimed or time.monotonic() > deadline:
                return claimed, int(updated), int(hot)
            await asyncio.sleep(0.2)
    finally:
        await db.close()


def test_claims_leave_the_rows_alone_and_settling_rewrites_them_on_their_pages(
    database_url: str,
) -> None:
    claimed, updated, hot = asyncio.run(_queue_claim_settle_and_count(database_url))
    assert claimed == COUNT and updated == COUNT  # one update per row: its settle
    assert hot >= 0.95 * COUNT, f"only {hot} of {COUNT} settles were HOT updates"
