"""Data-subject requests: what a support desk may see, what a person may ask for, and erasure.

- :meth:`UserRequests.show`: the user's devices (app, device name, created, last delivery),
  channel states and recent notification outcomes; pushkeys only as log references, never key
  material.
- :meth:`UserRequests.export`: everything stored about the person (GDPR Art. 15), key material
  excluded; pushkeys opened from their sealed copies. Event payloads (what was sent, and the
  history) are stored sealed under the master key: they are opened for it.
- :meth:`UserRequests.erase`: the person erased (Art. 17) — pushers, key generations, channel
  states, pending and past notifications, events, the audit records about them — in one
  transaction, leaving one audit record without personal data (``user.erased`` and counts).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from fdpush import crypto
from fdpush.domain.keys import KeyVault
from fdpush.domain.pushers import user_lock
from fdpush.logs import pushkey_ref
from fdpush.storage import queries
from fdpush.storage.database import Database

__all__ = ["UserRequests"]

_RECENT_EVENTS = 20
ERASED_ACTION = "user.erased"


def _when_ms(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _when(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _outcomes(notifications: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in notifications:
        counts[n["status"]] = counts.get(n["status"], 0) + 1
    return counts


class UserRequests:
    """Show, export and erase one user's data."""

    def __init__(self, db: Database, vault: KeyVault) -> None:
        self._db = db
        self._vault = vault
        self._stored = vault.pseudonym  # what the tables hold for a user id

    def _payload(self, event_id: str, sealed: bytes | None) -> dict[str, Any]:
        """``{"payload": …}`` opened; None once forgotten (after delivery, or the history's
        retention); an error note where it does not open (a damaged row, another master key)."""
        if sealed is None:
            return {"payload": None}
        try:
            return {
                "payload": orjson.loads(self._vault.open_record("event-payload", event_id, sealed))
            }
        except (crypto.CryptoError, orjson.JSONDecodeError):
            return {"payload": None, "payload_error": "stored sealed; does not open"}

    def _pushkeys(self, stored: str, record: queries.UserRecord) -> dict[str, str | None]:
        """Each stored pushkey index of the record → the pushkey (None: it does not open)."""
        opened: dict[str, str | None] = {}
        for p in record.pushers:
            sealed = p["pushkey_sealed"]
            try:
                if sealed is None:
                    raise crypto.CryptoError("no sealed pushkey stored")
                opened[p["pushkey"]] = self._vault.open_pushkey(
                    stored, p["app_id"], p["pushkey"], bytes(sealed)
                )
            except crypto.CryptoError:
                opened.setdefault(p["pushkey"], None)
        return opened

    def _device(self, pushkeys: dict[str, str | None], index: str) -> str:
        """A device as support sees it: the reference its pushkey has in the logs."""
        pushkey = pushkeys.get(index)
        return pushkey_ref(pushkey) if pushkey is not None else "pk:(unreadable)"

    async def show(self, user_id: str) -> dict[str, Any]:
        """What a support desk needs: pushkeys as references, no key material."""
        stored = self._stored(user_id)
        async with self._db.read() as conn:
            record = await queries.user_record(conn, stored, events_limit=_RECENT_EVENTS)
        pushkeys = self._pushkeys(stored, record)
        return {
            "devices": [
                {
                    "device": self._device(pushkeys, p["pushkey"]),
                    "app_id": p["app_id"],
                    "app_display_name": p["app_display_name"],
                    "device_display_name": p["device_display_name"],
                    "created": _when(p["created_at"]),
                    "last_delivery": _when_ms(p["last_delivery_ms"]),
                }
                for p in record.pushers
            ],
            "channel_states": [
                {
                    "device": self._device(pushkeys, s["pushkey"]),
                    "channel": s["channel_id"],
                    "status": s["status"],
                }
                for s in record.channel_states
            ],
            "recent_events": [
                {
                    "event_id": e["id"],
                    "channel": e["channel"],
                    "created": _when_ms(e["created_at"]),
                    "outcomes": _outcomes(e["notifications"]),
                    "errors": sorted(
                        {n["last_error"] for n in e["notifications"] if n["last_error"]}
                    ),
                }
                for e in record.events
            ],
        }

    async def export(self, user_id: str) -> dict[str, Any]:
        """Everything stored about the person, as JSON-ready data, without key material."""
        stored = self._stored(user_id)
        async with self._db.read() as conn:
            record = await queries.user_record(conn, stored, events_limit=None)
        pushkeys = self._pushkeys(stored, record)
        pusher_ids = {p["id"]: pushkeys[p["pushkey"]] for p in record.pushers}
        hidden = ("id", "last_delivery_ms", "pushkey_sealed")
        return {
            "user_id": user_id,
            "exported_at": datetime.now(UTC).isoformat(),
            "pushers": [
                {
                    **{k: v for k, v in p.items() if k not in hidden},
                    "pushkey": pushkeys[p["pushkey"]],
                    "created_at": _when(p["created_at"]),
                    "updated_at": _when(p["updated_at"]),
                    "last_delivery": _when_ms(p["last_delivery_ms"]),
                }
                for p in record.pushers
            ],
            "channel_states": [
                {**s, "pushkey": pushkeys.get(s["pushkey"]), "updated_at": _when(s["updated_at"])}
                for s in record.channel_states
            ],
            "events": [
                {
                    "event_id": e["id"],
                    "channel": e["channel"],
                    "prio": e["prio"],
                    "identifier": e["identifier"],
                    "created_at": _when_ms(e["created_at"]),
                    "in_history": bool(e["history"]),
                    **self._payload(e["id"], e["payload"]),
                    "notifications": [
                        {
                            "pushkey": pusher_ids.get(n["pusher_id"]),
                            "status": n["status"],
                            "attempts": n["attempts"],
                            "last_error": n["last_error"],
                            "created_at": _when_ms(n["created_at"]),
                            "finished_at": _when_ms(n["finished_at"]),
                        }
                        for n in e["notifications"]
                    ],
                }
                for e in record.events
            ],
            "audit": [{**a, "at": _when(a["at"])} for a in record.audit],
        }

    async def erase(self, user_id: str, *, actor: str) -> dict[str, int]:
        """Erase the person; how many rows of each kind went. ``actor``: who asked (an
        operator's name or ``admin-api``), kept in the audit record, which names no user."""
        stored = self._stored(user_id)
        async with self._db.write(user_lock(stored)) as conn:
            counts = await queries.erase_user(conn, stored)
            await queries.record_audit(
                conn,
                action=ERASED_ACTION,
                actor=actor,
                user_id="-",
                app_id="-",
                pushkey="",
                detail=counts,
            )
        return counts
