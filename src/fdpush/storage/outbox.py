"""The SQL of delivery: events, the notification outbox, leases, key generations at send time.

An event keeps its payload sealed once; the outbox has one small row per (event, pusher). A
notification is ``pending`` until it ends ``delivered``, ``rejected`` or ``failed``. A worker
*claims* due pending rows by writing its id and a lease expiry into them (PostgreSQL:
``FOR UPDATE SKIP LOCKED``, so workers never claim the same row), reads what it needs to seal
them (:func:`sending_context`), and renews its leases while it works; rows of a dead worker
become claimable again when their lease runs out. A claim writes only the lease columns, which
no index holds: on PostgreSQL it is a HOT update (no new index entries, the row stays on its
page, which keeps room for it: revision 0007), which is what makes a claim cheap. Looking for
due work therefore walks past the rows in flight (at most a few batches per worker) and skips
them by their lease.

Every statement here handles a whole batch: the cost of a statement is paid per batch, not per
notification. On SQLite the statements of every batch (fan-out, queueing, claiming, settling)
run on the direct connection (:meth:`Database.sqlite`): one hop to SQLite's thread per batch,
none of SQLAlchemy's work in the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import cache, partial
from operator import attrgetter
from typing import Any, NamedTuple

import asyncpg
import orjson
from sqlalchemy import (
    String,
    and_,
    any_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import TextClause

from fdpush.storage.database import Database, lock_id
from fdpush.storage.schema import (
    channel_states,
    dispatches,
    events,
    notifications,
    pusher_keys,
    pushers,
)

_TEXT_ARRAY = postgresql.ARRAY(String)


def _unleased(table: Any, now_ms: int) -> Any:
    """No worker holds the row: never leased, or its lease ran out."""
    return or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at <= now_ms)


def _among(conn: AsyncConnection, column: Any, values: Sequence[Any]) -> Any:
    """``column IN values``; on PostgreSQL ``column = ANY(:array)``, one prepared statement
    whatever the number of values (an IN list is a new statement text for every length)."""
    if conn.dialect.name == "postgresql":
        kind = _TEXT_ARRAY if isinstance(column.type, String) else postgresql.ARRAY(column.type)
        return column == any_(bindparam(None, list(values), type_=kind))
    return column.in_(list(values))


__all__ = [
    "DISPATCH_SIZE",
    "Claimed",
    "EventBody",
    "Leased",
    "Recipient",
    "Target",
    "claim",
    "claim_with_context",
    "drop_dispatches",
    "event_counts",
    "finish",
    "insert_event_rows",
    "next_due",
    "oldest_pending",
    "queue_stats",
    "recipients",
    "release",
    "renew",
    "save_generations",
    "sending_context",
    "settle",
]


class Recipient(NamedTuple):
    """A pusher an event may go to (what fan-out needs; no key material)."""

    pusher_id: int
    user_id: str
    pushkey: str
    data: str
    key_identifier: str | None


# No ORDER BY, in either place: the pushers are sorted by id afterwards, and both arrays list
# a device's choices in the same order, whichever. Ordered by id, a planner whose statistics
# lag behind a growing pushers table (a young service, a benchmark's setup) walked the whole
# primary key and compared every row with the hundred user ids (about 30 blocks and 20 µs per
# notification at 3,000 pushers) instead of looking the users up by the user id index; the
# ordered aggregates cost a sort each per device.
_RECIPIENTS = text(
    """
    SELECT p.id, p.user_id, p.pushkey, p.data, p.key_identifier, c.chosen, c.statuses
    FROM pushers p
    CROSS JOIN LATERAL (
        SELECT array_agg(s.channel_id) AS chosen, array_agg(s.status) AS statuses
        FROM channel_states s
        WHERE s.user_id = p.user_id AND s.pushkey = p.pushkey
          AND s.channel_id = ANY(CAST(:channels AS text[]))
    ) c
    WHERE p.user_id = ANY(CAST(:users AS text[]))
    """
)


async def fan_out_read(
    db: Database, user_ids: Sequence[str], channel_ids: Sequence[str]
) -> tuple[list[Recipient], dict[tuple[str, str, str], str]]:
    """:func:`recipients` as one statement without a transaction (PostgreSQL: one round trip).

    Fan-out reads a moment before it writes; a pusher registered in between gets the next
    event, as it would have had it registered a moment later.
    """
    if db.sqlite_direct:
        return await db.sqlite(
            partial(_sqlite_recipients, list(user_ids), list(channel_ids)), write=False
        )
    if db.dialect != "postgresql":
        async with db.read() as conn:
            return await recipients(conn, user_ids, channel_ids)
    rows = await db.fetch_all(_RECIPIENTS, {"users": list(user_ids), "channels": list(channel_ids)})
    found: list[Recipient] = []
    states: dict[tuple[str, str, str], str] = {}
    for r in rows:
        found.append(Recipient(r[0], r[1], r[2], r[3], r[4]))
        for channel, status in zip(r[5] or (), r[6] or (), strict=True):
            states[(r[1], r[2], channel)] = status
    found.sort(key=attrgetter("pusher_id"))
    return found, states


async def queue(
    db: Database,
    event_rows: Sequence[Mapping[str, Any]],
    notification_rows: Sequence[Mapping[str, Any]],
    *,
    notify_channel: str | None,
    notify_payload: str = "",
) -> None:
    """Store events and their notifications durably (committed on return), waking workers.

    The rows are of one moment: every event has the same ``created_at`` and ``history``, every
    notification the same ``status``, ``attempts``, ``next_attempt_at`` and ``created_at``
    (ValueError otherwise).

    PostgreSQL: one statement, which commits on its own and, with ``notify_channel``, sends a
    NOTIFY whose payload is ``notify_payload``. SQLite: one write transaction.
    """
    if not event_rows:
        return
    if db.sqlite_direct:
        _alike(event_rows, _EVENT_CONSTANTS)  # one moment per call, as on PostgreSQL
        _alike(notification_rows, _NOTIFICATION_CONSTANTS)
        await db.sqlite(partial(_sqlite_insert, event_rows, notification_rows), write=True)
        return
    if db.dialect == "postgresql":
        await db.fetch_all(
            *_queue_statement(event_rows, notification_rows, notify_channel, notify_payload)
        )
        return
    async with db.write() as conn:
        await insert_event_rows(conn, event_rows, notification_rows, notify_channel=None)


async def recipients(
    conn: AsyncConnection, user_ids: Sequence[str], channel_ids: Sequence[str]
) -> tuple[list[Recipient], dict[tuple[str, str, str], str]]:
    """The pushers of ``user_ids`` and their devices' explicit states for ``channel_ids``.

    Returns the pushers and ``{(user_id, pushkey, channel): status}``; the domain decides who
    gets what (explicit state, else the catalog default).
    """
    rows = (
        await conn.execute(
            select(
                pushers.c.id,
                pushers.c.user_id,
                pushers.c.pushkey,
                pushers.c.data,
                pushers.c.key_identifier,
            )
            .where(_among(conn, pushers.c.user_id, user_ids))
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
                _among(conn, channel_states.c.user_id, user_ids),
                _among(conn, channel_states.c.channel_id, channel_ids),
            )
        )
    ).all()
    return (
        [Recipient(r[0], r[1], r[2], r[3], r[4]) for r in rows],
        {(s[0], s[1], s[2]): s[3] for s in states},
    )


async def insert_event_rows(
    conn: AsyncConnection,
    event_rows: Sequence[Mapping[str, Any]],
    notification_rows: Sequence[Mapping[str, Any]],
    *,
    notify_channel: str | None,
) -> None:
    """Insert events and their notifications; on PostgreSQL wake the workers on commit.

    PostgreSQL takes each table's rows as one statement over arrays (``unnest``): a hundred
    events with their notifications cost two statements, not per-row parameter handling.
    """
    if conn.dialect.name == "postgresql":
        if event_rows:
            # One statement, one round trip: both inserts and the wake-up (foreign keys are
            # checked at the end of the statement, when both tables have their rows).
            await conn.execute(*_queue_statement(event_rows, notification_rows, notify_channel))
        return
    if event_rows:
        await conn.execute(insert(events), list(event_rows))
    if notification_rows:
        await conn.execute(insert(notifications), list(notification_rows))
        await conn.execute(
            insert(dispatches),
            [
                {
                    "gateway": gateway,
                    "notification_ids": _json_list(ids),
                    "next_attempt_at": due,
                    "created_at": created,
                }
                for gateway, ids, due, created in _dispatch_groups(notification_rows)
            ],
        )


_EVENT_COLUMNS = {
    "id": "text",
    "user_id": "text",
    "channel": "text",
    "prio": "text",
    "identifier": "text",
    "created_at": "bigint",
    "payload": "bytea",
    "history": "boolean",
}
_NOTIFICATION_COLUMNS = {
    "id": "text",
    "event_id": "text",
    "pusher_id": "bigint",
    "gateway": "text",
    "encrypted": "boolean",
    "status": "text",
    "attempts": "integer",
    "next_attempt_at": "bigint",
    "created_at": "bigint",
}


# What is the same for every row of one call (one clock reading; a new notification is pending,
# never tried) goes to PostgreSQL once, not as an array of a hundred copies: each array element
# costs the driver's encoder and the server's decoder (about 0.3 µs each on the service's side).
_EVENT_CONSTANTS = ("created_at", "history")
_NOTIFICATION_CONSTANTS = ("status", "attempts", "next_attempt_at", "created_at")
# And what is usually the same (a Fachdienst's batch of one kind of event, an app's devices
# behind one gateway) goes once when it is: a statement of its own for each combination.
_EVENT_USUALLY_ALIKE = ("channel", "prio")
_NOTIFICATION_USUALLY_ALIKE = ("gateway", "encrypted")


def _unnest_insert(
    table: str, columns: Mapping[str, str], prefix: str, constants: Sequence[str]
) -> str:
    names = ", ".join(columns)
    varying = [name for name in columns if name not in constants]
    arrays = ", ".join(f"CAST(:{prefix}{name} AS {columns[name]}[])" for name in varying)
    values = ", ".join(
        f"CAST(:{prefix}{name} AS {kind})" if name in constants else f"u.{name}"
        for name, kind in columns.items()
    )
    # Only our own table and column names: no input reaches this text.
    return (
        f"INSERT INTO {table} ({names}) SELECT {values} "  # noqa: S608
        f"FROM unnest({arrays}) AS u({', '.join(varying)})"
    )


# The notifications' dispatches come from the same arrays: the rows of one group (``:n_group``,
# numbered by _dispatch_groups) make one dispatch. The arrays' text compares byte by byte, as
# the columns do (schema._key): under the database's locale every comparison of the sort would
# follow its language's rules.
_INSERT_DISPATCHES = """
    INSERT INTO dispatches (gateway, notification_ids, next_attempt_at, created_at)
    SELECT min(u.gateway COLLATE "C"), array_agg(u.id ORDER BY u.id COLLATE "C"),
           CAST(:n_next_attempt_at AS bigint),
           CAST(:n_created_at AS bigint)
    FROM unnest(CAST(:n_id AS text[]), CAST(:n_gateway AS text[]), CAST(:n_group AS integer[]))
         AS u(id, gateway, grp)
    GROUP BY u.grp
"""
_INSERT_DISPATCHES_OF_ONE_GATEWAY = """
    INSERT INTO dispatches (gateway, notification_ids, next_attempt_at, created_at)
    SELECT CAST(:n_gateway AS text), array_agg(u.id ORDER BY u.id COLLATE "C"),
           CAST(:n_next_attempt_at AS bigint), CAST(:n_created_at AS bigint)
    FROM unnest(CAST(:n_id AS text[]), CAST(:n_group AS integer[])) AS u(id, grp)
    GROUP BY u.grp
"""


@cache  # one per combination of what was alike: at most 16
def _insert_events_and_notifications(
    events_alike: tuple[str, ...], notifications_alike: tuple[str, ...]
) -> TextClause:
    """The queueing statement, with ``*_alike`` passed once instead of as arrays."""
    add_events = _unnest_insert("events", _EVENT_COLUMNS, "e_", _EVENT_CONSTANTS + events_alike)
    add_notifications = _unnest_insert(
        "notifications", _NOTIFICATION_COLUMNS, "n_", _NOTIFICATION_CONSTANTS + notifications_alike
    )
    one_gateway = "gateway" in notifications_alike
    add_dispatches = _INSERT_DISPATCHES_OF_ONE_GATEWAY if one_gateway else _INSERT_DISPATCHES
    return text(
        f"WITH e AS ({add_events}), n AS ({add_notifications}), d AS ({add_dispatches}) "
        "SELECT CASE WHEN CAST(:wake AS boolean) THEN pg_notify(:channel, :payload) END"
    )


DISPATCH_SIZE = 100  # notifications per dispatch at most: one gateway request's worth


def _groups(notification_rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """A dispatch number for each row: rows of one gateway (and kind, encrypted or plain) in
    their order, at most DISPATCH_SIZE to a number."""
    current: dict[tuple[str, bool], int] = {}
    filled: dict[tuple[str, bool], int] = {}
    groups: list[int] = []
    opened = 0
    for row in notification_rows:
        key = (row["gateway"], row["encrypted"])
        if key not in current or filled[key] >= DISPATCH_SIZE:
            current[key], filled[key] = opened, 0
            opened += 1
        filled[key] += 1
        groups.append(current[key])
    return groups


def _dispatch_groups(
    notification_rows: Sequence[Mapping[str, Any]],
) -> list[tuple[str, list[str], int, int]]:
    """The dispatches of ``notification_rows``: ``(gateway, ids, due, created_at)`` each."""
    found: dict[int, tuple[str, list[str], int, int]] = {}
    for group, row in zip(_groups(notification_rows), notification_rows, strict=True):
        gateway, ids, due, created = found.get(
            group, (row["gateway"], [], row["next_attempt_at"], row["created_at"])
        )
        ids.append(row["id"])
        found[group] = (
            gateway,
            ids,
            min(due, row["next_attempt_at"]),
            min(created, row["created_at"]),
        )
    return list(found.values())


def _queue_statement(
    event_rows: Sequence[Mapping[str, Any]],
    notification_rows: Sequence[Mapping[str, Any]],
    notify_channel: str | None,
    notify_payload: str = "",
) -> tuple[TextClause, dict[str, Any]]:
    """PostgreSQL's queueing statement for these rows, and its parameters."""
    events_alike = _same(event_rows, _EVENT_USUALLY_ALIKE)
    notifications_alike = _same(notification_rows, _NOTIFICATION_USUALLY_ALIKE)
    parameters = {
        **_columns(event_rows, _EVENT_COLUMNS, "e_", _EVENT_CONSTANTS, events_alike),
        **_columns(
            notification_rows,
            _NOTIFICATION_COLUMNS,
            "n_",
            _NOTIFICATION_CONSTANTS,
            notifications_alike,
        ),
        "n_group": _groups(notification_rows),
        "channel": notify_channel or "",
        "payload": notify_payload,
        "wake": bool(notification_rows) and notify_channel is not None,
    }
    statement = _insert_events_and_notifications(tuple(events_alike), tuple(notifications_alike))
    return statement, parameters


def _same(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """The value of each of ``names`` in which every row is alike (None without rows), in the
    order of ``names``; those in which rows differ are left out."""
    found: dict[str, Any] = {}
    for name in names:
        values = {row[name] for row in rows}
        if len(values) <= 1:
            found[name] = values.pop() if values else None
    return found


def _columns(
    rows: Sequence[Mapping[str, Any]],
    columns: Mapping[str, str],
    prefix: str,
    constants: Sequence[str],
    alike: Mapping[str, Any],
) -> dict[str, Any]:
    """The statement's parameters: an array per column, one value per column in ``constants``
    (every row must have the same there) and per column found ``alike`` (its value)."""
    found: dict[str, Any] = {
        prefix + name: [row[name] for row in rows]
        for name in columns
        if name not in constants and name not in alike
    }
    for name, value in (_alike(rows, constants) | dict(alike)).items():
        found[prefix + name] = value
    return found


def _alike(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """The one value every row has in each of ``names`` (None without rows); rows that differ
    there cannot be queued together (ValueError)."""
    found: dict[str, Any] = {}
    for name in names:
        values = {row[name] for row in rows}
        if len(values) > 1:
            raise ValueError(f"rows queued together differ in {name}: {sorted(values)[:3]}")
        found[name] = values.pop() if values else None
    return found


# --- the worker's side ---------------------------------------------------------------------------


class Claimed(NamedTuple):
    """A pending notification of a leased dispatch. ``body`` only on rows written before
    revision 0003."""

    id: str
    event_id: str
    pusher_id: int | None
    gateway: str
    encrypted: bool
    body: bytes | None
    attempts: int
    created_at: int
    dispatch: int  # the dispatch it was claimed through


class Target(NamedTuple):
    """A pusher as the worker needs it to seal and address a notification."""

    pusher_id: int
    user_id: str
    app_id: str
    pushkey: str  # the keyed index, as stored
    pushkey_ts: int
    data: str
    key_identifier: str | None
    generations: tuple[tuple[str, bytes], ...]  # (period, sealed material), oldest first
    pushkey_sealed: bytes | None  # the pushkey to address, sealed at rest


class EventBody(NamedTuple):
    """An event as the worker needs it: its payload sealed at rest, prio and identifier, and
    whose it is (as stored)."""

    id: str
    prio: str
    identifier: str | None
    payload: bytes | None
    user_id: str


class Leased(NamedTuple):
    """What a claim leased: the pending rows, with the pushers and events they refer to.

    ``full``: it leased as many dispatches as it may, so more may be due; otherwise it took
    every dispatch it could lease then, and a worker need not claim again until woken.
    """

    rows: list[Claimed]
    targets: dict[int, Target]
    bodies: dict[str, EventBody]
    full: bool


async def claim(
    conn: AsyncConnection,
    *,
    owner: str,
    now_ms: int,
    lease_ms: int,
    limit: int,
    skip_gateways: Sequence[str] = (),
) -> list[Claimed]:
    """Lease due dispatches, oldest due first, for up to about ``limit`` notifications; their
    pending notifications. Leased dispatches with none left pending are deleted."""
    due = (
        select(dispatches.c.id)
        .where(dispatches.c.next_attempt_at <= now_ms, _unleased(dispatches, now_ms))
        .order_by(dispatches.c.next_attempt_at)
        .limit(_dispatch_limit(limit))
    )
    if skip_gateways:
        due = due.where(dispatches.c.gateway.not_in(list(skip_gateways)))
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    leased = (
        await conn.execute(
            update(dispatches)
            .where(dispatches.c.id.in_(due.scalar_subquery()))
            .values(lease_owner=owner, lease_expires_at=now_ms + lease_ms)
            .returning(dispatches.c.id, dispatches.c.notification_ids)
        )
    ).all()
    if not leased:
        return []
    of: dict[str, int] = {}
    for dispatch_id, ids in leased:
        for ident in ids if isinstance(ids, list) else orjson.loads(ids):
            of.setdefault(ident, dispatch_id)
    result = await conn.execute(
        select(
            notifications.c.id,
            notifications.c.event_id,
            notifications.c.pusher_id,
            notifications.c.gateway,
            notifications.c.encrypted,
            notifications.c.body,
            notifications.c.attempts,
            notifications.c.created_at,
        ).where(_among(conn, notifications.c.id, sorted(of)), notifications.c.status == "pending")
    )
    rows = [Claimed(*row, dispatch=of[row[0]]) for row in result]
    empty = {d for d, _ in leased} - {r.dispatch for r in rows}
    if empty:
        await conn.execute(delete(dispatches).where(dispatches.c.id.in_(sorted(empty))))
    return rows


def _dispatch_limit(notifications_limit: int) -> int:
    """Dispatches to claim for about ``notifications_limit`` notifications."""
    return max(1, notifications_limit // DISPATCH_SIZE)


# One statement: lease the due dispatches (skipping those another worker is leasing), then
# their notifications that are still pending, each with its pusher (and key generations) and
# event, all by key (LATERAL), whatever the size of the outbox. A dispatch with nothing pending
# left comes back as one row without a notification. ``OFFSET 0`` keeps each lookup inside the
# loop: a planner that thinks few rows are pending (its statistics lag behind a burst) otherwise
# reads every pending row of the outbox, with its pusher and event, and filters them against the
# dispatches' ids afterwards; and one whose statistics saw the events table empty or small (a
# young service) joined the events by walking their whole primary key for every notification,
# or hashed them all (113 µs and 350 blocks per notification in a benchmark round).
_CLAIM_WITH_CONTEXT = text(
    """
    WITH leased AS (
        UPDATE dispatches d
        SET lease_owner = :owner, lease_expires_at = :until
        WHERE d.id = ANY(ARRAY(
            SELECT id FROM dispatches
            WHERE next_attempt_at <= :now
              AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
              AND NOT (gateway = ANY(CAST(:skip AS text[])))
            ORDER BY next_attempt_at
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        ))
        RETURNING d.id, d.notification_ids
    )
    SELECT c.id, c.event_id, c.pusher_id, c.gateway, c.encrypted, c.body, c.attempts,
           c.created_at, l.id,
           p.user_id, p.app_id, p.pushkey, p.pushkey_ts, p.data, p.key_identifier,
           p.periods, p.materials,
           e.prio, e.identifier, e.payload, p.pushkey_sealed, e.user_id
    FROM leased l
    LEFT JOIN LATERAL (
        SELECT n.id, n.event_id, n.pusher_id, n.gateway, n.encrypted, n.body, n.attempts,
               n.created_at
        FROM notifications n
        WHERE n.id = ANY(l.notification_ids) AND n.status = 'pending'
        OFFSET 0
    ) c ON true
    LEFT JOIN LATERAL (
        SELECT x.user_id, x.app_id, x.pushkey, x.pushkey_ts, x.data, x.key_identifier,
               x.pushkey_sealed, g.periods, g.materials
        FROM pushers x
        CROSS JOIN LATERAL (
            SELECT array_agg(k.period) AS periods, array_agg(k.material) AS materials
            FROM pusher_keys k WHERE k.pusher_id = x.id
        ) g
        WHERE x.id = c.pusher_id
        OFFSET 0
    ) p ON true
    LEFT JOIN LATERAL (
        SELECT y.prio, y.identifier, y.payload, y.user_id FROM events y WHERE y.id = c.event_id
        OFFSET 0
    ) e ON true
    """
)

_DROP_DISPATCHES = text(
    "DELETE FROM dispatches WHERE id = ANY(CAST(:ids AS bigint[])) AND lease_owner = :owner"
)


async def claim_with_context(
    db: Database,
    *,
    owner: str,
    now_ms: int,
    lease_ms: int,
    limit: int,
    skip_gateways: Sequence[str] = (),
) -> Leased:
    """:func:`claim` and :func:`sending_context` at once (PostgreSQL: one statement, which
    commits on its own)."""
    if db.sqlite_direct:
        claim_ = partial(
            _sqlite_claim, owner, now_ms, now_ms + lease_ms, limit, list(skip_gateways)
        )
        return await db.sqlite(claim_, write=True)
    if db.dialect != "postgresql":
        async with db.write() as conn:
            rows = await claim(
                conn,
                owner=owner,
                now_ms=now_ms,
                lease_ms=lease_ms,
                limit=limit,
                skip_gateways=skip_gateways,
            )
            # Dispatches emptied meanwhile are not among the rows' (claim deleted them): such a
            # claim may look partial, and the worker then asks when the next is due.
            full = len({r.dispatch for r in rows}) >= _dispatch_limit(limit)
            if not rows:
                return Leased([], {}, {}, full)
            targets, bodies = await sending_context(
                conn,
                (r.pusher_id for r in rows if r.pusher_id is not None),
                (r.event_id for r in rows),
            )
        return Leased(rows, targets, bodies, full)
    result = await db.fetch_all(
        _CLAIM_WITH_CONTEXT,
        {
            "now": now_ms,
            "until": now_ms + lease_ms,
            "owner": owner,
            "limit": _dispatch_limit(limit),
            "skip": list(skip_gateways),
        },
    )
    claimed: list[Claimed] = []
    found: dict[int, Target] = {}
    events_found: dict[str, EventBody] = {}
    seen: set[str] = set()
    leased: set[int] = set()
    for r in result:
        leased.add(r[8])
        if r[0] is None or r[0] in seen:  # nothing pending left; named by two dispatches
            continue
        seen.add(r[0])
        claimed.append(Claimed(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]))
        if r[2] is not None and r[9] is not None and r[2] not in found:
            # Both arrays list the pusher's rows in the same order, whichever: sorted here,
            # not by two ORDER BYs, whose sorts cost PostgreSQL a third of this lookup.
            generations = tuple(sorted(zip(r[15] or (), r[16] or (), strict=True)))
            found[r[2]] = Target(r[2], r[9], r[10], r[11], r[12], r[13], r[14], generations, r[20])
        if r[17] is not None and r[1] not in events_found:
            events_found[r[1]] = EventBody(r[1], r[17], r[18], r[19], r[21])
    empty = leased - {c.dispatch for c in claimed}
    if empty:
        await db.fetch_all(_DROP_DISPATCHES, {"ids": sorted(empty), "owner": owner})
    return Leased(claimed, found, events_found, len(leased) >= _dispatch_limit(limit))


async def sending_context(
    conn: AsyncConnection, pusher_ids: Iterable[int], event_ids: Iterable[str]
) -> tuple[dict[int, Target], dict[str, EventBody]]:
    """The pushers (with their key generations) and the events that claimed rows refer to."""
    ids = sorted(set(pusher_ids))
    targets: dict[int, Target] = {}
    if ids:
        generations: dict[int, list[tuple[str, bytes]]] = {}
        keys = await conn.execute(
            select(pusher_keys.c.pusher_id, pusher_keys.c.period, pusher_keys.c.material)
            .where(pusher_keys.c.pusher_id.in_(ids))
            .order_by(pusher_keys.c.pusher_id, pusher_keys.c.period)
        )
        for pusher_id, period, material in keys:
            generations.setdefault(pusher_id, []).append((period, material))
        rows = await conn.execute(
            select(
                pushers.c.id,
                pushers.c.user_id,
                pushers.c.app_id,
                pushers.c.pushkey,
                pushers.c.pushkey_ts,
                pushers.c.data,
                pushers.c.key_identifier,
                pushers.c.pushkey_sealed,
            ).where(pushers.c.id.in_(ids))
        )
        for r in rows:
            targets[r[0]] = Target(
                *r[:7], generations=tuple(generations.get(r[0], ())), pushkey_sealed=r[7]
            )
    bodies: dict[str, EventBody] = {}
    wanted = sorted(set(event_ids))
    if wanted:
        rows = await conn.execute(
            select(
                events.c.id, events.c.prio, events.c.identifier, events.c.payload, events.c.user_id
            ).where(events.c.id.in_(wanted))
        )
        for r in rows:
            bodies[r[0]] = EventBody(r[0], r[1], r[2], r[3], r[4])
    return targets, bodies


async def save_generations(
    conn: AsyncConnection,
    added: Iterable[tuple[int, str, bytes]],
    removed: Iterable[tuple[int, str]],
) -> None:
    """Persist ratcheted generations ``(pusher_id, period, material)``; drop expired ones.

    A generation already stored for that month stays (another worker ratcheted first: the
    schedule is deterministic, so it holds the same key).
    """
    added_rows = [{"pusher_id": p, "period": m, "material": b} for p, m, b in added]
    if added_rows:
        dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        await conn.execute(
            dialect_insert(pusher_keys).on_conflict_do_nothing(
                index_elements=["pusher_id", "period"]
            ),
            added_rows,
        )
    removed_rows = [{"p": p, "m": m} for p, m in removed]
    if removed_rows:
        await conn.execute(
            delete(pusher_keys).where(
                pusher_keys.c.pusher_id == bindparam("p"), pusher_keys.c.period == bindparam("m")
            ),
            removed_rows,
        )


async def renew(
    conn: AsyncConnection, *, owner: str, dispatch_ids: Sequence[int], until_ms: int
) -> None:
    """Extend the leases ``owner`` still holds on these dispatches.

    Rows locked right now (a batch being settled) are skipped, not waited for: waiting while
    holding other rows' locks deadlocked with the settling of a batch.
    """
    if not dispatch_ids:
        return
    if conn.dialect.name == "postgresql":
        await conn.execute(_RENEW, {"ids": list(dispatch_ids), "owner": owner, "until": until_ms})
        return
    await conn.execute(
        update(dispatches)
        .where(dispatches.c.id.in_(list(dispatch_ids)), dispatches.c.lease_owner == owner)
        .values(lease_expires_at=until_ms)
    )


_RENEW = text(
    """
    UPDATE dispatches SET lease_expires_at = :until
    WHERE id = ANY(ARRAY(
        SELECT id FROM dispatches
        WHERE id = ANY(CAST(:ids AS bigint[])) AND lease_owner = :owner
        ORDER BY id
        FOR UPDATE SKIP LOCKED
    ))
    """
)


async def drop_dispatches(conn: AsyncConnection, dispatch_ids: Iterable[int]) -> None:
    """Delete claimed dispatches whose notifications all ended or were given back."""
    ids = sorted(set(dispatch_ids))
    if ids:
        await conn.execute(delete(dispatches).where(dispatches.c.id.in_(ids)))


async def finish(
    conn: AsyncConnection, ids: Sequence[str], *, status: str, now_ms: int, error: str | None
) -> None:
    """End notifications as ``delivered``, ``rejected`` or ``failed`` (kept, with the reason)."""
    if ids:
        await conn.execute(
            update(notifications)
            .where(_among(conn, notifications.c.id, ids), notifications.c.status == "pending")
            .values(
                status=status,
                finished_at=now_ms,
                last_error=None if error is None else error[:512],
            )
        )


# No index holds ``status`` (revision 0008): on PostgreSQL ending a notification is a HOT
# update, its new version on its own page without index entries. The claimed dispatches whose
# notifications all ended go in the same statement.
# The notifications are looked up by ``id = ANY(ids)``, a condition on the primary key, in
# whichever order PostgreSQL joins: joined to the ids only through ``unnest``, a planner whose
# statistics saw next to nothing pending (the usual state, until a burst) walked the whole
# primary key of a small outbox and compared each pending row with every id (measured: 49-119
# ms for a batch of 100 with about 1,000 pending, instead of 0.5-1 ms).
_SETTLE = text(
    """
    WITH s AS (
        UPDATE notifications n
        SET status = o.status, finished_at = :now, last_error = o.error
        FROM unnest(CAST(:ids AS text[]), CAST(:statuses AS text[]), CAST(:errors AS text[]))
             AS o(id, status, error)
        WHERE n.id = ANY(CAST(:ids AS text[])) AND n.id = o.id AND n.status = 'pending'
        RETURNING 1
    ), d AS (
        DELETE FROM dispatches WHERE id = ANY(CAST(:done AS bigint[]))
    )
    SELECT count(*) FROM s
    """
)
# The usual batch: every notification ended alike (delivered), so status and reason go once.
_SETTLE_ALIKE = text(
    """
    WITH s AS (
        UPDATE notifications n
        SET status = CAST(:status AS text), finished_at = :now,
            last_error = CAST(:error AS text)
        WHERE n.id = ANY(CAST(:ids AS text[])) AND n.status = 'pending'
        RETURNING 1
    ), d AS (
        DELETE FROM dispatches WHERE id = ANY(CAST(:done AS bigint[]))
    )
    SELECT count(*) FROM s
    """
)


async def settle(
    db: Database,
    outcomes: Sequence[tuple[str, str, str | None]],
    *,
    now_ms: int,
    done: Sequence[int] = (),
) -> None:
    """End notifications: ``(id, status, reason)`` each, status ``delivered``, ``rejected`` or
    ``failed``; delete the claimed dispatches ``done`` (PostgreSQL: one statement, which
    commits on its own)."""
    if not outcomes and not done:
        return
    if db.dialect == "postgresql":
        ordered = sorted(outcomes)  # every writer of these rows locks them in id order
        endings = {(o[1], None if o[2] is None else o[2][:512]) for o in ordered}
        params: dict[str, Any] = {
            "now": now_ms,
            "ids": [o[0] for o in ordered],
            "done": sorted(done),
        }
        if len(endings) == 1:
            [(status, error)] = endings
            statement = _SETTLE_ALIKE
            params |= {"status": status, "error": error}
        else:
            statement = _SETTLE
            params["statuses"] = [o[1] for o in ordered]
            params["errors"] = [None if o[2] is None else o[2][:512] for o in ordered]
        for attempt in range(3):
            try:
                await db.fetch_all(statement, params)
                return
            except asyncpg.DeadlockDetectedError:
                # PostgreSQL undid this statement alone: doing it again settles the batch
                # (what the gateway took must not go back to be sent twice).
                if attempt == 2:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        return
    if db.sqlite_direct:
        await db.sqlite(partial(_sqlite_settle, outcomes, now_ms, sorted(done)), write=True)
        return
    async with db.write() as conn:
        if outcomes:
            await conn.execute(
                update(notifications)
                .where(notifications.c.id == bindparam("nid"), notifications.c.status == "pending")
                .values(status=bindparam("st"), finished_at=now_ms, last_error=bindparam("reason")),
                [
                    {"nid": i, "st": st, "reason": None if e is None else e[:512]}
                    for i, st, e in outcomes
                ],
            )
        await drop_dispatches(conn, done)


async def finish_each(
    conn: AsyncConnection, reasons: Mapping[str, str], *, status: str, now_ms: int
) -> None:
    """End notifications with a reason each (one statement for all of them)."""
    if reasons:
        await conn.execute(
            update(notifications)
            .where(notifications.c.id == bindparam("nid"), notifications.c.status == "pending")
            .values(
                status=status,
                finished_at=now_ms,
                last_error=bindparam("reason"),
            ),
            [{"nid": ident, "reason": reason[:512]} for ident, reason in reasons.items()],
        )


async def release(
    conn: AsyncConnection,
    rows: Sequence[Claimed],
    *,
    next_attempt_at: int,
    error: str | None,
    count_attempt: bool,
    remaining: Mapping[int, Collection[str]],
) -> None:
    """Give claimed notifications back for a later attempt: new dispatches for them, due at
    ``next_attempt_at``; the dispatches they came from keep only ``remaining[dispatch]`` (the
    ids still claimed through them), or go when nothing remains."""
    if rows:
        await _give_back(conn, rows, next_attempt_at, error, count_attempt)
    postgres = conn.dialect.name == "postgresql"
    await drop_dispatches(conn, (d for d, rest in remaining.items() if not rest))
    for dispatch_id, rest in sorted(remaining.items()):
        if rest:
            await conn.execute(
                update(dispatches)
                .where(dispatches.c.id == dispatch_id)
                .values(notification_ids=sorted(rest) if postgres else _json_list(sorted(rest)))
            )


async def _give_back(
    conn: AsyncConnection,
    rows: Sequence[Claimed],
    next_attempt_at: int,
    error: str | None,
    count_attempt: bool,
) -> None:
    ids = [r.id for r in rows]
    values: dict[str, Any] = {
        "next_attempt_at": next_attempt_at,
        "last_error": None if error is None else error[:512],
    }
    if count_attempt:
        values["attempts"] = notifications.c.attempts + 1
    await conn.execute(
        update(notifications)
        .where(_among(conn, notifications.c.id, ids), notifications.c.status == "pending")
        .values(**values)
    )
    postgres = conn.dialect.name == "postgresql"
    await conn.execute(
        insert(dispatches),
        [
            {
                "gateway": gateway,
                "notification_ids": group if postgres else _json_list(group),
                "next_attempt_at": next_attempt_at,
                "last_error": None if error is None else error[:512],
                "created_at": created,
            }
            for gateway, group, _, created in _dispatch_groups(
                [
                    {
                        "id": r.id,
                        "gateway": r.gateway,
                        "encrypted": r.encrypted,
                        "next_attempt_at": next_attempt_at,
                        "created_at": r.created_at,
                    }
                    for r in rows
                ]
            )
        ],
    )


async def pending_for_pushers(conn: AsyncConnection, pusher_ids: Sequence[int]) -> list[str]:
    """The pending notifications of these pushers."""
    if not pusher_ids:
        return []
    result = await conn.execute(
        select(notifications.c.id).where(
            notifications.c.pusher_id.in_(list(pusher_ids)),
            notifications.c.status == "pending",
        )
    )
    return [r[0] for r in result]


_NEXT_DUE = text(
    """
    SELECT next_attempt_at FROM dispatches
    WHERE lease_expires_at IS NULL OR lease_expires_at <= :now
    ORDER BY next_attempt_at
    LIMIT 1
    """
)


async def next_due(db: Database, now_ms: int) -> int | None:
    """When the earliest dispatch that is not in flight is due (epoch ms), or None.
    (A dead worker's leases are found by the worker's idle poll once they run out.)

    One statement on its own (no BEGIN and COMMIT): a busy worker asks this each time it finds
    nothing to claim, several times a second."""
    rows = await db.fetch_all(_NEXT_DUE, {"now": now_ms})
    return int(rows[0][0]) if rows else None  # next_attempt_at is NOT NULL


def _id_count(conn: AsyncConnection) -> Any:
    column = dispatches.c.notification_ids
    if conn.dialect.name == "postgresql":
        return func.cardinality(column)
    return func.json_array_length(column)


async def queue_stats(conn: AsyncConnection) -> tuple[int, int | None]:
    """``(notifications waiting, created_at of the oldest)``, from the dispatches: what waits
    to be sent or is in flight (a notification that ended outside delivery, a deregistered
    device's, counts until its dispatch is next claimed)."""
    row = (
        await conn.execute(
            select(func.coalesce(func.sum(_id_count(conn)), 0), func.min(dispatches.c.created_at))
        )
    ).one()
    return int(row[0]), (None if row[1] is None else int(row[1]))


async def oldest_pending(conn: AsyncConnection) -> int | None:
    """``created_at`` (ms) of the oldest waiting notification, or None when nothing waits."""
    value = await conn.scalar(select(func.min(dispatches.c.created_at)))
    return None if value is None else int(value)


async def event_counts(conn: AsyncConnection, event_id: str) -> tuple[Any, dict[str, int]] | None:
    """An event row and its notifications counted by status, or None."""
    event = (
        await conn.execute(
            select(events.c.id, events.c.channel, events.c.created_at).where(
                events.c.id == event_id
            )
        )
    ).first()
    if event is None:
        return None
    result = await conn.execute(
        select(notifications.c.status, func.count())
        .where(notifications.c.event_id == event_id)
        .group_by(notifications.c.status)
    )
    return event, {row[0]: int(row[1]) for row in result}


async def failed(conn: AsyncConnection, limit: int) -> list[Any]:
    """The most recent failed notifications, newest first, with their pusher's stored user id,
    app_id, pushkey index and sealed pushkey (None: the pusher is gone)."""
    result = await conn.execute(
        select(
            notifications.c.id,
            notifications.c.event_id,
            pushers.c.user_id,
            pushers.c.app_id,
            pushers.c.pushkey,
            pushers.c.pushkey_sealed,
            notifications.c.gateway,
            notifications.c.attempts,
            notifications.c.last_error,
            notifications.c.created_at,
            notifications.c.finished_at,
        )
        .select_from(notifications.outerjoin(pushers, pushers.c.id == notifications.c.pusher_id))
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
        .join(pushers, pushers.c.id == notifications.c.pusher_id)
        .where(
            pushers.c.user_id == user_id,
            pushers.c.pushkey == pushkey,
            events.c.history.is_(True),
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
    """The newest event of ``user_id`` with this identifier that is still in the history."""
    result = await conn.execute(
        select(events.c.id, events.c.identifier, events.c.payload)
        .where(
            events.c.user_id == user_id,
            events.c.identifier == identifier,
            events.c.history.is_(True),
            events.c.payload.is_not(None),
        )
        .order_by(events.c.created_at.desc())
        .limit(1)
    )
    return result.first()


PRUNE_CHUNK = 5000  # rows per statement: short transactions, no long locks, no bloat burst
# On PostgreSQL one worker process prunes at a time (each chunk tries this advisory lock first).
# Every worker process prunes on the same interval, and processes started together do so at the
# same moment: side by side they selected the same chunk, one waited for the other's row locks
# and wrote the same rows again. A process that finds another pruning skips its pass. SQLite
# writes one transaction at a time anyway.
PRUNE_LOCK = "fdpush:pruning"


# Whether an event still has a notification to send (its payload is needed until then).
_PENDING = exists().where(
    notifications.c.event_id == events.c.id, notifications.c.status == "pending"
)


async def forget_payloads(
    db: Database,
    *,
    history_before_ms: int,
    sent_before_ms: int,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Forget the payloads no longer needed, a chunk of ``PRUNE_CHUNK`` per transaction; how
    many. ``on_chunk`` hears how many each chunk forgot, once it committed.

    A payload is kept while a notification of its event is pending; then until
    ``history_before_ms`` for history events, until ``sent_before_ms`` for the others. The
    chunks walk the events that still hold a payload (revision 0009's index) in id order, each
    from where the last stopped. One statement for all of them rewrote 129,500 event rows in a
    2.8 s transaction after a backlog of 200,000 notifications, and walked every event kept.
    On PostgreSQL each chunk is one statement (``_FORGET_CHUNK``); while another process prunes,
    this pass stops and leaves the rest to it.
    """
    if db.dialect == "postgresql":
        return await _chunk_by_chunk(
            db,
            _FORGET_CHUNK,
            {"history_before": history_before_ms, "sent_before": sent_before_ms},
            on_chunk,
        )
    forgotten, after = 0, ""
    while True:
        unneeded = (
            select(events.c.id)
            .where(
                events.c.payload.is_not(None),
                events.c.id > after,
                or_(
                    and_(events.c.history.is_(True), events.c.created_at < history_before_ms),
                    and_(events.c.history.is_(False), events.c.created_at < sent_before_ms),
                ),
                ~_PENDING,
            )
            .order_by(events.c.id)
            .limit(PRUNE_CHUNK)
        )
        async with db.write() as conn:
            ids = [r[0] for r in await conn.execute(unneeded)]
            if ids:
                await conn.execute(
                    update(events).where(_among(conn, events.c.id, ids)).values(payload=None)
                )
        forgotten += len(ids)
        if on_chunk is not None:
            on_chunk(len(ids))
        if len(ids) < PRUNE_CHUNK:
            return forgotten
        after = ids[-1]


async def prune(
    db: Database,
    *,
    history_before_ms: int,
    outbox_before_ms: int,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Delete the finished events past the retention, with their notifications, a chunk of
    ``PRUNE_CHUNK`` events per transaction; how many. ``on_chunk`` hears how many each chunk
    deleted, once it committed.

    Events older than both retentions go. (Their payloads went long before:
    :func:`forget_payloads`.) On PostgreSQL each chunk is one statement (``_PRUNE_CHUNK``);
    while another process prunes, this pass stops and leaves the rest to it.
    """
    before = min(history_before_ms, outbox_before_ms)
    if db.dialect == "postgresql":
        return await _chunk_by_chunk(db, _PRUNE_CHUNK, {"before": before}, on_chunk)
    old = select(events.c.id).where(events.c.created_at < before, ~_PENDING).limit(PRUNE_CHUNK)
    deleted = 0
    while True:
        async with db.write() as conn:
            ids = [r[0] for r in await conn.execute(old)]
            if ids:
                await conn.execute(
                    delete(notifications).where(_among(conn, notifications.c.event_id, ids))
                )
                await conn.execute(delete(events).where(_among(conn, events.c.id, ids)))
        deleted += len(ids)
        if on_chunk is not None:
            on_chunk(len(ids))
        if len(ids) < PRUNE_CHUNK:
            return deleted


# PostgreSQL: a chunk of the pruning as one statement that commits on its own. It finds its
# rows and changes them in the database, one round trip, no ids sent back and forth. ``turn``
# tries ``PRUNE_LOCK``; without it the chunk is empty. The answer: whether this
# process had its turn, how many rows, and the last id (where the next chunk of forgetting
# starts; deleted events are gone, so the next chunk of deleting finds the rest by age).
_TURN = "turn AS (SELECT pg_try_advisory_xact_lock(CAST(:lock AS bigint)) AS mine)"
# ``OFFSET 0`` keeps this a lookup per event (by the event_id index): as an anti join, the
# planner merged the whole index of notifications with the events for every chunk.
_NOT_PENDING = """NOT EXISTS (
    SELECT 1 FROM notifications n WHERE n.event_id = e.id AND n.status = 'pending' OFFSET 0
)"""
_FORGET_CHUNK = text(
    f"""
    WITH {_TURN}, chunk AS (
        SELECT e.id FROM events e
        WHERE (SELECT mine FROM turn) AND e.payload IS NOT NULL AND e.id > CAST(:after AS text)
          AND CASE WHEN e.history THEN e.created_at < CAST(:history_before AS bigint)
                   ELSE e.created_at < CAST(:sent_before AS bigint) END
          AND {_NOT_PENDING}
        ORDER BY e.id
        LIMIT CAST(:limit AS integer)
    ), forgotten AS (
        UPDATE events SET payload = NULL WHERE id IN (SELECT id FROM chunk)
    )
    SELECT (SELECT mine FROM turn), count(*), max(id) FROM chunk
    """  # noqa: S608 (our own text only)
)
_PRUNE_CHUNK = text(
    f"""
    WITH {_TURN}, chunk AS (
        SELECT e.id FROM events e
        WHERE (SELECT mine FROM turn) AND e.created_at < CAST(:before AS bigint)
          AND {_NOT_PENDING}
        LIMIT CAST(:limit AS integer)
    ), n AS (
        DELETE FROM notifications WHERE event_id IN (SELECT id FROM chunk)
    ), gone AS (
        DELETE FROM events WHERE id IN (SELECT id FROM chunk)
    )
    SELECT (SELECT mine FROM turn), count(*), max(id) FROM chunk
    """  # noqa: S608 (our own text only)
)


async def _chunk_by_chunk(
    db: Database,
    statement: TextClause,
    params: Mapping[str, Any],
    on_chunk: Callable[[int], None] | None,
) -> int:
    """Run a pruning chunk statement until a chunk is short; the rows it changed in all."""
    done, after = 0, ""
    while True:
        [(mine, found, last)] = await db.fetch_all(
            statement,
            {**params, "lock": lock_id(PRUNE_LOCK), "after": after, "limit": PRUNE_CHUNK},
        )
        if not mine:
            return done  # another process is pruning: the rest is left to it
        count = int(found)
        done += count
        if on_chunk is not None:
            on_chunk(count)
        if count < PRUNE_CHUNK:
            return done
        after = last


async def resume(conn: AsyncConnection, gateway: str, marker: str, *, now_ms: int) -> int:
    """Make a recovered gateway's dispatches that wait for it (their ``last_error`` starts with
    ``marker``) due now; returns how many."""
    result = await conn.execute(
        update(dispatches)
        .where(
            dispatches.c.gateway == gateway,
            dispatches.c.next_attempt_at > now_ms,
            dispatches.c.lease_owner.is_(None),  # not the ones in flight right now
            dispatches.c.last_error.startswith(marker, autoescape=True),
        )
        .values(next_attempt_at=now_ms)
        .returning(_id_count(conn))
    )
    return sum(int(count or 0) for (count,) in result)


# --- SQLite: the hot statements on the direct connection (Database.sqlite) ---------------------
#
# The same statements as above, in SQLite's SQL; a list goes in as one JSON array
# (``IN (SELECT value FROM json_each(?))``): one statement text, whatever its length.

_SQLITE_RECIPIENTS = """
    SELECT id, user_id, pushkey, data, key_identifier FROM pushers
    WHERE user_id IN (SELECT value FROM json_each(?)) ORDER BY id
"""
_SQLITE_CHOICES = """
    SELECT user_id, pushkey, channel_id, status FROM channel_states
    WHERE user_id IN (SELECT value FROM json_each(?))
      AND channel_id IN (SELECT value FROM json_each(?))
"""
_SQLITE_INSERT_EVENTS = (
    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) "  # noqa: S608 - our own names only
    f"VALUES ({', '.join('?' for _ in _EVENT_COLUMNS)})"
)
_SQLITE_INSERT_NOTIFICATIONS = (
    f"INSERT INTO notifications ({', '.join(_NOTIFICATION_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in _NOTIFICATION_COLUMNS)})"
)
_SQLITE_INSERT_DISPATCH = """
    INSERT INTO dispatches (gateway, notification_ids, next_attempt_at, created_at)
    VALUES (?, ?, ?, ?)
"""
_SQLITE_CLAIM = """
    UPDATE dispatches SET lease_owner = ?, lease_expires_at = ?
    WHERE id IN (
        SELECT id FROM dispatches
        WHERE next_attempt_at <= ? AND (lease_expires_at IS NULL OR lease_expires_at <= ?)
          AND gateway NOT IN (SELECT value FROM json_each(?))
        ORDER BY next_attempt_at LIMIT ?
    )
    RETURNING id, notification_ids
"""
_SQLITE_CLAIMED = """
    SELECT id, event_id, pusher_id, gateway, encrypted, body, attempts, created_at
    FROM notifications WHERE id IN (SELECT value FROM json_each(?)) AND status = 'pending'
"""
_SQLITE_DROP_DISPATCHES = "DELETE FROM dispatches WHERE id IN (SELECT value FROM json_each(?))"
_SQLITE_TARGETS = """
    SELECT id, user_id, app_id, pushkey, pushkey_ts, data, key_identifier, pushkey_sealed
    FROM pushers WHERE id IN (SELECT value FROM json_each(?))
"""
_SQLITE_GENERATIONS = """
    SELECT pusher_id, period, material FROM pusher_keys
    WHERE pusher_id IN (SELECT value FROM json_each(?)) ORDER BY pusher_id, period
"""
_SQLITE_EVENT_BODIES = """
    SELECT id, prio, identifier, payload, user_id FROM events
    WHERE id IN (SELECT value FROM json_each(?))
"""
_SQLITE_SETTLE = """
    UPDATE notifications SET status = ?, finished_at = ?, last_error = ?
    WHERE id = ? AND status = 'pending'
"""


def _json_list(values: Iterable[Any]) -> str:
    return orjson.dumps(list(values)).decode()


def _sqlite_recipients(
    user_ids: list[str], channel_ids: list[str], conn: sqlite3.Connection
) -> tuple[list[Recipient], dict[tuple[str, str, str], str]]:
    users = _json_list(user_ids)
    found = [Recipient(*r) for r in conn.execute(_SQLITE_RECIPIENTS, (users,))]
    states = {
        (r[0], r[1], r[2]): r[3]
        for r in conn.execute(_SQLITE_CHOICES, (users, _json_list(channel_ids)))
    }
    return found, states


def _sqlite_insert(
    event_rows: Sequence[Mapping[str, Any]],
    notification_rows: Sequence[Mapping[str, Any]],
    conn: sqlite3.Connection,
) -> None:
    conn.executemany(
        _SQLITE_INSERT_EVENTS, [tuple(row[c] for c in _EVENT_COLUMNS) for row in event_rows]
    )
    if notification_rows:
        conn.executemany(
            _SQLITE_INSERT_NOTIFICATIONS,
            [tuple(row[c] for c in _NOTIFICATION_COLUMNS) for row in notification_rows],
        )
        conn.executemany(
            _SQLITE_INSERT_DISPATCH,
            [
                (gateway, _json_list(ids), due, created)
                for gateway, ids, due, created in _dispatch_groups(notification_rows)
            ],
        )


def _sqlite_claim(
    owner: str, now_ms: int, until_ms: int, limit: int, skip: list[str], conn: sqlite3.Connection
) -> Leased:
    leased = conn.execute(
        _SQLITE_CLAIM, (owner, until_ms, now_ms, now_ms, _json_list(skip), _dispatch_limit(limit))
    ).fetchall()
    full = len(leased) >= _dispatch_limit(limit)
    if not leased:
        return Leased([], {}, {}, full)
    of: dict[str, int] = {}
    for dispatch_id, ids in leased:
        for ident in orjson.loads(ids):
            of.setdefault(ident, dispatch_id)
    claimed = [
        Claimed(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7], of[r[0]])
        for r in conn.execute(_SQLITE_CLAIMED, (_json_list(sorted(of)),))
    ]
    empty = {d for d, _ in leased} - {c.dispatch for c in claimed}
    if empty:
        conn.execute(_SQLITE_DROP_DISPATCHES, (_json_list(sorted(empty)),))
    if not claimed:
        return Leased([], {}, {}, full)
    pusher_ids = _json_list(sorted({r.pusher_id for r in claimed if r.pusher_id is not None}))
    generations: dict[int, list[tuple[str, bytes]]] = {}
    for pusher_id, period, material in conn.execute(_SQLITE_GENERATIONS, (pusher_ids,)):
        generations.setdefault(pusher_id, []).append((period, material))
    targets = {
        r[0]: Target(
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(generations.get(r[0], ())), r[7]
        )
        for r in conn.execute(_SQLITE_TARGETS, (pusher_ids,))
    }
    event_ids = _json_list(sorted({r.event_id for r in claimed}))
    bodies = {r[0]: EventBody(*r) for r in conn.execute(_SQLITE_EVENT_BODIES, (event_ids,))}
    return Leased(claimed, targets, bodies, full)


def _sqlite_settle(
    outcomes: Sequence[tuple[str, str, str | None]],
    now_ms: int,
    done: list[int],
    conn: sqlite3.Connection,
) -> None:
    conn.executemany(
        _SQLITE_SETTLE,
        [(st, now_ms, None if e is None else e[:512], i) for i, st, e in outcomes],
    )
    if done:
        conn.execute(_SQLITE_DROP_DISPATCHES, (_json_list(done),))
