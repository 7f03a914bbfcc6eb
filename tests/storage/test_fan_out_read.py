"""The fan-out's read: the pushers of the users an event batch names, and each device's explicit
choice for each of the batch's channels, paired correctly however many channels it asks about."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert

from fdpush.storage import outbox
from fdpush.storage.database import Database
from fdpush.storage.schema import channel_states, pushers

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def _pusher(user_id: str, pushkey: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "app_id": "de.gematik.erezept",
        "pushkey": pushkey,
        "kind": "http",
        "app_display_name": "E-Rezept",
        "device_display_name": "Phone",
        "lang": "de",
        "data": '{"url": "https://gw.example/_matrix/push/v1/notify"}',
        "pushkey_ts": 1,
        "key_identifier": None,
        "created_at": NOW,
        "updated_at": NOW,
    }


async def _read(url: str) -> tuple[list[tuple[str, str]], dict[tuple[str, str, str], str]]:
    db = Database(url, by_key=True)
    try:
        await db.migrate()
        async with db.write() as conn:
            await conn.execute(
                insert(pushers),
                [_pusher("alice", "a1"), _pusher("alice", "a2"), _pusher("bob", "b1")],
            )
            # Alice's first device chose on three channels (one of them not asked about), her
            # second on none; Bob's the opposite of hers.
            choices = [
                ("alice", "a1", "erp.task.activate", "disabled"),
                ("alice", "a1", "erp.communication.new", "enabled"),
                ("alice", "a1", "erp.task.close", "enabled"),
                ("bob", "b1", "erp.task.activate", "enabled"),
                ("bob", "b1", "erp.communication.new", "not_set"),
            ]
            await conn.execute(
                insert(channel_states),
                [
                    {"user_id": u, "pushkey": p, "channel_id": c, "status": s, "updated_at": NOW}
                    for u, p, c, s in choices
                ],
            )
        found, states = await outbox.fan_out_read(
            db, ["alice", "bob", "carol"], ["erp.task.activate", "erp.communication.new"]
        )
        return [(r.user_id, r.pushkey) for r in found], states
    finally:
        await db.close()


def test_each_devices_choices_come_paired_with_their_channels(database_url: str) -> None:
    found, states = asyncio.run(_read(database_url))
    assert found == [("alice", "a1"), ("alice", "a2"), ("bob", "b1")]
    assert states == {
        ("alice", "a1", "erp.task.activate"): "disabled",
        ("alice", "a1", "erp.communication.new"): "enabled",
        ("bob", "b1", "erp.task.activate"): "enabled",
        ("bob", "b1", "erp.communication.new"): "not_set",
    }
