"""Events in: fan-out to the subscribed devices, sealed, durably queued — in one transaction.

For each event: the user's pushers whose device has the event's channel ``enabled`` (an
explicit choice, or the catalog default when the device never chose; ``not_set`` and
``disabled`` get nothing) each get one notification. An encrypted pusher's key is ratcheted to
the current month (Europe/Berlin) first; the newer generation is persisted in the same
transaction as the notifications that use it, and generations past the retention are deleted
(concept: older than two months, never the youngest). The notification is sealed here — frame,
AES-256-GCM, Base64 — and stored (sealed again at rest) for the worker to send.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from fdpush import crypto
from fdpush.config import ChannelDefinition
from fdpush.domain.errors import InvalidParam, NotFound
from fdpush.domain.gateway_url import gateway_base_url
from fdpush.domain.keys import BERLIN, KeyVault, current_period
from fdpush.domain.pushers import user_lock
from fdpush.logs import pushkey_ref, user_ref
from fdpush.storage import outbox
from fdpush.storage.database import Database

__all__ = [
    "NOTIFY_CHANNEL",
    "RETENTION_MONTHS",
    "EmitResult",
    "EventRequest",
    "EventService",
    "EventStatus",
]

NOTIFY_CHANNEL = "fdpush_outbox"  # PostgreSQL LISTEN/NOTIFY channel that wakes workers
RETENTION_MONTHS = 2  # concept: secrets and keys older than two months are deleted
MAX_IDENTIFIER_LENGTH = 256

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EventRequest:
    """Something happened for ``user_id``: tell the devices subscribed to ``channel``."""

    user_id: str
    channel: str
    payload: dict[str, Any]
    prio: str = "high"
    identifier: str | None = None


@dataclass(frozen=True, slots=True)
class EmitResult:
    event_id: str
    notifications: int


@dataclass(frozen=True, slots=True)
class EventStatus:
    event_id: str
    channel: str
    created: str
    counts: dict[str, int]


class EventService:
    """Takes events from the Fachdienst's business logic; one call, one transaction."""

    def __init__(
        self,
        db: Database,
        *,
        catalog: Sequence[ChannelDefinition],
        vault: KeyVault,
        history_days: int,
        on_new_work: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._defaults = {c.id: c.default for c in catalog}
        self._vault = vault
        self._history = history_days > 0
        self._on_new_work = on_new_work
        self._clock = clock

    def check(self, event: EventRequest) -> bytes:
        """Refuse an event that cannot be sent; return its serialised payload."""
        if event.channel not in self._defaults:
            raise InvalidParam(f"Unknown channel: {event.channel}")
        if event.prio not in ("high", "low"):
            raise InvalidParam("prio must be 'high' or 'low'")
        if event.identifier is not None and not 1 <= len(event.identifier) <= MAX_IDENTIFIER_LENGTH:
            raise InvalidParam(f"identifier must be 1 to {MAX_IDENTIFIER_LENGTH} characters")
        try:
            payload = orjson.dumps(event.payload)
            # A plain notification carries the payload inside four levels of the gateway request
            # ({"notifications": [{"notification": {"content": …}}]}), and orjson stops at 254
            # levels of nesting: refuse here what could never be written there.
            orjson.dumps([[[[event.payload]]]])
        except orjson.JSONEncodeError as exc:
            raise InvalidParam(f"payload cannot be sent as JSON: {exc}") from None
        if len(payload) > crypto.MAX_PAYLOAD_BYTES:
            raise InvalidParam(
                f"payload is {len(payload)} bytes of JSON; at most {crypto.MAX_PAYLOAD_BYTES} "
                "fit the 1024-byte frame"
            )
        return payload

    def _subscribed(
        self, states: dict[tuple[str, str, str], str], r: outbox.Recipient, ch: str
    ) -> bool:
        return states.get((r.user_id, r.pushkey, ch), self._defaults[ch]) == "enabled"

    async def emit(self, events: Sequence[EventRequest]) -> list[EmitResult]:
        """Fan out and queue ``events`` durably; the results say how many devices each reaches."""
        payloads = [self.check(e) for e in events]
        now = self._clock()
        now_ms = int(now * 1000)
        period = current_period(datetime.fromtimestamp(now, BERLIN))
        users = sorted({e.user_id for e in events})
        results: list[EmitResult] = []
        async with self._db.write(*(user_lock(u) for u in users)) as conn:
            recipients, states = await outbox.recipients(
                conn, users, sorted({e.channel for e in events})
            )
            by_user: dict[str, list[outbox.Recipient]] = {}
            for r in recipients:
                by_user.setdefault(r.user_id, []).append(r)
            keys = _KeyRing(self._vault, period)
            event_rows: list[dict[str, Any]] = []
            notification_rows: list[dict[str, Any]] = []
            for event, payload in zip(events, payloads, strict=True):
                event_id = uuid.uuid4().hex
                identifier = event.identifier
                if identifier is None and self._history:
                    identifier = event_id  # history needs an identifier the app can look up
                event_rows.append(
                    {
                        "id": event_id,
                        "user_id": event.user_id,
                        "channel": event.channel,
                        "prio": event.prio,
                        "identifier": identifier,
                        "created_at": now_ms,
                        "payload": self._vault.seal_record("event-payload", event_id, payload)
                        if self._history
                        else None,
                    }
                )
                count = 0
                for r in by_user.get(event.user_id, ()):
                    if not self._subscribed(states, r, event.channel):
                        continue
                    notification_id = _ordered_id(now_ms, len(notification_rows))
                    data = orjson.loads(r.data)
                    device = {
                        "app_id": r.app_id,
                        "pushkey": r.pushkey,
                        "pushkey_ts": r.pushkey_ts,
                        "data": {k: v for k, v in data.items() if k != "url"},
                        "tweaks": {},
                    }
                    generation = None
                    if r.key_identifier is not None:
                        generation = keys.current(r)
                        if generation is None:
                            # Never fall back to plain text for a pusher that asked for
                            # encryption: its keys are unusable, it must register again.
                            log.error(
                                "no usable key for a pusher; not sent",
                                extra={
                                    "user": user_ref(r.user_id),
                                    "pushkey": pushkey_ref(r.pushkey),
                                },
                            )
                            continue
                    if generation is not None:
                        body: dict[str, Any] = {
                            "ciphertext": crypto.seal_notification(generation.key, payload),
                            "time_message_encrypted": generation.period,
                            "key_identifier": r.key_identifier,
                            "prio": event.prio,
                            "device": device,
                        }
                        if identifier is not None:
                            body["identifier"] = identifier
                    else:
                        body = {
                            "event_id": notification_id,
                            "prio": event.prio,
                            "content": event.payload,
                            "devices": [device],
                        }
                    notification_rows.append(
                        {
                            "id": notification_id,
                            "event_id": event_id,
                            "user_id": r.user_id,
                            "app_id": r.app_id,
                            "pushkey": r.pushkey,
                            "gateway": gateway_base_url(str(data["url"])),
                            "encrypted": generation is not None,
                            "body": self._vault.seal_record(
                                "notification", notification_id, orjson.dumps(body)
                            ),
                            "status": "pending",
                            "attempts": 0,
                            "next_attempt_at": now_ms,
                            "created_at": now_ms,
                        }
                    )
                    count += 1
                results.append(EmitResult(event_id, count))
            await outbox.save_generations(conn, keys.added, keys.removed)
            await outbox.insert_event_rows(
                conn,
                event_rows,
                notification_rows,
                notify_channel=NOTIFY_CHANNEL if self._db.dialect == "postgresql" else None,
            )
        if any(r.notifications for r in results):
            self._on_new_work()
        return results

    async def status(self, event_id: str) -> EventStatus:
        async with self._db.read() as conn:
            found = await outbox.event_counts(conn, event_id)
        if found is None:
            raise NotFound("No such event")
        event, counts = found
        return EventStatus(
            event_id=event.id,
            channel=event.channel,
            created=datetime.fromtimestamp(event.created_at / 1000, UTC).isoformat(),
            counts={s: counts.get(s, 0) for s in ("pending", "delivered", "rejected", "failed")},
        )


def _ordered_id(now_ms: int, sequence: int) -> str:
    """A notification id that sorts by creation, also within one call: 12 hex digits of epoch
    ms, 6 of the sequence in this call, 14 random (history lists a device's newest first)."""
    return f"{now_ms:012x}{sequence % 0x1000000:06x}{secrets.token_hex(7)}"


class _KeyRing:
    """The current generation of each pusher in one transaction, ratcheted at most once."""

    def __init__(self, vault: KeyVault, period: str) -> None:
        self._vault = vault
        self._period = period
        self._current: dict[int, crypto.KeyGeneration | None] = {}
        self.added: list[tuple[int, str, bytes]] = []
        self.removed: list[tuple[int, str]] = []

    def current(self, r: outbox.Recipient) -> crypto.KeyGeneration | None:
        if r.pusher_id in self._current:
            return self._current[r.pusher_id]
        generation: crypto.KeyGeneration | None = None
        if r.generations:
            youngest_period, material = r.generations[-1]
            try:
                youngest = self._vault.open(
                    r.user_id, r.app_id, r.pushkey, youngest_period, material
                )
            except crypto.CryptoError:  # sealed under another master key
                self._current[r.pusher_id] = None
                return None
            newer = crypto.ratchet(youngest, self._period)
            # Persist only what the retention keeps; the newest is always kept.
            for g in newer:
                if crypto.periods_between(g.period, self._period) <= RETENTION_MONTHS:
                    sealed = self._vault.seal(r.user_id, r.app_id, r.pushkey, g)
                    self.added.append((r.pusher_id, g.period, sealed))
            newest = newer[-1] if newer else youngest
            for stored_period, _ in r.generations:
                if (
                    stored_period != newest.period
                    and crypto.periods_between(stored_period, self._period) > RETENTION_MONTHS
                ):
                    self.removed.append((r.pusher_id, stored_period))
            # A key generation later than today's month (the app's clock ran ahead) is used as is.
            generation = newest
        self._current[r.pusher_id] = generation
        return generation
