"""The SQL of a master-key rotation: every sealed column, walked in chunks by primary key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fdpush.storage.schema import events, notifications, pusher_keys, pushers

__all__ = [
    "RECORDS",
    "PusherBlobs",
    "count_pushers",
    "count_records",
    "other_connections",
    "pushers_after",
    "records_after",
    "replace_pusher_blobs",
    "replace_records",
]

# The sealed records: kind (the sealing context's name) → table and column; the row id is
# what the blob is bound to.
RECORDS: dict[str, tuple[Table, str]] = {
    "event-payload": (events, "payload"),
    "notification": (notifications, "body"),  # rows written before revision 0003
}


@dataclass(frozen=True, slots=True)
class PusherBlobs:
    """A pusher's sealed pushkey and key generations, with what they are bound to."""

    id: int
    user_id: str
    app_id: str
    pushkey: str  # the index
    pushkey_sealed: bytes | None
    generations: list[tuple[str, bytes]]  # (period, material)


async def other_connections(conn: AsyncConnection) -> int:
    """PostgreSQL: how many other client sessions are connected to this database now (SQLite
    cannot tell: 0)."""
    if conn.dialect.name != "postgresql":
        return 0
    found = await conn.execute(
        text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    )
    return int(found.scalar_one())


async def count_pushers(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(pushers))).scalar_one())


async def pushers_after(conn: AsyncConnection, after: int, limit: int) -> list[PusherBlobs]:
    """Up to ``limit`` pushers with an id above ``after``, in id order, with their keys."""
    rows = (
        await conn.execute(
            select(
                pushers.c.id,
                pushers.c.user_id,
                pushers.c.app_id,
                pushers.c.pushkey,
                pushers.c.pushkey_sealed,
            )
            .where(pushers.c.id > after)
            .order_by(pushers.c.id)
            .limit(limit)
        )
    ).all()
    found = {
        int(r[0]): PusherBlobs(
            int(r[0]), r[1], r[2], r[3], None if r[4] is None else bytes(r[4]), []
        )
        for r in rows
    }
    if found:
        keys = await conn.execute(
            select(pusher_keys.c.pusher_id, pusher_keys.c.period, pusher_keys.c.material)
            .where(pusher_keys.c.pusher_id.in_(list(found)))
            .order_by(pusher_keys.c.pusher_id, pusher_keys.c.period)
        )
        for pusher_id, period, material in keys:
            found[int(pusher_id)].generations.append((period, bytes(material)))
    return list(found.values())


def _blob(value: object) -> bytes | None:
    return None if value is None else bytes(value)  # type: ignore[call-overload]


async def replace_pusher_blobs(
    conn: AsyncConnection,
    pushkeys: Sequence[tuple[int, bytes]],
    generations: Sequence[tuple[int, str, bytes]],
) -> None:
    """``(pusher id, sealed pushkey)`` and ``(pusher id, period, material)``, sealed anew."""
    if pushkeys:
        await conn.execute(
            update(pushers)
            .where(pushers.c.id == bindparam("b_id"))
            .values(pushkey_sealed=bindparam("b_blob")),
            [{"b_id": i, "b_blob": b} for i, b in pushkeys],
        )
    if generations:
        await conn.execute(
            update(pusher_keys)
            .where(
                pusher_keys.c.pusher_id == bindparam("b_id"),
                pusher_keys.c.period == bindparam("b_period"),
            )
            .values(material=bindparam("b_blob")),
            [{"b_id": i, "b_period": p, "b_blob": b} for i, p, b in generations],
        )


async def count_records(conn: AsyncConnection, kind: str) -> int:
    table, column = RECORDS[kind]
    query = select(func.count()).select_from(table).where(table.c[column].is_not(None))
    return int((await conn.execute(query)).scalar_one())


async def records_after(
    conn: AsyncConnection, kind: str, after: str, limit: int
) -> list[tuple[str, bytes]]:
    """Up to ``limit`` sealed records of ``kind`` with an id above ``after``: ``(id, blob)``."""
    table, column = RECORDS[kind]
    rows = await conn.execute(
        select(table.c.id, table.c[column])
        .where(table.c[column].is_not(None), table.c.id > after)
        .order_by(table.c.id)
        .limit(limit)
    )
    return [(str(r[0]), bytes(r[1])) for r in rows]


async def replace_records(
    conn: AsyncConnection, kind: str, blobs: Sequence[tuple[str, bytes]]
) -> None:
    table, column = RECORDS[kind]
    if blobs:
        await conn.execute(
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values({column: bindparam("b_blob")}),
            [{"b_id": i, "b_blob": b} for i, b in blobs],
        )
