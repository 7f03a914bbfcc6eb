"""The SQL of replacing stored user ids by their pseudonyms, once per database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Table, Update, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fdpush.storage.schema import (
    audit_log,
    channel_states,
    data_steps,
    events,
    pusher_keys,
    pushers,
)

__all__ = [
    "KeyRow",
    "done",
    "key_rows",
    "mark_done",
    "rename_users",
    "replace_key_material",
    "user_ids",
]

KeyRow = tuple[int, str, str, str, str, bytes]  # pusher id, user, app, pushkey, period, material
_USER_COLUMNS = (
    (pushers, "user_id"),
    (channel_states, "user_id"),
    (events, "user_id"),
    (audit_log, "user_id"),
    (audit_log, "actor"),
)


async def done(conn: AsyncConnection, name: str) -> bool:
    found = await conn.execute(select(data_steps.c.name).where(data_steps.c.name == name))
    return found.first() is not None


async def mark_done(conn: AsyncConnection, name: str, now_ms: int) -> None:
    await conn.execute(insert(data_steps).values(name=name, done_at=now_ms))


async def user_ids(conn: AsyncConnection) -> set[str]:
    """Every stored user id (an audit ``actor`` is one of them, or "gateway" or "system")."""
    found: set[str] = set()
    for table, column in _USER_COLUMNS:
        if column == "actor":
            continue
        rows = await conn.execute(select(table.c[column]).distinct())
        found.update(str(r[0]) for r in rows)
    return found


async def key_rows(conn: AsyncConnection) -> list[KeyRow]:
    rows = await conn.execute(
        select(
            pusher_keys.c.pusher_id,
            pushers.c.user_id,
            pushers.c.app_id,
            pushers.c.pushkey,
            pusher_keys.c.period,
            pusher_keys.c.material,
        ).join(pushers, pushers.c.id == pusher_keys.c.pusher_id)
    )
    return [(int(r[0]), r[1], r[2], r[3], r[4], bytes(r[5])) for r in rows]


async def replace_key_material(
    conn: AsyncConnection, rows: Sequence[tuple[int, str, bytes]]
) -> None:
    """``(pusher id, period, material)``: the key generations, sealed anew."""
    if rows:
        await conn.execute(
            update(pusher_keys)
            .where(
                pusher_keys.c.pusher_id == bindparam("b_pusher"),
                pusher_keys.c.period == bindparam("b_period"),
            )
            .values(material=bindparam("b_material")),
            [{"b_pusher": p, "b_period": m, "b_material": b} for p, m, b in rows],
        )


async def rename_users(conn: AsyncConnection, renamed: Mapping[str, str]) -> None:
    """Replace each old user id by its new one, in every table that stores one."""
    if not renamed:
        return
    pairs = [{"b_old": old, "b_new": new} for old, new in renamed.items()]
    for table, column in _USER_COLUMNS:
        await conn.execute(_rename(table, column), pairs)


def _rename(table: Table, column: str) -> Update:
    return (
        update(table)
        .where(table.c[column] == bindparam("b_old"))
        .values({column: bindparam("b_new")})
    )
