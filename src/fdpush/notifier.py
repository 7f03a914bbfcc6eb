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

from fdpush.config import Settings, load_settings
from fdpush.domain.events import EmitResult, EventRequest, EventStatus
from fdpush.services import Services

__all__ = ["EmitResult", "EventRequest", "EventStatus", "Notifier"]


class Notifier:
    """The events API, in process."""

    def __init__(self, services: Services) -> None:
        self._events = services.events
        self._pseudonym = services.vault.pseudonym

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings | None = None) -> AsyncIterator[Notifier]:
        """Connect with ``settings`` (default: the FDPUSH_* environment), migrating if allowed."""
        async with Services.open(settings or load_settings(for_serving=False)) as services:
            yield cls(services)

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
            [EventRequest(self._pseudonym(user_id), channel, payload, prio, identifier)]
        )
        return result

    async def emit_many(self, events: Sequence[EventRequest]) -> list[EmitResult]:
        """Queue several events in one transaction (all or none)."""
        return await self._events.emit(
            [replace(e, user_id=self._pseudonym(e.user_id)) for e in events]
        )

    async def status(self, event_id: str) -> EventStatus:
        """Where the event's notifications stand."""
        return await self._events.status(event_id)
