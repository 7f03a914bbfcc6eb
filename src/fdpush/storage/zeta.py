"""The SQL of the RS API: a user's devices and channel choices, Idempotency-Key receipts, and
the outbox's backlog.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from fdpush.storage import outbox
from fdpush.storage.database import Database
from fdpush.storage.schema import channel_states, pushers, rs_idempotency

__all__ = [
    "Receipt",
    "UserDevices",
    "claim_key",
    "complete_key",
    "expire_key",
    "pending_count",
    "prune_keys",
    "receipt",
    "release_key",
    "user_devices",
]


@dataclass(frozen=True, slots=True)
class UserDevices:
    """A user's pushers (counted) and each device's explicit channel choices."""

    pushers: int
    devices: dict[str, dict[str, str]]  # pushkey → {channel: status}


@dataclass(frozen=True, slots=True)
class Receipt:
    fingerprint: str
    notification_id: str | None
    status: str | None
    accepted_at: int | None
    created_at: int


async def user_devices(db: Database, user_id: str) -> UserDevices:
    async with db.read() as conn:
        keys = (
            await conn.execute(select(pushers.c.pushkey).where(pushers.c.user_id == user_id))
        ).all()
        states = (
            await conn.execute(
                select(
                    channel_states.c.pushkey, channel_states.c.channel_id, channel_states.c.status
                ).where(channel_states.c.user_id == user_id)
            )
        ).all()
    devices: dict[str, dict[str, str]] = {str(k[0]): {} for k in keys}
    for pushkey, channel, status in states:
        if pushkey in devices:
            devices[pushkey][channel] = status
    return UserDevices(len(keys), devices)


async def pending_count(db: Database) -> int:
    """Notifications waiting to be sent or in flight (counted from their dispatches)."""
    async with db.read() as conn:
        count, _ = await outbox.queue_stats(conn)
        return count


async def claim_key(db: Database, client: str, key: str, fingerprint: str, now_ms: int) -> bool:
    """Insert the receipt of ``key``; False when one exists already (the caller lost the race)."""
    values = {"client": client, "key": key, "fingerprint": fingerprint, "created_at": now_ms}
    statement = (
        pg_insert(rs_idempotency) if db.dialect == "postgresql" else sqlite_insert(rs_idempotency)
    )
    async with db.write() as conn:
        result = await conn.execute(
            statement.values(values)
            .on_conflict_do_nothing(index_elements=["client", "key"])
            .returning(rs_idempotency.c.key)
        )
        return result.first() is not None


def _where(client: str, key: str) -> ColumnElement[bool]:
    return and_(rs_idempotency.c.client == client, rs_idempotency.c.key == key)


async def receipt(db: Database, client: str, key: str) -> Receipt | None:
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(
                    rs_idempotency.c.fingerprint,
                    rs_idempotency.c.notification_id,
                    rs_idempotency.c.status,
                    rs_idempotency.c.accepted_at,
                    rs_idempotency.c.created_at,
                ).where(_where(client, key))
            )
        ).first()
    if row is None:
        return None
    return Receipt(row[0], row[1], row[2], row[3], int(row[4]))


async def complete_key(
    db: Database, client: str, key: str, *, notification_id: str, status: str, accepted_at: int
) -> None:
    async with db.write() as conn:
        await conn.execute(
            update(rs_idempotency)
            .where(_where(client, key))
            .values(notification_id=notification_id, status=status, accepted_at=accepted_at)
        )


async def release_key(db: Database, client: str, key: str, *, created_at: int) -> None:
    """Delete an unanswered receipt (its request failed, or its owner died) so a retry may run."""
    async with db.write() as conn:
        await conn.execute(
            delete(rs_idempotency).where(
                _where(client, key),
                rs_idempotency.c.created_at == created_at,
                rs_idempotency.c.notification_id.is_(None),
            )
        )


async def expire_key(db: Database, client: str, key: str, *, before_ms: int) -> None:
    """Delete the receipt of ``key`` if it is older than ``before_ms`` (retention over)."""
    async with db.write() as conn:
        await conn.execute(
            delete(rs_idempotency).where(
                _where(client, key),
                rs_idempotency.c.created_at < before_ms,
            )
        )


async def prune_keys(db: Database, before_ms: int) -> int:
    """Delete every receipt older than ``before_ms``; how many."""
    async with db.write() as conn:
        result = await conn.execute(
            delete(rs_idempotency).where(rs_idempotency.c.created_at < before_ms)
        )
        return int(result.rowcount)
