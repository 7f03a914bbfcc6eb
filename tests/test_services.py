"""The composition root: what ``Services`` builds from the settings, and its lifecycle.

In process, on an SQLite file of the test's own: every entry point (serve, worker, Notifier,
the admin commands) opens its services this way, and their own tests cover what they do.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import pytest

from fdpush.config import ConfigError, Settings
from fdpush.domain.errors import NotFound
from fdpush.services import Services
from fdpush.storage import pseudonyms

MASTER_KEY = base64.b64encode(os.urandom(32)).decode()


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'fdpush.db'}",
        "master_key": MASTER_KEY,
        "channels": "erp.task.activate=enabled,erp.task.close",
        **overrides,
    }
    return Settings(_env_prefix="FDPUSH_TEST_UNUSED_", _env_file=None, **values)  # type: ignore[call-arg]


def test_open_prepares_the_database_and_delivers_nothing_unasked(tmp_path: Path) -> None:
    """``open`` migrates and runs the data steps before the services are used; nothing
    delivers unless asked for."""

    async def run() -> None:
        async with Services.open(settings_for(tmp_path)) as services:
            with pytest.raises(NotFound):  # the events service reads the migrated tables
                await services.events.status("no-such-event")
            async with services.db.read() as conn:
                assert await pseudonyms.done(conn, "user-pseudonyms")
            assert services.worker is None and services.gateway_client is None

    asyncio.run(run())


def test_without_migrate_on_start_the_schema_is_left_to_a_job(tmp_path: Path) -> None:
    async def run() -> str | None:
        async with Services.open(settings_for(tmp_path)):  # the schema, made by "the job"
            pass
        quiet = Services.build(settings_for(tmp_path, migrate_on_start=False))
        try:
            return await quiet.prepare()
        finally:
            await quiet.close()

    assert asyncio.run(run()) is None


def test_a_worker_is_built_only_with_its_gateway_tls_files(tmp_path: Path) -> None:
    missing = tmp_path / "no-ca.pem"
    with pytest.raises(ConfigError, match="FDPUSH_GATEWAY_CA_FILE"):
        Services.build(settings_for(tmp_path, gateway_ca_file=missing), worker=True)
    without = Services.build(settings_for(tmp_path))
    with pytest.raises(RuntimeError, match="without a worker"):
        without.start_worker()
    asyncio.run(without.close())


def test_close_stops_the_worker_it_started(tmp_path: Path) -> None:
    """``start_worker`` runs the worker in the background; ``close`` stops it (in-flight
    batches finish) before it closes the database."""

    async def run() -> None:
        async with Services.open(settings_for(tmp_path), worker=True) as services:
            assert services.worker is not None
            worker, before = services.worker, services.worker.last_progress
            services.start_worker()
            task = services._worker_task
            assert task is not None
            deadline = asyncio.get_running_loop().time() + 10
            while worker.last_progress == before:  # until it has looked for work once
                assert asyncio.get_running_loop().time() < deadline, "the worker never ran"
                await asyncio.sleep(0.01)
        assert task.done() and task.exception() is None

    asyncio.run(run())
