"""Fixtures for the storage layer's tests. (This directory is a package, so this conftest does
not shadow the suite's top-level ``conftest`` module; row builders live in ``storage.rows``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import create_postgres_database, drop_postgres_database


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of ``backend``: an SQLite file, or a PostgreSQL database that
    is dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fdpush.db'}"
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)
