"""Dispatches, on both databases: what a claim, giving back and settling leave behind.

Every pending notification stays named by exactly one dispatch that will claim it: giving some
back moves them to a new dispatch, due later, and the one they came from keeps only the rest
(after a crash they could otherwise be sent through both); a dispatch goes once nothing it
claimed is left.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import text

from fdpush.storage import outbox
from fdpush.storage.database import Database
from storage.rows import GATEWAY, event, notification

OWNER = "worker-1"


async def _dispatches(db: Database) -> list[tuple[list[str], int]]:
    async with db.read() as conn:
        rows = await conn.execute(
            text("SELECT notification_ids, next_attempt_at FROM dispatches ORDER BY id")
        )
        return [
            (sorted(ids if isinstance(ids, list) else json.loads(ids)), int(due))
            for ids, due in rows
        ]


async def _give_back_one_then_settle(url: str) -> dict[str, Any]:
    db = Database(url)
    try:
        await db.migrate()
        notes = [notification(f"n{n}", "e1") for n in range(3)]
        await outbox.queue(db, [event("e1")], notes, notify_channel=None)
        queued = await _dispatches(db)
        claimed = (
            await outbox.claim_with_context(db, owner=OWNER, now_ms=10, lease_ms=1000, limit=100)
        ).rows
        dispatch = claimed[0].dispatch
        back = [r for r in claimed if r.id == "n0"]
        async with db.write() as conn:
            await outbox.release(
                conn,
                back,
                next_attempt_at=5000,
                error="gateway could not deliver",
                count_attempt=True,
                remaining={dispatch: {"n1", "n2"}},
            )
        after_release = await _dispatches(db)
        await outbox.settle(
            db, [("n1", "delivered", None), ("n2", "delivered", None)], now_ms=20, done=[dispatch]
        )
        after_settle = await _dispatches(db)
        again = (
            await outbox.claim_with_context(db, owner=OWNER, now_ms=6000, lease_ms=1000, limit=100)
        ).rows
        async with db.read() as conn:
            attempts = (
                await conn.execute(text("SELECT attempts FROM notifications WHERE id = 'n0'"))
            ).scalar_one()
        return {
            "queued": queued,
            "claimed": sorted(r.id for r in claimed),
            "after_release": after_release,
            "after_settle": after_settle,
            "again": [(r.id, r.attempts) for r in again],
            "attempts": attempts,
        }
    finally:
        await db.close()


def test_a_notification_given_back_moves_to_a_new_dispatch_and_the_old_one_keeps_the_rest(
    database_url: str,
) -> None:
    seen = asyncio.run(_give_back_one_then_settle(database_url))
    assert seen["queued"] == [(["n0", "n1", "n2"], 0)]  # one dispatch for the three
    assert seen["claimed"] == ["n0", "n1", "n2"]
    assert seen["after_release"] == [(["n1", "n2"], 0), (["n0"], 5000)]
    assert seen["after_settle"] == [(["n0"], 5000)]  # the settled dispatch is gone
    assert seen["again"] == [("n0", 1)]  # claimed once more when due, its attempt counted
    assert seen["attempts"] == 1


async def _settle_two_batches(url: str) -> dict[str, Any]:
    """Two claimed dispatches: one whose notifications all ended alike, one with three
    different endings."""
    db = Database(url)
    try:
        await db.migrate()
        first_notes = [notification(f"n{n}", "e1") for n in range(3)]
        await outbox.queue(db, [event("e1")], first_notes, notify_channel=None)
        first = (
            await outbox.claim_with_context(db, owner=OWNER, now_ms=10, lease_ms=1000, limit=100)
        ).rows
        await outbox.settle(
            db,
            [(r.id, "failed", "the gateway refused it") for r in first],
            now_ms=20,
            done=[first[0].dispatch],
        )
        second_notes = [notification(f"mn{n}", "e2") for n in range(3)]
        await outbox.queue(db, [event("e2")], second_notes, notify_channel=None)
        second = (
            await outbox.claim_with_context(db, owner=OWNER, now_ms=30, lease_ms=1000, limit=100)
        ).rows
        await outbox.settle(
            db,
            [
                ("mn0", "delivered", None),
                ("mn1", "rejected", "rejected"),
                ("mn2", "failed", "x" * 600),  # a reason is kept to 512 characters
            ],
            now_ms=40,
            done=[second[0].dispatch],
        )
        async with db.read() as conn:
            rows = await conn.execute(
                text("SELECT id, status, finished_at, last_error FROM notifications ORDER BY id")
            )
            ended = {r[0]: (r[1], r[2], r[3]) for r in rows}
        return {"ended": ended, "dispatches": await _dispatches(db)}
    finally:
        await db.close()


def test_a_batch_settles_each_notification_with_its_own_ending(database_url: str) -> None:
    seen = asyncio.run(_settle_two_batches(database_url))
    assert seen["ended"] == {
        "n0": ("failed", 20, "the gateway refused it"),
        "n1": ("failed", 20, "the gateway refused it"),
        "n2": ("failed", 20, "the gateway refused it"),
        "mn0": ("delivered", 40, None),
        "mn1": ("rejected", 40, "rejected"),
        "mn2": ("failed", 40, "x" * 512),
    }
    assert seen["dispatches"] == []


async def _queue_rows_of_two_moments(url: str) -> tuple[str, int]:
    db = Database(url)
    try:
        await db.migrate()
        late = [notification("n0", "e1"), notification("n1", "e1", next_attempt_at=5)]
        with pytest.raises(ValueError, match="differ in next_attempt_at") as refused:
            await outbox.queue(db, [event("e1")], late, notify_channel=None)
        async with db.read() as conn:
            stored = (await conn.execute(text("SELECT count(*) FROM notifications"))).scalar_one()
        return str(refused.value), stored
    finally:
        await db.close()


def test_rows_of_different_moments_are_not_queued_together(database_url: str) -> None:
    """One call's rows are stored with one time each column (PostgreSQL gets it once): rows
    that differ there are refused, not stored with another row's time."""
    message, stored = asyncio.run(_queue_rows_of_two_moments(database_url))
    assert "differ in next_attempt_at" in message
    assert stored == 0


OTHER_GATEWAY = "https://other.example/push/v1/"


async def _queue_alike_and_mixed(url: str) -> dict[str, Any]:
    """One call whose rows share channel, prio, gateway and kind (PostgreSQL gets each once),
    and one whose rows differ in each."""
    db = Database(url)
    try:
        await db.migrate()
        await outbox.queue(
            db,
            [event("a1"), event("a2")],
            [notification("an1", "a1"), notification("an2", "a2")],
            notify_channel=None,
        )
        await outbox.queue(
            db,
            [event("m1"), event("m2", channel="d", prio="low")],
            [
                notification("mn1", "m1"),
                notification("mn2", "m1", encrypted=False),
                notification("mn3", "m2", gateway=OTHER_GATEWAY),
            ],
            notify_channel=None,
        )
        async with db.read() as conn:
            events_ = await conn.execute(text("SELECT id, channel, prio FROM events ORDER BY id"))
            notes = await conn.execute(
                text("SELECT id, event_id, gateway, encrypted FROM notifications ORDER BY id")
            )
            groups = await conn.execute(text("SELECT gateway, notification_ids FROM dispatches"))
            return {
                "events": [tuple(r) for r in events_],
                "notifications": [(r[0], r[1], r[2], bool(r[3])) for r in notes],
                "dispatches": sorted(
                    (r[0], sorted(r[1] if isinstance(r[1], list) else json.loads(r[1])))
                    for r in groups
                ),
            }
    finally:
        await db.close()


def test_rows_alike_or_not_in_channel_prio_gateway_and_kind_are_stored_as_given(
    database_url: str,
) -> None:
    seen = asyncio.run(_queue_alike_and_mixed(database_url))
    assert seen["events"] == [
        ("a1", "c", "high"),
        ("a2", "c", "high"),
        ("m1", "c", "high"),
        ("m2", "d", "low"),
    ]
    assert seen["notifications"] == [
        ("an1", "a1", GATEWAY, True),
        ("an2", "a2", GATEWAY, True),
        ("mn1", "m1", GATEWAY, True),
        ("mn2", "m1", GATEWAY, False),
        ("mn3", "m2", OTHER_GATEWAY, True),
    ]
    # A dispatch per call, gateway and kind.
    assert seen["dispatches"] == [
        (GATEWAY, ["an1", "an2"]),
        (GATEWAY, ["mn1"]),
        (GATEWAY, ["mn2"]),
        (OTHER_GATEWAY, ["mn3"]),
    ]


async def _due_times(url: str) -> list[int | None]:
    """``next_due`` on an empty outbox, with two dispatches (due at 0 and at 5000), while the
    first is leased until 1010, and once that lease ran out."""
    db = Database(url)
    try:
        await db.migrate()
        seen = [await outbox.next_due(db, now_ms=10)]
        await outbox.queue(db, [event("e1")], [notification("n0", "e1")], notify_channel=None)
        late = [notification("n1", "e2", next_attempt_at=5000)]
        await outbox.queue(db, [event("e2")], late, notify_channel=None)
        seen.append(await outbox.next_due(db, now_ms=10))
        claimed = (
            await outbox.claim_with_context(db, owner=OWNER, now_ms=10, lease_ms=1000, limit=1)
        ).rows
        assert [r.id for r in claimed] == ["n0"]
        seen.append(await outbox.next_due(db, now_ms=20))
        seen.append(await outbox.next_due(db, now_ms=1010))
        return seen
    finally:
        await db.close()


def test_the_next_due_time_is_the_earliest_of_the_dispatches_no_worker_holds(
    database_url: str,
) -> None:
    """What an idle worker waits for: a leased dispatch does not count until its lease ran
    out (then a dead worker's claims come back at once)."""
    assert asyncio.run(_due_times(database_url)) == [None, 0, 5000, 0]


async def _claims_and_whether_full(url: str) -> list[tuple[list[str], bool]]:
    """Three dispatches due (a call each); claims that may take two dispatches at a time."""
    db = Database(url)
    try:
        await db.migrate()
        for n in range(3):
            notes = [notification(f"n{n}", f"e{n}")]
            await outbox.queue(db, [event(f"e{n}")], notes, notify_channel=None)
        seen = []
        for _ in range(3):
            leased = await outbox.claim_with_context(
                db, owner=OWNER, now_ms=10, lease_ms=1000, limit=2 * outbox.DISPATCH_SIZE
            )
            seen.append((sorted(r.id for r in leased.rows), leased.full))
        return seen
    finally:
        await db.close()


def test_a_claim_says_whether_it_took_as_many_dispatches_as_it_may(database_url: str) -> None:
    """A worker claims again at once only after a full claim: one that leased fewer
    dispatches than it may took every one due, and a second would find nothing."""
    assert asyncio.run(_claims_and_whether_full(database_url)) == [
        (["n0", "n1"], True),
        (["n2"], False),
        ([], False),
    ]
