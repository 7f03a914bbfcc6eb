"""Row locks of the outbox on PostgreSQL: renewing leases never waits for a batch being settled.

A worker renews the leases of all its claimed dispatches in one statement while it settles one
batch (and deletes its dispatch) in another. If renewal waited for locked rows, the two could
lock in different orders and deadlock; PostgreSQL would abort one and the batch the gateway had
taken would be sent again. Renewal skips dispatches locked at that moment instead.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from fdpush.storage import outbox
from fdpush.storage.database import Database
from storage.rows import event, notification

OWNER = "worker-1"


@pytest.fixture
def database_url(database_url: str, backend: str) -> str:
    """The storage tests' fresh database, on PostgreSQL only."""
    if backend != "postgresql":
        pytest.skip("row locks between connections: PostgreSQL (SQLite has one writer)")
    return database_url


async def _fill(db: Database, count: int) -> list[str]:
    await db.migrate()
    events = [event(f"e{n:031d}") for n in range(count)]
    notes = [notification(f"n{n:031d}", f"e{n:031d}") for n in range(count)]
    await outbox.queue(db, events, notes, notify_channel=None)
    claimed = (
        await outbox.claim_with_context(db, owner=OWNER, now_ms=10, lease_ms=1000, limit=count)
    ).rows
    return sorted(r.id for r in claimed)


async def _renew_while_a_batch_is_locked(url: str) -> tuple[float, dict[int, int], int]:
    db = Database(url)
    try:
        await _fill(db, 300)
        async with db.read() as conn:
            held = [r[0] for r in await conn.execute(text("SELECT id FROM dispatches ORDER BY id"))]
        locked = held[1]
        async with db.engine.connect() as settling, settling.begin():
            # A batch being settled: its dispatch locked until this transaction ends.
            await settling.execute(
                text("SELECT id FROM dispatches WHERE id = :id FOR UPDATE"), {"id": locked}
            )
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(5):
                async with db.write() as conn:
                    await outbox.renew(conn, owner=OWNER, dispatch_ids=held, until_ms=99_000)
            took = asyncio.get_running_loop().time() - started
        async with db.read() as conn:
            rows = (await conn.execute(text("SELECT id, lease_expires_at FROM dispatches"))).all()
        return took, {r[0]: int(r[1]) for r in rows}, locked
    finally:
        await db.close()


def test_renewal_skips_dispatches_locked_by_a_settle_instead_of_waiting(database_url: str) -> None:
    took, leases, locked = asyncio.run(_renew_while_a_batch_is_locked(database_url))
    assert took < 2.0  # it did not wait for the other transaction
    assert len(leases) == 3  # 300 notifications of one gateway: three dispatches of 100
    assert leases[locked] == 1010  # skipped: still the claim's lease
    assert all(until == 99_000 for d, until in leases.items() if d != locked)  # renewed
