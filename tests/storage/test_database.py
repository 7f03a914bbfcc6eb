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
