"""The SQL of the keyring: the identity keys sealed under the master key (current, and the
next one while a rotation of the master key is unfinished)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fdpush.storage.schema import events, keyring, notifications, pusher_keys, pushers

__all__ = [
    "CURRENT",
    "NEXT",
    "Keyring",
    "Sealed",
    "finish_rotation",
    "put",
    "read",
    "sealed_samples",
]

CURRENT = "identity"
NEXT = "identity-next"


@dataclass(frozen=True, slots=True)
class Keyring:
    current: bytes | None  # the identity keys sealed under the master key; None: not yet
    next: bytes | None  # sealed under the new master key while a rotation is unfinished


async def read(conn: AsyncConnection) -> Keyring:
    rows = dict((await conn.execute(select(keyring.c.name, keyring.c.material))).all())
    current, following = rows.get(CURRENT), rows.get(NEXT)
    return Keyring(
        None if current is None else bytes(current),
        None if following is None else bytes(following),
    )


async def put(conn: AsyncConnection, name: str, material: bytes, now_ms: int) -> None:
    """Store ``name`` (replacing what was stored under it)."""
    await conn.execute(delete(keyring).where(keyring.c.name == name))
    await conn.execute(insert(keyring).values(name=name, material=material, created_at=now_ms))


async def finish_rotation(conn: AsyncConnection) -> None:
    """The next identity becomes the current one."""
    await conn.execute(delete(keyring).where(keyring.c.name == CURRENT))
    await conn.execute(update(keyring).where(keyring.c.name == NEXT).values(name=CURRENT))


Sealed = tuple[str, tuple[str, ...], bytes]  # kind, the row's key (what it is bound to), blob


def _first(*columns: Any) -> Select[Any]:
    """One row whose last column (a sealed blob) is set."""
    return select(*columns).where(columns[-1].is_not(None)).limit(1)


async def sealed_samples(conn: AsyncConnection) -> list[Sealed]:
    """One stored blob of each kind there is (none: the database holds nothing sealed)."""
    found: list[Sealed] = []
    for kind, query in (
        ("event-payload", _first(events.c.id, events.c.payload)),
        ("notification", _first(notifications.c.id, notifications.c.body)),
        (
            "pushkey",
            _first(
                pushers.c.user_id, pushers.c.app_id, pushers.c.pushkey, pushers.c.pushkey_sealed
            ),
        ),
        (
            "key-generation",
            _first(
                pushers.c.user_id,
                pushers.c.app_id,
                pushers.c.pushkey,
                pusher_keys.c.period,
                pusher_keys.c.material,
            ).join_from(pusher_keys, pushers, pushers.c.id == pusher_keys.c.pusher_id),
        ),
    ):
        row = (await conn.execute(query)).first()
        if row is not None:
            found.append((kind, tuple(str(v) for v in row[:-1]), bytes(row[-1])))
    return found
