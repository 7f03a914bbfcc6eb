"""The connection to the database: libpq URL parameters, the one-statement reads, and
SQLite's direct connection."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from conftest import POSTGRES_ADMIN_URL, create_postgres_database, drop_postgres_database
from fdpush.storage import queries
from fdpush.storage.database import Database


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


def test_a_transaction_commits_or_rolls_back_and_leaves_its_connection_clean(
    database_url: str,
) -> None:
    """``Database.transaction``: its statements commit together or not at all (an error of the
    caller rolls them back), and the one pooled connection serves the next request with no
    transaction left open."""

    async def run() -> list[tuple[int, str]]:
        db = Database(database_url, pool_size=1)
        insert = text("INSERT INTO t (a, b) VALUES (:a, :b)")
        try:
            async with db.write() as conn:
                await conn.execute(text("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)"))
            async with db.transaction("t") as tx:
                await tx.execute(insert, {"a": 1, "b": "kept"})
                assert await tx.fetch(text("SELECT b FROM t WHERE a = :a"), {"a": 1}) == [("kept",)]
            with pytest.raises(LookupError):
                async with db.transaction("t") as tx:
                    await tx.execute(insert, {"a": 2, "b": "rolled back"})
                    raise LookupError  # as a domain rule refusing midway
            with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
                async with db.transaction("t") as tx:
                    await tx.execute(insert, {"a": 3, "b": "rolled back too"})
                    await tx.execute(insert, {"a": 1, "b": "a duplicate key"})
            rows = await db.fetch_all(text("SELECT a, b FROM t ORDER BY a"), {})
            return [tuple(r) for r in rows]
        finally:
            await db.close()

    assert asyncio.run(run()) == [(1, "kept")]


def test_transactions_with_the_same_lock_run_one_after_the_other(backend: str) -> None:
    """PostgreSQL: a transaction waits for another that holds one of its named locks (the rule
    of ``pushers/set`` that spans rows: the per-user limit, the removal from other users)."""
    if backend == "sqlite":
        pytest.skip("SQLite runs one write transaction at a time anyway")
    url = create_postgres_database()

    async def run() -> list[str]:
        db = Database(url, pool_size=3)
        order: list[str] = []
        try:
            first_holds = asyncio.Event()

            async def first() -> None:
                async with db.transaction("user:a", "pushkey:x"):
                    first_holds.set()
                    await asyncio.sleep(0.3)
                    order.append("first done")

            async def second() -> None:
                await first_holds.wait()
                async with db.transaction("pushkey:x"):
                    order.append("second in")

            async def unrelated() -> None:
                await first_holds.wait()
                async with db.transaction("pushkey:y"):
                    order.append("unrelated in")

            await asyncio.gather(first(), second(), unrelated())
            return order
        finally:
            await db.close()

    try:
        assert asyncio.run(run()) == ["unrelated in", "first done", "second in"]
    finally:
        drop_postgres_database(url)


def test_a_cancelled_transaction_does_not_hand_on_its_connection(backend: str) -> None:
    """PostgreSQL: a transaction cancelled while a statement runs (its request went away)
    leaves nothing open: the next request gets a working connection, outside any transaction."""
    if backend == "sqlite":
        pytest.skip("asyncpg's connections are a PostgreSQL matter")
    url = create_postgres_database()

    async def run() -> list[tuple[int]]:
        db = Database(url, pool_size=1)
        try:
            async with db.write() as conn:
                await conn.execute(text("CREATE TABLE t (a INTEGER PRIMARY KEY)"))

            async def slow() -> None:
                async with db.transaction("t") as tx:
                    await tx.execute(text("INSERT INTO t (a) VALUES (:a)"), {"a": 1})
                    await tx.fetch(text("SELECT pg_sleep(:s)"), {"s": 5})

            task = asyncio.create_task(slow())
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with db.transaction("t") as tx:
                await tx.execute(text("INSERT INTO t (a) VALUES (:a)"), {"a": 2})
            rows = await asyncio.wait_for(db.fetch_all(text("SELECT a FROM t"), {}), 3)
            return [tuple(r) for r in rows]
        finally:
            await db.close()

    try:
        assert asyncio.run(run()) == [(2,)]
    finally:
        drop_postgres_database(url)


def test_sqlite_direct_work_is_one_transaction_beside_sqlalchemy(tmp_path: Path) -> None:
    """``Database.sqlite``: the work commits as a whole or not at all, and its writes queue
    with those through SQLAlchemy (one writer at a time), neither side losing a row."""

    async def run() -> tuple[int, int, str]:
        db = Database(f"sqlite:///{tmp_path / 'fdpush.db'}")
        try:
            await db.migrate()

            def insert(n: int, conn: Any) -> None:
                conn.execute(
                    "INSERT INTO data_steps (name, done_at) VALUES (?, ?)", (f"direct-{n}", n)
                )

            def insert_then_fail(conn: Any) -> None:
                insert(-1, conn)
                raise RuntimeError("work failed")

            async def through_sqlalchemy(n: int) -> None:
                async with db.write() as conn:
                    await conn.execute(
                        text("INSERT INTO data_steps (name, done_at) VALUES (:n, :d)"),
                        {"n": f"orm-{n}", "d": n},
                    )

            with pytest.raises(RuntimeError, match="work failed"):
                await db.sqlite(insert_then_fail, write=True)
            await asyncio.gather(
                *(db.sqlite(partial(insert, n), write=True) for n in range(50)),
                *(through_sqlalchemy(n) for n in range(50)),
            )

            def counts(conn: Any) -> tuple[int, int]:
                direct = conn.execute(
                    "SELECT count(*) FROM data_steps WHERE name LIKE 'direct-%'"
                ).fetchone()[0]
                orm = conn.execute("SELECT count(*) FROM data_steps WHERE name LIKE 'orm-%'")
                return direct, orm.fetchone()[0]

            direct, orm = await db.sqlite(counts, write=False)
            failed = await db.sqlite(
                lambda conn: str(
                    conn.execute("SELECT count(*) FROM data_steps WHERE done_at = -1").fetchone()
                ),
                write=False,
            )
            return direct, orm, failed
        finally:
            await db.close()

    assert asyncio.run(run()) == (50, 50, "(0,)")
