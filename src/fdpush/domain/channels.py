"""Channels: the operator's catalog and each device's choices.

- A device is a user's pushkey; it has a status per catalog channel: ``enabled``, ``disabled``
  or ``not_set``, and ``not_set`` counts as disabled (no pushes by default).
- A channel the device never named has the catalog default.
- An update changes only the channels it names; an id outside the catalog is refused whole.
- A pushkey that is not one of the caller's pushers is not found for the caller.

A device is named here by its pushkey's keyed index (``KeyVault.pushkey_index``), which the web
layer computes: only the index is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

from fdpush.config import CHANNEL_STATUSES, ChannelDefinition
from fdpush.domain.errors import InvalidParam, NotFound
from fdpush.domain.models import ChannelState
from fdpush.domain.pushers import device_lock
from fdpush.storage import queries
from fdpush.storage.database import Database

__all__ = ["ChannelService"]


class ChannelService:
    def __init__(self, db: Database, catalog: Sequence[ChannelDefinition]) -> None:
        self._db = db
        self._catalog = tuple(catalog)
        self._ids = {c.id for c in self._catalog}

    def catalog(self) -> list[ChannelState]:
        """The catalog, in the operator's order, with each channel's default status."""
        return [ChannelState(c.id, c.default) for c in self._catalog]

    def is_channel(self, channel_id: str) -> bool:
        return channel_id in self._ids

    async def device_channels(self, user_id: str, pushkey: str) -> list[ChannelState]:
        chosen = await queries.device_states(self._db, user_id, pushkey)
        if chosen is None:
            raise NotFound("No pusher with this pushkey")
        return [ChannelState(c.id, chosen.get(c.id, c.default)) for c in self._catalog]

    async def update(self, user_id: str, pushkey: str, changes: Sequence[ChannelState]) -> None:
        wanted: dict[str, str] = {}
        for change in changes:
            if change.id not in self._ids:
                raise InvalidParam(f"Unknown channel: {change.id}")
            if change.status not in CHANNEL_STATUSES:
                raise InvalidParam(
                    f"Channel {change.id}: status must be one of {', '.join(CHANNEL_STATUSES)}"
                )
            if change.id in wanted:
                raise InvalidParam(f"Channel {change.id} is named more than once")
            wanted[change.id] = change.status
        async with self._db.write(device_lock(pushkey)) as conn:
            if not await queries.device_exists(conn, user_id, pushkey):
                raise NotFound("No pusher with this pushkey")
            await queries.set_states(conn, user_id, pushkey, wanted)
