"""The migrations produce exactly the schema that ``fdpush.storage.schema`` describes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from conftest import create_postgres_database, drop_postgres_database
from fdpush.storage.database import Database
from fdpush.storage.schema import metadata


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'schema.db'}"
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


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
