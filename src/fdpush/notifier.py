"""Emitting events from Python: for a Fachdienst whose business logic runs in Python.

    from fdpush import Notifier

    async with Notifier.open() as notifier:          # reads FDPUSH_* like the service
        result = await notifier.emit("X110411675", "erp.task.activate",
                                     {"ChannelId": "erp.task.activate", "Identifier": "160.000.1"})
        print(result.event_id, result.notifications)

Events are durable when ``emit`` returns (same database, same transaction as over HTTP). A
delivery worker — ``fdpush serve`` or ``fdpush worker`` on the same database — sends them: on
PostgreSQL it is woken at once (``NOTIFY``); with SQLite it finds them within a few seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fdpush.config import Settings, load_settings, resolve_master_key
from fdpush.domain.data_steps import prepare_database
from fdpush.domain.events import EmitResult, EventRequest, EventService, EventStatus
from fdpush.domain.keys import KeyVault
from fdpush.storage.database import Database

__all__ = ["EmitResult", "EventRequest", "EventStatus", "Notifier"]


class Notifier:
    """The events API, in process."""

    def __init__(self, db: Database, events: EventService, vault: KeyVault) -> None:
        self._db = db
        self._events = events
        self._vault = vault

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings | None = None) -> AsyncIterator[Notifier]:
        """Connect with ``settings`` (default: the FDPUSH_* environment), migrating if allowed."""
        settings = settings or load_settings(for_serving=False)
        db = Database(settings.database_url)
        try:
            vault = KeyVault(resolve_master_key(settings))
            await prepare_database(db, vault, migrate=settings.migrate_on_start)
            events = EventService(
                db,
                catalog=settings.channels,
                vault=vault,
                history_days=settings.history_days,
                encryption_mode=settings.encryption,
            )
            yield cls(db, events, vault)
        finally:
            await db.close()

    async def emit(
        self,
        user_id: str,
        channel: str,
        payload: dict[str, Any],
        *,
        prio: str = "high",
        identifier: str | None = None,
    ) -> EmitResult:
        """Queue one event for the user's subscribed devices; say how many it will reach."""
        (result,) = await self._events.emit(
            [EventRequest(self._vault.pseudonym(user_id), channel, payload, prio, identifier)]
        )
        return result

    async def emit_many(self, events: Sequence[EventRequest]) -> list[EmitResult]:
        """Queue several events in one transaction (all or none)."""
        return await self._events.emit(
            [replace(e, user_id=self._vault.pseudonym(e.user_id)) for e in events]
        )

    async def status(self, event_id: str) -> EventStatus:
        """Where the event's notifications stand."""
        return await self._events.status(event_id)
