"""Events in: fan-out to the subscribed devices, durably queued — in one transaction.

For each event: the user's pushers whose device has the event's channel ``enabled`` (an
explicit choice, or the catalog default when the device never chose; ``not_set`` and
``disabled`` get nothing) each get one notification. The event's payload is stored once, sealed
under the master key; each notification is a small outbox row naming the event and the pusher.
The worker ratchets the pusher's key to the sending month and seals the notification when it
sends it (:mod:`fdpush.delivery.compose`).

How large a payload may be depends on who receives it: an encrypted notification carries it in
the 1024-byte frame (at most :data:`fdpush.crypto.MAX_PAYLOAD_BYTES` of JSON), a plain one as
JSON (at most :data:`MAX_PLAIN_PAYLOAD_BYTES`, ZETA's minimum). With ``FDPUSH_ENCRYPTION=required``
every device is encrypted, so the frame's limit holds for every event; otherwise an event whose
payload is larger than the frame is refused as a whole when any device it would reach is
encrypted, and accepted when all of them are plain.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from fdpush import crypto
from fdpush.config import ChannelDefinition
from fdpush.domain.errors import InvalidParam, NotFound, PayloadTooLarge
from fdpush.domain.gateway_url import gateway_base_url
from fdpush.domain.keys import KeyVault
from fdpush.storage import outbox
from fdpush.storage.database import Database

__all__ = [
    "MAX_PLAIN_PAYLOAD_BYTES",
    "NOTIFY_CHANNEL",
    "EmitResult",
    "EventRequest",
    "EventService",
    "EventStatus",
]

NOTIFY_CHANNEL = "fdpush_outbox"  # PostgreSQL LISTEN/NOTIFY channel that wakes workers
MAX_IDENTIFIER_LENGTH = 256
# A plain notification's payload, as compact JSON: ZETA's RS API must accept at least 3 KB, and
# more would not reliably pass on (APNs and FCM carry 4 KB per push, wrapping included).
MAX_PLAIN_PAYLOAD_BYTES = 3 * 1024

log = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: one per event, and frozen costs ~1 µs each
class EventRequest:
    """Something happened for ``user_id``: tell the devices subscribed to ``channel``."""

    user_id: str
    channel: str
    payload: dict[str, Any]
    prio: str = "high"
    identifier: str | None = None


@dataclass(slots=True)  # not frozen: one per event, and frozen costs ~1 µs each
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
        encryption_mode: str,
        on_new_work: Callable[[], None] = lambda: None,
        woken_worker: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._defaults = {c.id: c.default for c in catalog}
        self._vault = vault
        # Every device is encrypted where encryption is required: the frame bounds every event.
        self.payload_limit = (
            crypto.MAX_PAYLOAD_BYTES if encryption_mode == "required" else MAX_PLAIN_PAYLOAD_BYTES
        )
        self._history = history_days > 0
        self._on_new_work = on_new_work
        # The NOTIFY names the worker ``on_new_work`` wakes, which passes over it: woken twice
        # for one event, it claimed a second time and found nothing.
        self._woken_worker = woken_worker
        self._clock = clock

    def check(self, event: EventRequest) -> bytes:
        """Refuse an event that cannot be sent; return its serialised payload."""
        if event.channel not in self._defaults:
            raise InvalidParam(f"Unknown channel: {event.channel}")
        if event.prio not in ("high", "low"):
            raise InvalidParam("prio must be 'high' or 'low'")
        if event.identifier is not None and not 1 <= len(event.identifier) <= MAX_IDENTIFIER_LENGTH:
            raise InvalidParam(f"identifier must be 1 to {MAX_IDENTIFIER_LENGTH} characters")
        return self.check_payload(event.payload)

    def check_payload(self, payload: dict[str, Any]) -> bytes:
        """``payload`` as compact JSON, unless it is too large for any device (PayloadTooLarge)
        or cannot be written back as JSON (InvalidParam)."""
        try:
            encoded = orjson.dumps(payload)
            # A plain notification carries the payload inside four levels of the gateway request
            # ({"notifications": [{"notification": {"content": …}}]}), and orjson stops at 254
            # levels of nesting: refuse here what could never be written there. Each level opens
            # a bracket, so only a payload with that many can be so deep: the rest (every usual
            # one) is not encoded a second time.
            if encoded.count(b"{") + encoded.count(b"[") >= _DEEP_BRACKETS:
                orjson.dumps([[[[payload]]]])
        except orjson.JSONEncodeError as exc:
            raise InvalidParam(f"payload cannot be sent as JSON: {exc}") from None
        if len(encoded) > self.payload_limit:
            where = (
                "fit the 1024-byte frame of an encrypted notification"
                if self.payload_limit == crypto.MAX_PAYLOAD_BYTES
                else "are sent in a plain notification"
            )
            raise PayloadTooLarge(
                f"payload is {len(encoded)} bytes of JSON; at most {self.payload_limit} {where}",
                limit=self.payload_limit,
            )
        return encoded

    def _subscribed(self, states: _States, r: outbox.Recipient, channel: str) -> bool:
        """Concept: only ``enabled`` subscribes; a device that never chose has the default."""
        return states.get((r.user_id, r.pushkey, channel), self._defaults[channel]) == "enabled"

    async def emit(self, events: Sequence[EventRequest]) -> list[EmitResult]:
        """Fan out and queue ``events`` durably; the results say how many devices each reaches.

        The events (payload sealed once under the master key) and one small outbox row per
        subscribed device are stored at once, all or none, before this returns. The worker
        ratchets and seals when it sends. An event whose payload cannot reach one of its
        devices (larger than the frame, for an encrypted one) refuses them all: PayloadTooLarge.
        """
        payloads = [self.check(e) for e in events]
        now_ms = int(self._clock() * 1000)
        users = sorted({e.user_id for e in events})
        recipients, states = await outbox.fan_out_read(
            self._db, users, sorted({e.channel for e in events})
        )
        plan = self._fan_out(events, payloads, recipients, states, now_ms)
        await outbox.queue(
            self._db,
            plan.event_rows,
            plan.notification_rows,
            notify_channel=NOTIFY_CHANNEL if self._db.dialect == "postgresql" else None,
            notify_payload=self._woken_worker,
        )
        if plan.notification_rows:
            self._on_new_work()
        return plan.results

    def _fan_out(
        self,
        events: Sequence[EventRequest],
        payloads: Sequence[bytes],
        recipients: Sequence[outbox.Recipient],
        states: _States,
        now_ms: int,
    ) -> _Plan:
        """The rows that queue ``events`` for their subscribed devices."""
        by_user: dict[str, list[tuple[outbox.Recipient, str]]] = {}
        for r in recipients:
            gateway = gateway_base_url(str(orjson.loads(r.data)["url"]))
            by_user.setdefault(r.user_id, []).append((r, gateway))
        plan = _Plan()
        salt = secrets.token_hex(7)  # one draw per call: ids differ by time, sequence, salt
        # One draw for all event ids of the call (one system call, not one per event).
        randomness = secrets.token_hex(_EVENT_ID_RANDOM_BYTES * len(events))
        for index, (event, payload) in enumerate(zip(events, payloads, strict=True)):
            event_id = _event_id(now_ms, randomness, index)
            identifier = event.identifier
            if identifier is None and self._history:
                identifier = event_id  # history needs an identifier the app can look up
            plan.event_rows.append(
                {
                    "id": event_id,
                    "user_id": event.user_id,
                    "channel": event.channel,
                    "prio": event.prio,
                    "identifier": identifier,
                    "created_at": now_ms,
                    "payload": self._vault.seal_record("event-payload", event_id, payload),
                    "history": self._history,
                }
            )
            count = 0
            for r, gateway in by_user.get(event.user_id, ()):
                if not self._subscribed(states, r, event.channel):
                    continue
                if r.key_identifier is not None and len(payload) > crypto.MAX_PAYLOAD_BYTES:
                    raise PayloadTooLarge(
                        f"payload is {len(payload)} bytes of JSON; the user has a device that "
                        f"receives encrypted notifications, whose 1024-byte frame holds at most "
                        f"{crypto.MAX_PAYLOAD_BYTES}",
                        limit=crypto.MAX_PAYLOAD_BYTES,
                    )
                plan.notification_rows.append(
                    {
                        "id": _ordered_id(now_ms, len(plan.notification_rows), salt),
                        "event_id": event_id,
                        "pusher_id": r.pusher_id,
                        "gateway": gateway,
                        "encrypted": r.key_identifier is not None,
                        "body": None,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now_ms,
                        "created_at": now_ms,
                    }
                )
                count += 1
            plan.results.append(EmitResult(event_id, count))
        return plan

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


@dataclass(slots=True)
class _Plan:
    event_rows: list[dict[str, Any]] = field(default_factory=list)
    notification_rows: list[dict[str, Any]] = field(default_factory=list)
    results: list[EmitResult] = field(default_factory=list)


_States = dict[tuple[str, str, str], str]


_EVENT_ID_RANDOM_BYTES = 10
# Opening brackets from which a payload might nest too deep for orjson inside the gateway
# request (254 levels in all, four of them the request's): well below, to be sure.
_DEEP_BRACKETS = 200


def _event_id(now_ms: int, randomness: str, index: int) -> str:
    """An event id: 12 hex digits of epoch ms, then 20 random ones (the ``index``-th 20 of
    ``randomness``). Unguessable, and new ids land at the end of the indexes that hold them,
    not on a random page of each."""
    width = 2 * _EVENT_ID_RANDOM_BYTES
    return f"{now_ms:012x}{randomness[index * width : (index + 1) * width]}"


def _ordered_id(now_ms: int, sequence: int, salt: str) -> str:
    """A notification id that sorts by creation, also within one call: 12 hex digits of epoch
    ms, 6 of the sequence in this call, 14 random ones drawn once per call (history lists a
    device's newest first)."""
    return f"{now_ms:012x}{sequence % 0x1000000:06x}{salt}"
