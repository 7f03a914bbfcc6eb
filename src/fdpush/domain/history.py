"""History (optional feature of the current spec): what was sent to a device, for its app.

Kept while ``FDPUSH_HISTORY_DAYS`` > 0: each event's payload is stored sealed under the master
key and forgotten after the retention. An app lists its device's notifications newest first
(``history/device/{pushkey}``) and fetches one by the ``identifier`` that travelled with it
(``history/{notification_id}``). A user only ever sees their own. A device is named by its
pushkey's keyed index, which the web layer computes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from fdpush.domain.errors import InvalidParam, NotFound
from fdpush.domain.keys import KeyVault
from fdpush.storage import outbox, queries
from fdpush.storage.database import Database

__all__ = ["HistoryPage", "HistoryService", "Message"]

MAX_PAGE = 100
# A ``next_batch`` this service gave out: created_at (epoch ms) _ notification id. ASCII only,
# and short enough for a 64-bit integer: str.isdigit() also takes "²", which int() refuses.
_CURSOR = re.compile(r"([0-9]{1,18})_([0-9A-Za-z]{1,64})")


@dataclass(frozen=True, slots=True)
class Message:
    identifier: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: list[Message]
    next_batch: str | None


class HistoryService:
    def __init__(self, db: Database, vault: KeyVault, *, enabled: bool) -> None:
        self._db = db
        self._vault = vault
        self.enabled = enabled

    def _open(self, event_id: str, sealed: bytes) -> dict[str, Any]:
        payload: dict[str, Any] = orjson.loads(
            self._vault.open_record("event-payload", event_id, sealed)
        )
        return payload

    async def device(
        self, user_id: str, pushkey: str, *, limit: int, cursor: str | None
    ) -> HistoryPage:
        """A page of a device's history, newest first; ``next_batch`` continues it."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidParam(f"limit must be 1 to {MAX_PAGE}")
        before: tuple[int, str] | None = None
        if cursor:
            match = _CURSOR.fullmatch(cursor)
            if match is None:
                raise InvalidParam("from: not a cursor this service gave out")
            before = (int(match.group(1)), match.group(2))
        async with self._db.read() as conn:
            if not await queries.device_exists(conn, user_id, pushkey):
                raise NotFound("No pusher with this pushkey")
            rows = await outbox.history(conn, user_id, pushkey, limit=limit + 1, before=before)
        more = len(rows) > limit
        rows = rows[:limit]
        return HistoryPage(
            messages=[Message(r.identifier, self._open(r.event_id, r.payload)) for r in rows],
            next_batch=f"{rows[-1].created_at}_{rows[-1].id}" if more and rows else None,
        )

    async def message(self, user_id: str, identifier: str) -> Message:
        async with self._db.read() as conn:
            row = await outbox.history_entry(conn, user_id, identifier)
        if row is None:
            raise NotFound("No such notification")
        return Message(row.identifier, self._open(row.id, row.payload))
