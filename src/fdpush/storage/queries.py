"""The SQL of the Client-FD API: pushers, their key generations, channel states, the audit log.

Every function takes an open connection or transaction, so the domain layer decides what runs
in one transaction; the one exception, ``device_states``, is a single statement that needs
none. A registration's statements run in a ``Database.transaction`` (on PostgreSQL straight
through asyncpg), so they are statements built once, with parameters bound by name.
Nothing here enforces a rule of the concept; it only stores and fetches. A ``user_id`` here is
what the tables hold, the user's keyed pseudonym, and a ``pushkey`` the pushkey's keyed index;
the pushkey itself is only stored sealed (``pushkey_sealed``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    null,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from fdpush.storage.database import Database, Transaction
from fdpush.storage.schema import (
    audit_log,
    channel_states,
    events,
    notifications,
    pusher_keys,
    pushers,
)

__all__ = [
    "PusherRow",
    "PusherWrite",
    "UserRecord",
    "claim_slot",
    "delete_device_states",
    "delete_pusher",
    "device_exists",
    "device_states",
    "erase_user",
    "list_pushers",
    "pusher_slot",
    "record_audit",
    "remove_other_users_pushers",
    "replace_keys",
    "save_alone",
    "save_pusher",
    "save_registration",
    "set_states",
    "stored_user_id",
    "user_record",
]


def _now() -> datetime:
    return datetime.now(UTC)


def _statements(conn: AsyncConnection | Transaction) -> Transaction:
    return conn if isinstance(conn, Transaction) else Transaction(conn)


@dataclass(frozen=True, slots=True)
class PusherRow:
    id: int
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]
    pushkey_ts: int
    encryption_method: str | None
    key_identifier: str | None
    pushkey_sealed: bytes | None  # the pushkey, sealed bound to (user_id, app_id, pushkey)


def _row(row: Any) -> PusherRow:
    return PusherRow(
        id=row.id,
        user_id=row.user_id,
        app_id=row.app_id,
        pushkey=row.pushkey,
        kind=row.kind,
        app_display_name=row.app_display_name,
        device_display_name=row.device_display_name,
        profile_tag=row.profile_tag,
        lang=row.lang,
        data=orjson.loads(row.data),
        pushkey_ts=row.pushkey_ts,
        encryption_method=row.encryption_method,
        key_identifier=row.key_identifier,
        pushkey_sealed=None if row.pushkey_sealed is None else bytes(row.pushkey_sealed),
    )


_PUSHER_COLUMNS = [c for c in pushers.c if c.name not in ("created_at", "updated_at")]


async def list_pushers(conn: AsyncConnection, user_id: str) -> list[PusherRow]:
    """A user's pushers in the order they were first registered."""
    result = await conn.execute(
        select(*_PUSHER_COLUMNS).where(pushers.c.user_id == user_id).order_by(pushers.c.id)
    )
    return [_row(r) for r in result]


# Statements built once: building one per call (and computing its cache key) cost the write
# path more than executing it. Parameters are bound by name at execution.
_PUSHER_SLOT = select(
    select(pushers.c.id)
    .where(
        pushers.c.user_id == bindparam("user_id"),
        pushers.c.app_id == bindparam("app_id"),
        pushers.c.pushkey == bindparam("pushkey"),
    )
    .scalar_subquery()
    .label("existing"),
    select(func.count())
    .select_from(pushers)
    .where(pushers.c.user_id == bindparam("user_id"))
    .scalar_subquery()
    .label("pushers"),
)
_INSERT_PUSHER = insert(pushers).returning(pushers.c.id)
_UPDATE_PUSHER = update(pushers).where(pushers.c.id == bindparam("pusher_id"))
_DELETE_KEYS = delete(pusher_keys).where(pusher_keys.c.pusher_id == bindparam("pusher_id"))
_INSERT_KEYS = insert(pusher_keys)
# Every column named: a statement sent to asyncpg as compiled has no column list of its own.
_INSERT_AUDIT = insert(audit_log).values(
    {c: bindparam(c.name, type_=c.type) for c in audit_log.c if c.name != "id"}
)


async def pusher_slot(
    conn: AsyncConnection | Transaction, user_id: str, app_id: str, pushkey: str
) -> tuple[int | None, int]:
    """The id of the user's pusher with this app_id and pushkey (None when there is none), and
    how many pushers the user has: in one round trip."""
    existing, count = (
        await _statements(conn).fetch(
            _PUSHER_SLOT, {"user_id": user_id, "app_id": app_id, "pushkey": pushkey}
        )
    )[0]
    return (None if existing is None else int(existing)), int(count)


@dataclass(frozen=True, slots=True)
class PusherRef:
    id: int
    user_id: str
    app_id: str
    data: str


async def pushers_with_pushkey(conn: AsyncConnection, pushkey: str) -> list[PusherRef]:
    """Every pusher, of any user and app, with this pushkey."""
    result = await conn.execute(
        select(pushers.c.id, pushers.c.user_id, pushers.c.app_id, pushers.c.data).where(
            pushers.c.pushkey == pushkey
        )
    )
    return [PusherRef(*r) for r in result]


_DEVICE_EXISTS = select(
    exists().where(
        pushers.c.user_id == bindparam("user_id"), pushers.c.pushkey == bindparam("pushkey")
    )
)


async def device_exists(conn: AsyncConnection | Transaction, user_id: str, pushkey: str) -> bool:
    """Whether the user has any pusher (of any app) with this pushkey."""
    rows = await _statements(conn).fetch(_DEVICE_EXISTS, {"user_id": user_id, "pushkey": pushkey})
    return bool(rows[0][0])


_REMOVE_OTHER_USERS_PUSHERS = (
    delete(pushers)
    .where(
        pushers.c.app_id == bindparam("app_id"),
        pushers.c.pushkey == bindparam("pushkey"),
        pushers.c.user_id != bindparam("user_id"),
    )
    .returning(pushers.c.user_id)
)


async def remove_other_users_pushers(
    conn: AsyncConnection | Transaction, user_id: str, app_id: str, pushkey: str
) -> list[str]:
    """Delete the pushers with this app_id and pushkey of every *other* user; return those users."""
    rows = await _statements(conn).fetch(
        _REMOVE_OTHER_USERS_PUSHERS, {"user_id": user_id, "app_id": app_id, "pushkey": pushkey}
    )
    return sorted({row[0] for row in rows})


async def save_pusher(
    conn: AsyncConnection,
    existing: int | None,
    *,
    user_id: str,
    app_id: str,
    pushkey: str,
    pushkey_sealed: bytes,
    values: Mapping[str, Any],
) -> int:
    """Update pusher ``existing`` in place, or create the pusher (with its sealed pushkey) when
    it is None; return its id.

    The caller holds the locks that make check-then-write safe (see ``Database.write``).
    """
    now = _now()
    stored = {**values, "data": orjson.dumps(values["data"]).decode("utf-8"), "updated_at": now}
    if existing is not None:
        await conn.execute(_UPDATE_PUSHER, {**stored, "pusher_id": existing})
        return existing
    result = await conn.execute(
        _INSERT_PUSHER,
        {
            "user_id": user_id,
            "app_id": app_id,
            "pushkey": pushkey,
            "pushkey_sealed": pushkey_sealed,
            "created_at": now,
            **stored,
        },
    )
    return int(result.scalar_one())


# PostgreSQL: "which pusher, how many, and remove the other users' same pushers" in one round
# trip. The reads look only at the caller's pushers, which the DELETE does not touch.
_PG_SLOT_AND_REMOVE = text(
    """
    WITH removed AS (
        DELETE FROM pushers
        WHERE app_id = :app_id AND pushkey = :pushkey AND user_id <> :user_id AND :remove
        RETURNING user_id
    )
    SELECT
        (SELECT id FROM pushers
         WHERE user_id = :user_id AND app_id = :app_id AND pushkey = :pushkey) AS existing,
        (SELECT count(*) FROM pushers WHERE user_id = :user_id) AS pushers,
        ARRAY(SELECT DISTINCT user_id FROM removed ORDER BY user_id) AS removed
    """
)

# Both writes of a registration end the same way: the pusher's key generation, then the audit
# record (``p`` is the pusher row the statement wrote).
_KEY_AND_AUDIT = """
    k AS (
        INSERT INTO pusher_keys (pusher_id, period, material)
        SELECT p.id, CAST(:period AS varchar), CAST(:material AS bytea) FROM p
        WHERE CAST(:period AS varchar) IS NOT NULL
        ON CONFLICT (pusher_id, period) DO UPDATE SET material = EXCLUDED.material
    )
    INSERT INTO audit_log (at, action, actor, user_id, app_id, pushkey_hash, detail)
    SELECT CAST(:now AS timestamptz), CAST(:action AS varchar), CAST(:user_id AS varchar),
        CAST(:user_id AS varchar), CAST(:app_id AS varchar), CAST(:pushkey AS varchar),
        CAST(:detail AS text)
    FROM p
"""
# PostgreSQL: the pusher (created or updated), its key generation and the audit record in one
# round trip. Key generations other than the new one go; a re-registration in the same month
# replaces that month's material.
_PG_CREATE_HEAD = """
    WITH p AS (
        INSERT INTO pushers (user_id, app_id, pushkey, pushkey_sealed, kind, app_display_name,
            device_display_name, profile_tag, lang, data, pushkey_ts, encryption_method,
            key_identifier, created_at, updated_at)
        VALUES (:user_id, :app_id, :pushkey, :pushkey_sealed, :kind, :app_display_name,
            :device_display_name, :profile_tag, :lang, :data, :pushkey_ts, :encryption_method,
            :key_identifier, :now, :now)
        RETURNING id
    ),
    """
_PG_UPDATE_HEAD = """
    WITH p AS (
        UPDATE pushers SET kind = :kind, app_display_name = :app_display_name,
            device_display_name = :device_display_name, profile_tag = :profile_tag,
            lang = :lang, data = :data, pushkey_ts = :pushkey_ts,
            encryption_method = :encryption_method, key_identifier = :key_identifier,
            updated_at = :now
        WHERE id = :pusher_id
        RETURNING id
    ),
    gone AS (
        DELETE FROM pusher_keys WHERE pusher_id = :pusher_id
            AND period IS DISTINCT FROM CAST(:period AS varchar)
    ),
    """
# Our own constant texts, no input in them.
_PG_CREATE = text(_PG_CREATE_HEAD + _KEY_AND_AUDIT)
_PG_UPDATE = text(_PG_UPDATE_HEAD + _KEY_AND_AUDIT)


# PostgreSQL: the common registration in one round trip, when no other user's pusher is to be
# removed (then nothing is written and the caller goes step by step): the pusher created (while
# the user has fewer than :max_pushers) or updated, its key generation and the audit record.
_PG_SAVE_ALONE = text(
    """
    WITH slot AS (
        SELECT
            (SELECT id FROM pushers
             WHERE user_id = :user_id AND app_id = :app_id AND pushkey = :pushkey) AS existing,
            (SELECT count(*) FROM pushers WHERE user_id = :user_id) AS pushers,
            :remove AND EXISTS (
                SELECT 1 FROM pushers
                WHERE app_id = :app_id AND pushkey = :pushkey AND user_id <> :user_id
            ) AS shared
    ),
    go AS (
        SELECT existing FROM slot
        WHERE NOT shared AND (existing IS NOT NULL OR pushers < :max_pushers)
    ),
    updated AS (
        UPDATE pushers SET kind = :kind, app_display_name = :app_display_name,
            device_display_name = :device_display_name, profile_tag = :profile_tag,
            lang = :lang, data = :data, pushkey_ts = :pushkey_ts,
            encryption_method = :encryption_method, key_identifier = :key_identifier,
            updated_at = :now
        WHERE id = (SELECT existing FROM go)
        RETURNING id
    ),
    created AS (
        INSERT INTO pushers (user_id, app_id, pushkey, pushkey_sealed, kind, app_display_name,
            device_display_name, profile_tag, lang, data, pushkey_ts, encryption_method,
            key_identifier, created_at, updated_at)
        SELECT :user_id, :app_id, :pushkey, :pushkey_sealed, :kind, :app_display_name,
            :device_display_name, :profile_tag, :lang, :data, :pushkey_ts, :encryption_method,
            :key_identifier, :now, :now
        FROM go WHERE existing IS NULL
        RETURNING id
    ),
    p AS (SELECT id FROM updated UNION ALL SELECT id FROM created),
    gone AS (
        DELETE FROM pusher_keys WHERE pusher_id = (SELECT existing FROM go)
            AND period IS DISTINCT FROM CAST(:period AS varchar)
    ),
    k AS (
        INSERT INTO pusher_keys (pusher_id, period, material)
        SELECT p.id, CAST(:period AS varchar), CAST(:material AS bytea) FROM p
        WHERE CAST(:period AS varchar) IS NOT NULL
        ON CONFLICT (pusher_id, period) DO UPDATE SET material = EXCLUDED.material
    ),
    a AS (
        INSERT INTO audit_log (at, action, actor, user_id, app_id, pushkey_hash, detail)
        SELECT CAST(:now AS timestamptz),
            CASE WHEN (SELECT existing FROM go) IS NULL THEN 'pusher.created'
                ELSE 'pusher.updated' END,
            CAST(:user_id AS varchar), CAST(:user_id AS varchar), CAST(:app_id AS varchar),
            CAST(:pushkey AS varchar), CAST(:detail AS text)
        FROM p
    )
    SELECT existing, pushers, shared, EXISTS (SELECT 1 FROM p) AS saved FROM slot
    """
)


@dataclass(frozen=True, slots=True)
class PusherWrite:
    """A registration as stored: the user's pusher (``pushkey`` the keyed index, the pushkey
    itself sealed), its other columns, and its first key generation ``(period, sealed
    material)`` when it receives encrypted notifications."""

    user_id: str
    app_id: str
    pushkey: str
    pushkey_sealed: bytes
    values: Mapping[str, Any]
    generation: tuple[str, bytes] | None


@dataclass(frozen=True, slots=True)
class Saved:
    """What ``save_alone`` did: whether it saved, and the user's pusher and pusher count it
    found before (``existing`` None: it created the pusher, or had no room to)."""

    saved: bool
    existing: int | None
    pushers: int


async def save_alone(
    tx: Transaction,
    write: PusherWrite,
    *,
    detail: Mapping[str, Any],
    remove_others: bool,
    max_pushers: int,
) -> Saved | None:
    """``claim_slot`` and ``save_registration`` in one step, for the common case; None, with
    nothing written, when that is not the case: ``remove_others`` and another user has a
    pusher with this app_id and pushkey, or on SQLite (whose statements cost no round trip).

    It creates the pusher only while the user has fewer than ``max_pushers``; ``saved`` says
    whether it wrote."""
    if tx.dialect != "postgresql":
        return None
    existing, count, shared, saved = (
        await tx.fetch(
            _PG_SAVE_ALONE,
            {
                **_registration_params(write, detail, existing=None),
                "pushkey_sealed": write.pushkey_sealed,
                "remove": remove_others,
                "max_pushers": max_pushers,
            },
        )
    )[0]
    if shared:
        return None
    return Saved(bool(saved), None if existing is None else int(existing), int(count))


async def claim_slot(
    tx: Transaction, user_id: str, app_id: str, pushkey: str, *, remove_others: bool
) -> tuple[int | None, int, list[str]]:
    """The id of the user's pusher with this app_id and pushkey (None when none), how many
    pushers the user has, and, with ``remove_others``, the other users whose pusher with this
    app_id and pushkey was just deleted (sorted)."""
    if tx.dialect == "postgresql":
        existing, count, removed = (
            await tx.fetch(
                _PG_SLOT_AND_REMOVE,
                {"user_id": user_id, "app_id": app_id, "pushkey": pushkey, "remove": remove_others},
            )
        )[0]
        return (None if existing is None else int(existing)), int(count), list(removed)
    existing, count = await pusher_slot(tx, user_id, app_id, pushkey)
    removed = (
        await remove_other_users_pushers(tx, user_id, app_id, pushkey) if remove_others else []
    )
    return existing, count, removed


async def save_registration(
    tx: Transaction, existing: int | None, write: PusherWrite, *, detail: Mapping[str, Any]
) -> None:
    """Create (``existing`` None) or update the pusher, replace its key generations with the
    write's first one and record it in the audit log."""
    action = "pusher.created" if existing is None else "pusher.updated"
    if tx.dialect != "postgresql":
        conn = tx.connection
        assert conn is not None
        pusher_id = await save_pusher(
            conn,
            existing,
            user_id=write.user_id,
            app_id=write.app_id,
            pushkey=write.pushkey,
            pushkey_sealed=write.pushkey_sealed,
            values=write.values,
        )
        generations = [write.generation] if write.generation else []
        await replace_keys(conn, pusher_id, generations, new_pusher=existing is None)
        await record_audit(
            conn,
            action=action,
            actor=write.user_id,
            user_id=write.user_id,
            app_id=write.app_id,
            pushkey=write.pushkey,
            detail=detail,
        )
        return
    params = _registration_params(write, detail, existing=existing)
    if existing is None:
        await tx.execute(_PG_CREATE, {**params, "pushkey_sealed": write.pushkey_sealed})
    else:
        await tx.execute(_PG_UPDATE, {**params, "pusher_id": existing})


_DELETE_PUSHER = (
    delete(pushers)
    .where(
        pushers.c.user_id == bindparam("user_id"),
        pushers.c.app_id == bindparam("app_id"),
        pushers.c.pushkey == bindparam("pushkey"),
    )
    .returning(pushers.c.id)
)


def _registration_params(
    write: PusherWrite, detail: Mapping[str, Any], *, existing: int | None
) -> dict[str, Any]:
    generation = write.generation
    return {
        **write.values,
        "data": orjson.dumps(write.values["data"]).decode("utf-8"),
        "user_id": write.user_id,
        "app_id": write.app_id,
        "pushkey": write.pushkey,
        "now": _now(),
        "period": None if generation is None else generation[0],
        "material": None if generation is None else generation[1],
        "action": "pusher.created" if existing is None else "pusher.updated",
        "detail": orjson.dumps(detail).decode("utf-8"),
    }


async def delete_pusher(
    conn: AsyncConnection | Transaction, user_id: str, app_id: str, pushkey: str
) -> bool:
    """Delete the user's pusher (its key generations go with it); whether there was one."""
    rows = await _statements(conn).fetch(
        _DELETE_PUSHER, {"user_id": user_id, "app_id": app_id, "pushkey": pushkey}
    )
    return bool(rows)


async def replace_keys(
    conn: AsyncConnection,
    pusher_id: int,
    generations: Iterable[tuple[str, bytes]],
    *,
    new_pusher: bool = False,
) -> None:
    """Replace a pusher's stored key generations with ``(period, sealed material)`` pairs
    (``new_pusher``: it was created in this transaction and has none yet)."""
    if not new_pusher:
        await conn.execute(_DELETE_KEYS, {"pusher_id": pusher_id})
    rows = [{"pusher_id": pusher_id, "period": p, "material": m} for p, m in generations]
    if len(rows) == 1:
        await conn.execute(_INSERT_KEYS, rows[0])
    elif rows:
        await conn.execute(_INSERT_KEYS, rows)


# One statement (one round trip) for "is this the user's device, and what did it choose":
# a marker row (NULL, NULL) when the user has a pusher with this pushkey, then the states.
_DEVICE_STATES = union_all(
    select(null().label("channel_id"), null().label("status")).where(
        exists().where(
            pushers.c.user_id == bindparam("user_id"), pushers.c.pushkey == bindparam("pushkey")
        )
    ),
    select(channel_states.c.channel_id, channel_states.c.status).where(
        channel_states.c.user_id == bindparam("user_id"),
        channel_states.c.pushkey == bindparam("pushkey"),
    ),
)


async def device_states(db: Database, user_id: str, pushkey: str) -> dict[str, str] | None:
    """A device's explicit channel choices, or None when the user has no such device.

    The API's hottest read: it takes the database, not a connection, and runs on its own
    (``Database.fetch_all``).
    """
    rows = await db.fetch_all(_DEVICE_STATES, {"user_id": user_id, "pushkey": pushkey})
    if not any(channel is None for channel, _ in rows):
        return None
    return {channel: status for channel, status in rows if channel is not None}


async def set_states(
    conn: AsyncConnection, user_id: str, pushkey: str, changes: Mapping[str, str]
) -> None:
    """Set the named channels of a device, leaving the others as they are."""
    if not changes:
        return
    await conn.execute(
        delete(channel_states).where(
            and_(
                channel_states.c.user_id == user_id,
                channel_states.c.pushkey == pushkey,
                channel_states.c.channel_id.in_(list(changes)),
            )
        )
    )
    now = _now()
    await conn.execute(
        insert(channel_states),
        [
            {
                "user_id": user_id,
                "pushkey": pushkey,
                "channel_id": channel,
                "status": status,
                "updated_at": now,
            }
            for channel, status in changes.items()
        ],
    )


_DELETE_DEVICE_STATES = delete(channel_states).where(
    channel_states.c.user_id == bindparam("user_id"),
    channel_states.c.pushkey == bindparam("pushkey"),
)


async def delete_device_states(
    conn: AsyncConnection | Transaction, user_id: str, pushkey: str
) -> None:
    await _statements(conn).execute(_DELETE_DEVICE_STATES, {"user_id": user_id, "pushkey": pushkey})


async def record_audit(
    conn: AsyncConnection | Transaction,
    *,
    action: str,
    actor: str,
    user_id: str,
    app_id: str,
    pushkey: str,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Append an audit record (the pushkey as its keyed index). Never pass secrets in
    ``detail``."""
    await _statements(conn).execute(
        _INSERT_AUDIT,
        {
            "at": _now(),
            "action": action,
            "actor": actor,
            "user_id": user_id,
            "app_id": app_id,
            "pushkey_hash": pushkey,
            "detail": None if detail is None else orjson.dumps(detail).decode("utf-8"),
        },
    )


async def audit_records(conn: AsyncConnection, user_id: str) -> Sequence[Any]:
    """A user's audit records, oldest first (for operators and tests)."""
    result = await conn.execute(
        select(audit_log).where(audit_log.c.user_id == user_id).order_by(audit_log.c.id)
    )
    return list(result)


# --- data-subject requests (GDPR Art. 15 and 17) ---------------------------------------------


def stored_user_id(user_id: str) -> str:
    """How a user id is stored: the one place that maps the id a caller names to the rows'
    ``user_id`` (so a pseudonymised storage changes only this function)."""
    return user_id


def _plain(row: Any) -> dict[str, Any]:
    """A row as a dict with plain ``str`` keys (JSON encoders refuse SQLAlchemy's)."""
    return {str(k): v for k, v in row._mapping.items()}


@dataclass(frozen=True, slots=True)
class UserRecord:
    """Everything stored about one user, without key material (rows as plain dicts)."""

    pushers: list[dict[str, Any]]
    channel_states: list[dict[str, Any]]
    events: list[dict[str, Any]]
    audit: list[dict[str, Any]]


async def user_record(
    conn: AsyncConnection, user_id: str, *, events_limit: int | None
) -> UserRecord:
    """The user's pushers (their ``data`` and sealed pushkey, never their key generations),
    channel states, events with their notifications' outcomes (newest first; ``payload`` as
    stored: sealed, or None once forgotten), and the audit records that name the user."""
    stored = stored_user_id(user_id)
    pusher_rows = await conn.execute(
        select(
            pushers.c.id,
            pushers.c.app_id,
            pushers.c.pushkey,
            pushers.c.kind,
            pushers.c.app_display_name,
            pushers.c.device_display_name,
            pushers.c.profile_tag,
            pushers.c.lang,
            pushers.c.data,
            pushers.c.pushkey_ts,
            pushers.c.encryption_method,
            pushers.c.key_identifier,
            pushers.c.created_at,
            pushers.c.updated_at,
            pushers.c.pushkey_sealed,
            select(func.max(notifications.c.finished_at))
            .where(
                notifications.c.pusher_id == pushers.c.id,
                notifications.c.status == "delivered",
            )
            .scalar_subquery()
            .label("last_delivery_ms"),
        )
        .where(pushers.c.user_id == stored)
        .order_by(pushers.c.id)
    )
    found_pushers = [_plain(r) for r in pusher_rows]
    for row in found_pushers:
        row["data"] = orjson.loads(row["data"])
    states = await conn.execute(
        select(
            channel_states.c.pushkey,
            channel_states.c.channel_id,
            channel_states.c.status,
            channel_states.c.updated_at,
        )
        .where(channel_states.c.user_id == stored)
        .order_by(channel_states.c.pushkey, channel_states.c.channel_id)
    )
    event_query = (
        select(
            events.c.id,
            events.c.channel,
            events.c.prio,
            events.c.identifier,
            events.c.created_at,
            events.c.history,
            events.c.payload,
        )
        .where(events.c.user_id == stored)
        .order_by(events.c.created_at.desc(), events.c.id)
    )
    if events_limit is not None:
        event_query = event_query.limit(events_limit)
    found_events = [_plain(r) for r in await conn.execute(event_query)]
    by_event: dict[str, list[dict[str, Any]]] = {e["id"]: [] for e in found_events}
    if by_event:
        outcomes = await conn.execute(
            select(
                notifications.c.event_id,
                notifications.c.pusher_id,
                notifications.c.status,
                notifications.c.attempts,
                notifications.c.last_error,
                notifications.c.created_at,
                notifications.c.finished_at,
            )
            .where(notifications.c.event_id.in_(list(by_event)))
            .order_by(notifications.c.created_at, notifications.c.id)
        )
        for r in outcomes:
            entry = _plain(r)
            by_event[entry.pop("event_id")].append(entry)
    for event in found_events:
        event["notifications"] = by_event[event["id"]]
    audit = await conn.execute(
        select(
            audit_log.c.at,
            audit_log.c.action,
            audit_log.c.actor,
            audit_log.c.user_id,
            audit_log.c.app_id,
            audit_log.c.pushkey_hash,
            audit_log.c.detail,
        )
        .where((audit_log.c.user_id == stored) | (audit_log.c.actor == stored))
        .order_by(audit_log.c.id)
    )
    return UserRecord(
        pushers=found_pushers,
        channel_states=[_plain(r) for r in states],
        events=found_events,
        audit=[_plain(r) for r in audit],
    )


async def erase_user(conn: AsyncConnection, user_id: str) -> dict[str, int]:
    """Delete every row about the user (notifications, events, key generations, pushers,
    channel states, the audit records about them; where the user caused a change to another
    user's pusher, the actor becomes ``erased``). How many rows of each kind went."""
    stored = stored_user_id(user_id)
    user_pushers = select(pushers.c.id).where(pushers.c.user_id == stored)
    user_events = select(events.c.id).where(events.c.user_id == stored)
    counts: dict[str, int] = {}
    result = await conn.execute(
        delete(notifications).where(
            notifications.c.event_id.in_(user_events) | notifications.c.pusher_id.in_(user_pushers)
        )
    )
    counts["notifications"] = result.rowcount
    counts["events"] = (
        await conn.execute(delete(events).where(events.c.user_id == stored))
    ).rowcount
    counts["key_generations"] = (
        await conn.execute(delete(pusher_keys).where(pusher_keys.c.pusher_id.in_(user_pushers)))
    ).rowcount
    counts["pushers"] = (
        await conn.execute(delete(pushers).where(pushers.c.user_id == stored))
    ).rowcount
    counts["channel_states"] = (
        await conn.execute(delete(channel_states).where(channel_states.c.user_id == stored))
    ).rowcount
    counts["audit_records"] = (
        await conn.execute(delete(audit_log).where(audit_log.c.user_id == stored))
    ).rowcount
    await conn.execute(update(audit_log).where(audit_log.c.actor == stored).values(actor="erased"))
    return counts
