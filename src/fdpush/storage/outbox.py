"""The SQL of delivery: events, the notification outbox, leases, key generations at send time.

A notification is ``pending`` until it ends ``delivered``, ``rejected`` or ``failed``. A worker
*claims* due pending rows by writing its id and a lease expiry into them (PostgreSQL:
``FOR UPDATE SKIP LOCKED``, so workers never claim the same row); a live worker renews its
leases, and rows of a dead worker become claimable again when their lease runs out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fdpush.storage.schema import channel_states, events, notifications, pusher_keys, pushers

__all__ = [
    "Claimed",
    "Recipient",
    "claim",
    "event_counts",
    "finish",
    "insert_event_rows",
    "next_due",
    "queue_stats",
    "recipients",
    "release",
    "renew",
]


@dataclass(frozen=True, slots=True)
class Recipient:
    """A pusher an event may go to, with its stored key generations (sealed)."""

    pusher_id: int
    user_id: str
    app_id: str
    pushkey: str
    pushkey_ts: int
    data: str
    key_identifier: str | None
    generations: tuple[tuple[str, bytes], ...]  # (period, sealed material), oldest first


async def recipients(
    conn: AsyncConnection, user_ids: Sequence[str], channel_ids: Sequence[str]
) -> tuple[list[Recipient], dict[tuple[str, str, str], str]]:
    """The pushers of ``user_ids`` and their devices' explicit states for ``channel_ids``.

    Returns the pushers (with key generations) and ``{(user_id, pushkey, channel): status}``;
    the domain decides who gets what (explicit state, else the catalog default).
    """
    rows = (
        await conn.execute(
            select(
                pushers.c.id,
                pushers.c.user_id,
                pushers.c.app_id,
                pushers.c.pushkey,
                pushers.c.pushkey_ts,
                pushers.c.data,
                pushers.c.key_identifier,
            )
            .where(pushers.c.user_id.in_(list(user_ids)))
            .order_by(pushers.c.id)
        )
    ).all()
    states = (
        await conn.execute(
            select(
                channel_states.c.user_id,
                channel_states.c.pushkey,
                channel_states.c.channel_id,
                channel_states.c.status,
            ).where(
                channel_states.c.user_id.in_(list(user_ids)),
                channel_states.c.channel_id.in_(list(channel_ids)),
            )
        )
    ).all()
    generations: dict[int, list[tuple[str, bytes]]] = {}
    if rows:
        keys = await conn.execute(
            select(pusher_keys.c.pusher_id, pusher_keys.c.period, pusher_keys.c.material)
            .where(pusher_keys.c.pusher_id.in_([r.id for r in rows]))
            .order_by(pusher_keys.c.pusher_id, pusher_keys.c.period)
        )
        for k in keys:
            generations.setdefault(k.pusher_id, []).append((k.period, k.material))
    return (
        [
            Recipient(
                pusher_id=r.id,
                user_id=r.user_id,
                app_id=r.app_id,
                pushkey=r.pushkey,
                pushkey_ts=r.pushkey_ts,
                data=r.data,
                key_identifier=r.key_identifier,
                generations=tuple(generations.get(r.id, ())),
            )
            for r in rows
        ],
        {(s.user_id, s.pushkey, s.channel_id): s.status for s in states},
    )


async def save_generations(
    conn: AsyncConnection,
    added: Iterable[tuple[int, str, bytes]],
    removed: Iterable[tuple[int, str]],
) -> None:
    """Persist ratcheted generations ``(pusher_id, period, material)``; drop expired ones."""
    added_rows = [{"pusher_id": p, "period": m, "material": b} for p, m, b in added]
    if added_rows:
        await conn.execute(insert(pusher_keys), added_rows)
    removed_rows = [{"p": p, "m": m} for p, m in removed]
    if removed_rows:
        await conn.execute(
            delete(pusher_keys).where(
                pusher_keys.c.pusher_id == bindparam("p"), pusher_keys.c.period == bindparam("m")
            ),
            removed_rows,
        )


async def insert_event_rows(
    conn: AsyncConnection,
    event_rows: Sequence[Mapping[str, Any]],
    notification_rows: Sequence[Mapping[str, Any]],
    *,
    notify_channel: str | None,
) -> None:
    """Insert events and their notifications; on PostgreSQL wake the workers on commit."""
    if event_rows:
        await conn.execute(insert(events), list(event_rows))
    if notification_rows:
        await conn.execute(insert(notifications), list(notification_rows))
        if notify_channel is not None:
            await conn.execute(text("SELECT pg_notify(:c, '')"), {"c": notify_channel})


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    event_id: str
    user_id: str
    app_id: str
    pushkey: str
    gateway: str
    encrypted: bool
    body: bytes
    attempts: int
    created_at: int


async def claim(
    conn: AsyncConnection,
    *,
    owner: str,
    now_ms: int,
    lease_ms: int,
    limit: int,
    skip_gateways: Sequence[str] = (),
) -> list[Claimed]:
    """Lease up to ``limit`` due pending notifications, oldest due first."""
    due = (
        select(notifications.c.id)
        .where(
            notifications.c.status == "pending",
            notifications.c.next_attempt_at <= now_ms,
            or_(
                notifications.c.lease_expires_at.is_(None),
                notifications.c.lease_expires_at < now_ms,
            ),
        )
        .order_by(notifications.c.next_attempt_at)
        .limit(limit)
    )
    if skip_gateways:
        due = due.where(notifications.c.gateway.not_in(list(skip_gateways)))
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    result = await conn.execute(
        update(notifications)
        .where(notifications.c.id.in_(due.scalar_subquery()))
        .values(lease_owner=owner, lease_expires_at=now_ms + lease_ms)
        .returning(
            notifications.c.id,
            notifications.c.event_id,
            notifications.c.user_id,
            notifications.c.app_id,
            notifications.c.pushkey,
            notifications.c.gateway,
            notifications.c.encrypted,
            notifications.c.body,
            notifications.c.attempts,
            notifications.c.created_at,
        )
    )
    return [Claimed(**row._mapping) for row in result]


async def renew(conn: AsyncConnection, *, owner: str, ids: Sequence[str], until_ms: int) -> None:
    """Extend the leases ``owner`` still holds on ``ids``."""
    if ids:
        await conn.execute(
            update(notifications)
            .where(notifications.c.id.in_(list(ids)), notifications.c.lease_owner == owner)
            .values(lease_expires_at=until_ms)
        )


async def finish(
    conn: AsyncConnection, ids: Sequence[str], *, status: str, now_ms: int, error: str | None
) -> None:
    """End notifications as ``delivered``, ``rejected`` or ``failed`` (kept, with the reason)."""
    if ids:
        await conn.execute(
            update(notifications)
            .where(notifications.c.id.in_(list(ids)), notifications.c.status == "pending")
            .values(
                status=status,
                finished_at=now_ms,
                last_error=None if error is None else error[:512],
                lease_owner=None,
                lease_expires_at=None,
            )
        )


async def release(
    conn: AsyncConnection,
    ids: Sequence[str],
    *,
    next_attempt_at: int,
    error: str | None,
    count_attempt: bool,
) -> None:
    """Give leased notifications back for a later attempt."""
    if ids:
        values: dict[str, Any] = {
            "next_attempt_at": next_attempt_at,
            "lease_owner": None,
            "lease_expires_at": None,
            "last_error": None if error is None else error[:512],
        }
        if count_attempt:
            values["attempts"] = notifications.c.attempts + 1
        await conn.execute(
            update(notifications)
            .where(notifications.c.id.in_(list(ids)), notifications.c.status == "pending")
            .values(**values)
        )


async def pending_for_device(
    conn: AsyncConnection, user_id: str, pushkey: str, gateway: str
) -> list[str]:
    result = await conn.execute(
        select(notifications.c.id).where(
            notifications.c.user_id == user_id,
            notifications.c.pushkey == pushkey,
            notifications.c.gateway == gateway,
            notifications.c.status == "pending",
        )
    )
    return [r.id for r in result]


async def next_due(conn: AsyncConnection) -> int | None:
    """When the earliest pending notification is due (epoch ms), or None."""
    result = await conn.execute(
        select(func.min(notifications.c.next_attempt_at)).where(notifications.c.status == "pending")
    )
    value = result.scalar_one_or_none()
    return None if value is None else int(value)


async def queue_stats(conn: AsyncConnection) -> tuple[int, int | None]:
    """``(pending count, created_at of the oldest pending)``."""
    row = (
        await conn.execute(
            select(func.count(), func.min(notifications.c.created_at)).where(
                notifications.c.status == "pending"
            )
        )
    ).one()
    return int(row[0]), (None if row[1] is None else int(row[1]))


async def event_counts(conn: AsyncConnection, event_id: str) -> tuple[Any, dict[str, int]] | None:
    """An event row and its notifications counted by status, or None."""
    event = (await conn.execute(select(events).where(events.c.id == event_id))).first()
    if event is None:
        return None
    result = await conn.execute(
        select(notifications.c.status, func.count())
        .where(notifications.c.event_id == event_id)
        .group_by(notifications.c.status)
    )
    return event, {row[0]: int(row[1]) for row in result}


async def failed(conn: AsyncConnection, limit: int) -> list[Any]:
    """The most recent failed notifications, newest first."""
    result = await conn.execute(
        select(
            notifications.c.id,
            notifications.c.event_id,
            notifications.c.user_id,
            notifications.c.pushkey,
            notifications.c.gateway,
            notifications.c.attempts,
            notifications.c.last_error,
            notifications.c.created_at,
            notifications.c.finished_at,
        )
        .where(notifications.c.status == "failed")
        .order_by(notifications.c.finished_at.desc())
        .limit(limit)
    )
    return list(result)


async def history(
    conn: AsyncConnection,
    user_id: str,
    pushkey: str,
    *,
    limit: int,
    before: tuple[int, str] | None,
) -> list[Any]:
    """A device's sent notifications with their events, newest first (keyset paging)."""
    query = (
        select(
            notifications.c.id,
            notifications.c.created_at,
            events.c.id.label("event_id"),
            events.c.identifier,
            events.c.payload,
        )
        .join(events, events.c.id == notifications.c.event_id)
        .where(
            notifications.c.user_id == user_id,
            notifications.c.pushkey == pushkey,
            events.c.payload.is_not(None),
        )
        .order_by(notifications.c.created_at.desc(), notifications.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        created, ident = before
        query = query.where(
            or_(
                notifications.c.created_at < created,
                and_(notifications.c.created_at == created, notifications.c.id < ident),
            )
        )
    return list(await conn.execute(query))


async def history_entry(conn: AsyncConnection, user_id: str, identifier: str) -> Any | None:
    """The newest event of ``user_id`` with this identifier that still has its payload."""
    result = await conn.execute(
        select(events.c.id, events.c.identifier, events.c.payload)
        .where(
            events.c.user_id == user_id,
            events.c.identifier == identifier,
            events.c.payload.is_not(None),
        )
        .order_by(events.c.created_at.desc())
        .limit(1)
    )
    return result.first()


async def prune(conn: AsyncConnection, *, history_before_ms: int, outbox_before_ms: int) -> int:
    """Forget payloads past the history retention; delete finished events past both."""
    await conn.execute(
        update(events)
        .where(events.c.created_at < history_before_ms, events.c.payload.is_not(None))
        .values(payload=None)
    )
    unfinished = select(notifications.c.event_id).where(notifications.c.status == "pending")
    result = await conn.execute(
        delete(events).where(
            events.c.created_at < min(history_before_ms, outbox_before_ms),
            events.c.id.not_in(unfinished),
        )
    )
    return int(result.rowcount or 0)
