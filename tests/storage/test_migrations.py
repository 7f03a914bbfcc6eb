"""The migrations produce exactly the schema that ``fdpush.storage.schema`` describes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from fdpush.storage.database import Database
from fdpush.storage.schema import metadata


def _diff(connection: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), metadata))


async def _migrate_and_compare(url: str) -> tuple[str | None, str | None, list[Any]]:
    db = Database(url)
    try:
        first = await db.migrate()
        second = await db.migrate()  # a second run finds nothing to do
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(_diff)
        return first, second, diff
    finally:
        await db.close()


def test_migrations_match_the_schema_module(database_url: str) -> None:
    first, second, diff = asyncio.run(_migrate_and_compare(database_url))
    assert first is not None and first == second
    assert diff == []


async def _concurrent_migrations(url: str, n: int) -> list[str | None]:
    dbs = [Database(url) for _ in range(n)]
    try:
        return list(await asyncio.gather(*(db.migrate() for db in dbs)))
    finally:
        for db in dbs:
            await db.close()


def test_processes_starting_together_migrate_once(database_url: str, backend: str) -> None:
    """Several processes on one database may start at once (PostgreSQL: an advisory lock)."""
    if backend != "postgresql":
        pytest.skip("SQLite serves one host; concurrent migration is a PostgreSQL concern")
    revisions = asyncio.run(_concurrent_migrations(database_url, 4))
    assert len(set(revisions)) == 1 and revisions[0] is not None


def _run(connection: Connection, revision: str, *, down: bool = False) -> None:
    from alembic import command

    from fdpush.storage.database import alembic_config

    (command.downgrade if down else command.upgrade)(alembic_config(connection), revision)


def _outbox_foreign_keys(connection: Connection) -> set[str]:
    from sqlalchemy import inspect

    return {fk["name"] for fk in inspect(connection).get_foreign_keys("notifications")}


def test_0006_drops_the_outbox_foreign_keys_and_its_downgrade_restores_them(
    database_url: str,
) -> None:
    """From 0006 a notification may name a pusher deleted since (ids are never reused) and is
    written without checks; going back unlinks such rows, as the foreign key did, and
    restores the keys."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    row = (
        "INSERT INTO notifications (id, event_id, gateway, encrypted, status, attempts,"
        " next_attempt_at, created_at, pusher_id) VALUES"
        " (:id, 'e1', 'https://gw/', false, 'pending', 0, 0, 0, :pusher)"
    )
    try:
        with engine.begin() as conn:
            _run(conn, "0005")
            assert _outbox_foreign_keys(conn) == {
                "fk_notifications_event_id_events",
                "fk_notifications_pusher_id_pushers",
            }
            _run(conn, "0006")
            assert _outbox_foreign_keys(conn) == set()
            conn.execute(
                text(
                    "INSERT INTO events (id, user_id, channel, prio, created_at, history)"
                    " VALUES ('e1', 'u', 'c', 'high', 0, false)"
                )
            )
            conn.execute(text(row), {"id": "n1", "pusher": 424242})  # no such pusher: fine
            # A deleted pusher's notifications refer to nothing, even where (SQLite) the next
            # pusher may get its id again: they must never reach that device.
            pusher = (
                "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name,"
                " device_display_name, lang, data, pushkey_ts, created_at, updated_at)"
                " VALUES (:user, 'app', 'k', 'http', 'a', 'd', 'de', '{}', 0,"
                " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) RETURNING id"
            )
            first = conn.execute(text(pusher), {"user": "u1"}).scalar_one()
            conn.execute(text(row), {"id": "n2", "pusher": first})
            conn.execute(text("DELETE FROM pushers WHERE id = :id"), {"id": first})
            second = conn.execute(text(pusher), {"user": "u2"}).scalar_one()
            assert (
                conn.execute(
                    text("SELECT count(*) FROM notifications WHERE pusher_id = :id"), {"id": second}
                ).scalar_one()
                == 0
            )
            conn.execute(text("DELETE FROM notifications WHERE id = 'n2'"))
            _run(conn, "0005", down=True)
            assert len(_outbox_foreign_keys(conn)) == 2
            assert conn.execute(text("SELECT pusher_id FROM notifications")).all() == [(None,)]
    finally:
        engine.dispose()


def test_0008_gives_every_pending_notification_a_dispatch(database_url: str) -> None:
    """An outbox written before dispatches: each gateway's pending notifications, a hundred to
    a dispatch by due time, with their earliest due time; finished ones get none. Going back
    drops the dispatches and restores the index the claims used."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    row = (
        "INSERT INTO notifications (id, event_id, gateway, encrypted, status, attempts,"
        " next_attempt_at, created_at) VALUES (:id, 'e1', :gateway, true, :status, 0, :due, 5)"
    )
    rows = [
        {"id": f"a{n:03d}", "gateway": "https://a/", "status": "pending", "due": 1000 + n}
        for n in range(150)
    ] + [
        {"id": "b1", "gateway": "https://b/", "status": "pending", "due": 7},
        {"id": "b2", "gateway": "https://b/", "status": "delivered", "due": 3},
    ]
    try:
        with engine.begin() as conn:
            _run(conn, "0007")
            conn.execute(text(row), rows)
            _run(conn, "0008")
            found = conn.execute(
                text(
                    "SELECT gateway, notification_ids, next_attempt_at FROM dispatches"
                    " ORDER BY gateway, next_attempt_at"
                )
            ).all()
            ids = [g if isinstance(g, list) else json.loads(g) for _, g, _ in found]
            assert [(gateway, due) for gateway, _, due in found] == [
                ("https://a/", 1000),
                ("https://a/", 1100),
                ("https://b/", 7),
            ]
            assert [sorted(i) for i in ids] == [
                [f"a{n:03d}" for n in range(100)],
                [f"a{n:03d}" for n in range(100, 150)],
                ["b1"],
            ]
            indexes = {i["name"] for i in inspect(conn).get_indexes("notifications")}
            assert "ix_notifications_pending_due" not in indexes
            _run(conn, "0007", down=True)
            assert "dispatches" not in inspect(conn).get_table_names()
            indexes = {i["name"] for i in inspect(conn).get_indexes("notifications")}
            assert "ix_notifications_pending_due" in indexes
    finally:
        engine.dispose()


def _indexed_text_columns(connection: Connection) -> dict[str, str]:
    """``table.column`` → collation of every text column that an index holds."""
    from sqlalchemy import text

    rows = connection.execute(
        text(
            "SELECT DISTINCT c.relname, a.attname, coll.collname"
            " FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indrelid"
            " JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = current_schema()"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)"
            " JOIN pg_collation coll ON coll.oid = a.attcollation"
            " WHERE c.relname <> 'alembic_version'"
        )
    )
    return {f"{table}.{column}": collation for table, column, collation in rows}


def test_every_indexed_text_column_compares_bytes_whatever_the_locale(
    database_url: str, backend: str
) -> None:
    """An index walk compares keys; under a database's language locale each comparison of a
    hex id would follow that language's rules (under de_DE.UTF-8 that doubled the queueing
    statement's time, 0010). The downgrade gives the columns the database's collation back."""
    if backend != "postgresql":
        pytest.skip("SQLite compares text byte by byte")
    from sqlalchemy import create_engine

    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            _run(conn, "head")
            keys = _indexed_text_columns(conn)
            _run(conn, "0009", down=True)
            before = _indexed_text_columns(conn)
    finally:
        engine.dispose()
    assert {"events.id", "notifications.id", "pushers.user_id", "channel_states.pushkey"} <= set(
        keys
    )
    assert {column for column, collation in keys.items() if collation != "C"} == set()
    assert set(before) == set(keys)
    assert set(before.values()) == {"default"}
