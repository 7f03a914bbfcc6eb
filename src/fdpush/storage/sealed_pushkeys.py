"""The SQL of sealing the stored pushkeys and replacing them by their keyed index, once per
database (rows written before revision 0005)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fdpush.storage.schema import audit_log, channel_states, pushers

__all__ = [
    "audit_pushkey_hashes",
    "device_pushkeys",
    "plain_pushers",
    "rename_audit_pushkey_hashes",
    "rename_device_pushkeys",
    "seal_pushers",
]


async def plain_pushers(conn: AsyncConnection) -> list[tuple[int, str, str, str]]:
    """``(id, user_id, app_id, pushkey)`` of every pusher whose pushkey is in the clear."""
    rows = await conn.execute(
        select(pushers.c.id, pushers.c.user_id, pushers.c.app_id, pushers.c.pushkey)
        .where(pushers.c.pushkey_sealed.is_(None))
        .order_by(pushers.c.id)
    )
    return [(int(r[0]), r[1], r[2], r[3]) for r in rows]


async def device_pushkeys(conn: AsyncConnection) -> set[tuple[str, str]]:
    """Every ``(user_id, pushkey)`` that has channel states."""
    rows = await conn.execute(select(channel_states.c.user_id, channel_states.c.pushkey).distinct())
    return {(str(r[0]), str(r[1])) for r in rows}


async def audit_pushkey_hashes(conn: AsyncConnection) -> set[tuple[str, str]]:
    """Every ``(user_id, pushkey_hash)`` of the audit log."""
    rows = await conn.execute(select(audit_log.c.user_id, audit_log.c.pushkey_hash).distinct())
    return {(str(r[0]), str(r[1])) for r in rows}


async def seal_pushers(conn: AsyncConnection, rows: Sequence[tuple[int, str, bytes]]) -> None:
    """``(pusher id, pushkey index, sealed pushkey)``: the pushkey replaced by both."""
    if rows:
        await conn.execute(
            update(pushers)
            .where(pushers.c.id == bindparam("b_id"))
            .values(pushkey=bindparam("b_index"), pushkey_sealed=bindparam("b_sealed")),
            [{"b_id": i, "b_index": x, "b_sealed": s} for i, x, s in rows],
        )


# Both renames name the user too: the tables' indexes start with user_id, the pushkey alone
# would be a scan of the whole table per device.


async def rename_device_pushkeys(
    conn: AsyncConnection, renamed: Mapping[tuple[str, str], str]
) -> None:
    """``{(user_id, pushkey): index}``: replace each pushkey of the channel states."""
    if renamed:
        await conn.execute(
            update(channel_states)
            .where(
                channel_states.c.user_id == bindparam("b_user"),
                channel_states.c.pushkey == bindparam("b_old"),
            )
            .values(pushkey=bindparam("b_new")),
            [{"b_user": u, "b_old": old, "b_new": new} for (u, old), new in renamed.items()],
        )


async def rename_audit_pushkey_hashes(
    conn: AsyncConnection, renamed: Mapping[tuple[str, str], str]
) -> None:
    """``{(user_id, pushkey_hash): new}``: replace each audit record's pushkey hash."""
    if renamed:
        await conn.execute(
            update(audit_log)
            .where(
                audit_log.c.user_id == bindparam("b_user"),
                audit_log.c.pushkey_hash == bindparam("b_old"),
            )
            .values(pushkey_hash=bindparam("b_new")),
            [{"b_user": u, "b_old": old, "b_new": new} for (u, old), new in renamed.items()],
        )
