"""The connection to PostgreSQL: libpq URL parameters, and the one-statement reads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from conftest import POSTGRES_ADMIN_URL, create_postgres_database, drop_postgres_database
from fdpush.storage import queries
from fdpush.storage.database import Database


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fdpush.db'}"
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


def test_libpq_parameters_of_the_url_reach_the_server(backend: str) -> None:
    """``application_name`` and ``connect_timeout`` in the URL work as they do with libpq."""
    if backend == "sqlite":
        pytest.skip("libpq parameters are a PostgreSQL matter")
    separator = "&" if "?" in POSTGRES_ADMIN_URL else "?"
    url = f"{POSTGRES_ADMIN_URL}{separator}application_name=fdpush-url-test&connect_timeout=5"

    async def run() -> str:
        db = Database(url)
        try:
            async with db.read() as conn:
                name = await conn.execute(text("SELECT current_setting('application_name')"))
                return str(name.scalar_one())
        finally:
            await db.close()

    assert asyncio.run(run()) == "fdpush-url-test"


def test_device_states_tell_a_missing_device_from_one_without_choices(database_url: str) -> None:
    """One statement answers both: None for no such device of the user, else its choices."""

    async def run() -> list[dict[str, str] | None]:
        db = Database(database_url)
        try:
            await db.migrate()
            async with db.write() as conn:
                for user in ("alice", "bob"):
                    await queries.save_pusher(
                        conn,
                        None,
                        user_id=user,
                        app_id="app",
                        pushkey=f"pk-{user}",
                        pushkey_sealed=b"sealed",
                        values={
                            "kind": "http",
                            "app_display_name": "A",
                            "device_display_name": "D",
                            "profile_tag": None,
                            "lang": "de",
                            "data": {"url": "https://gw.test/push/v1/"},
                            "pushkey_ts": 0,
                            "encryption_method": None,
                            "key_identifier": None,
                        },
                    )
                await queries.set_states(conn, "bob", "pk-bob", {"c1": "enabled"})
            return [
                await queries.device_states(db, "alice", "pk-alice"),
                await queries.device_states(db, "bob", "pk-bob"),
                await queries.device_states(db, "alice", "pk-bob"),  # bob's device, not alice's
                await queries.device_states(db, "carol", "pk-carol"),
            ]
        finally:
            await db.close()

    assert asyncio.run(run()) == [{}, {"c1": "enabled"}, None, None]


def test_sqlite_waits_for_its_lock_in_the_thread_and_reads_in_the_loop(tmp_path: Path) -> None:
    """SQLite calls that cannot wait run in the event loop; a write that waits for another
    process's lock waits in aiosqlite's thread: the loop serves others meanwhile, and the
    transactions read and write what they should."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'fdpush.db'}"

    async def run() -> tuple[int, list[tuple[int, str]], list[tuple[int, str]]]:
        db = Database(url)
        try:
            async with db.write() as conn:
                await conn.execute(text("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)"))
                await conn.execute(text("INSERT INTO t (b) VALUES ('one')"))
            other = sqlite3.connect(tmp_path / "fdpush.db", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            other.execute("INSERT INTO t (b) VALUES ('other')")

            async def write() -> None:
                async with db.write() as conn:
                    await conn.execute(text("INSERT INTO t (b) VALUES ('two')"))

            writer = asyncio.create_task(write())
            ticks = 0
            for _ in range(20):  # the loop keeps turning while the write waits for the lock
                await asyncio.sleep(0.01)
                ticks += 1
                async with db.read() as conn:  # and reads go on (WAL)
                    seen = (await conn.execute(text("SELECT a, b FROM t ORDER BY a"))).all()
            assert not writer.done()
            other.execute("COMMIT")
            other.close()
            await asyncio.wait_for(writer, timeout=15)
            rows = await db.fetch_all(text("SELECT a, b FROM t ORDER BY a"), {})
            return ticks, [tuple(r) for r in seen], [tuple(r) for r in rows]
        finally:
            await db.close()

    ticks, during, after = asyncio.run(run())
    assert ticks == 20
    assert during == [(1, "one")]
    assert after == [(1, "one"), (2, "other"), (3, "two")]
