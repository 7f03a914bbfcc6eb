"""The rules of the ZETA Notification Service's RS API, on top of the events fan-out.

- A user is known while they have at least one pusher; otherwise ``USER_NOT_FOUND``.
- A user's channel is ``enabled`` when at least one device has it enabled (explicitly or by the
  catalog default), ``disabled`` when none has and at least one chose ``disabled``, ``not_set``
  when no device chose.
- ``prio``: ``high`` → ``high``, ``normal`` → ``low``; ``reference`` → the ``identifier``.
- Checks run in the order 400, 413, 422 ``UNKNOWN_CHANNEL``, 403 (the technical user's channels),
  then the ``Idempotency-Key``, 404 ``USER_NOT_FOUND``, 503 (back-pressure). A payload larger
  than the encrypted frame but within the plain limit (encryption not required) is 413 only when
  a device it would reach is encrypted: known after 404, when the fan-out looks at the devices.
- An ``Idempotency-Key`` is inserted first (the key is unique per technical user), so of several
  concurrent repeats exactly one sends; the others wait for its answer (ZETA A_29992).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from fdpush.config import ChannelDefinition, RsClient
from fdpush.domain.errors import InvalidParam, PayloadTooLarge
from fdpush.domain.events import EventRequest, EventService
from fdpush.storage import zeta as storage
from fdpush.storage.database import Database

__all__ = [
    "ALL_CHANNELS",
    "NotificationRequest",
    "RsError",
    "RsService",
    "UserChannels",
    "check_user_value",
]

log = logging.getLogger(__name__)

ALL_CHANNELS = RsClient("internal-api-key", ("*",))  # the development technical user
_FORMATS = {
    "kvnr": re.compile(r"[A-Z][0-9]{9}"),
    "telematik-id": re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}"),
}
_PRIO = {"high": "high", "normal": "low"}
# A repeat that finds the first request still in flight waits this long for its answer; a
# receipt without an answer for longer than _STALE_MS belongs to a process that died.
_WAIT_SECONDS = 10.0
_STALE_MS = 60_000
_PENDING_CACHE_SECONDS = 1.0


class RsError(Exception):
    """An answer of the RS API other than success: ``{"errorCode", "errorDetail"}``."""

    def __init__(
        self, status: int, code: str, detail: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


def invalid(detail: str) -> RsError:
    return RsError(400, "INVALID_PARAM", detail)


def check_user_value(id_type: str, value: str) -> None:
    """400 unless ``value`` has the format of ``id_type``."""
    pattern = _FORMATS.get(id_type)
    if pattern is None:
        raise invalid("id_type must be 'kvnr' or 'telematik-id'")
    if not pattern.fullmatch(value):
        raise invalid(f"user value does not have the format of a {id_type}")


@dataclass(frozen=True, slots=True)
class NotificationRequest:
    """A parsed ``POST /notifications`` body, defaults applied."""

    id_type: str
    value: str
    channel: str
    payload: dict[str, Any]
    prio: str = "normal"
    reference: str | None = None

    def _canonical(self) -> bytes:
        body = {
            "user": {"id_type": self.id_type, "value": self.value},
            "channel": self.channel,
            "payload": self.payload,
            "prio": self.prio,
            "reference": self.reference,
        }
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

    def fingerprint(self, keyed: Callable[[str], str]) -> str:
        """The same request after parsing gives the same fingerprint (keys sorted). Keyed
        (``keyed``: the pseudonym HMAC): a plain hash of a KVNR and a short payload could be
        found by trying them all."""
        return keyed(_FINGERPRINT_LABEL + self._canonical().decode("utf-8"))

    def unkeyed_fingerprint(self) -> str:
        """What receipts written before fingerprints were keyed hold (accepted until they
        expire, so a repeat across the upgrade still gets its first answer)."""
        return hashlib.sha256(self._canonical()).hexdigest()


_FINGERPRINT_LABEL = "fdpush/rs-request/v1\x00"


@dataclass(frozen=True, slots=True)
class Accepted:
    notification_id: str
    status: str  # queued or no_active_channel
    channel: str
    accepted_at: str  # RFC 3339, UTC


@dataclass(frozen=True, slots=True)
class UserChannels:
    device_count: int
    channels: list[tuple[str, str]]  # (channel id, aggregated status)


def _rfc3339(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _too_large(exc: PayloadTooLarge) -> RsError:
    return RsError(
        413,
        "PAYLOAD_TOO_LARGE",
        f"The notification payload exceeds the maximum allowed size of {exc.limit} bytes "
        f"({exc.message})",
    )


def _as_uuid(event_id: str) -> str:
    return str(uuid.UUID(hex=event_id))


class RsService:
    """``GET /users/{userId}/channels`` and ``POST /notifications`` for one technical user."""

    def __init__(
        self,
        db: Database,
        events: EventService,
        *,
        catalog: Sequence[ChannelDefinition],
        idempotency_hours: int,
        max_pending: int,
        pseudonym: Callable[[str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._pseudonym = pseudonym
        self._events = events
        self._catalog = tuple(catalog)
        self._defaults = {c.id: c.default for c in self._catalog}
        self._retention_ms = idempotency_hours * 3600 * 1000
        self._max_pending = max_pending
        self._clock = clock
        self._pending: tuple[float, int] = (-1.0, 0)  # (when counted, count)
        self._last_prune = 0.0

    async def channels(
        self, client: RsClient, id_type: str, value: str, *, include_inactive: bool
    ) -> UserChannels:
        check_user_value(id_type, value)
        found = await storage.user_devices(self._db, self._pseudonym(value))
        if found.pushers == 0:
            raise RsError(404, "USER_NOT_FOUND", "No device is registered for this user")
        listed: list[tuple[str, str]] = []
        for channel in self._catalog:
            if not client.may_send(channel.id):
                continue
            status = self._aggregate(channel, found.devices.values())
            if include_inactive or status == "enabled":
                listed.append((channel.id, status))
        return UserChannels(found.pushers, listed)

    @staticmethod
    def _aggregate(channel: ChannelDefinition, devices: Iterable[dict[str, str]]) -> str:
        chosen = [states.get(channel.id) for states in devices]
        effective = [c if c is not None else channel.default for c in chosen]
        if "enabled" in effective:
            return "enabled"
        if "disabled" in chosen:
            return "disabled"
        return "not_set"

    async def submit(
        self, client: RsClient, request: NotificationRequest, idempotency_key: str | None
    ) -> Accepted:
        self._check(client, request)
        if idempotency_key is None:
            return await self._send(request)
        return await self._send_once(client, request, idempotency_key)

    def _check(self, client: RsClient, request: NotificationRequest) -> None:
        check_user_value(request.id_type, request.value)
        try:
            self._events.check_payload(request.payload)
        except PayloadTooLarge as exc:
            raise _too_large(exc) from None
        except InvalidParam:  # e.g. nested deeper than JSON can be written back
            raise invalid("The payload cannot be sent as JSON") from None
        if request.channel not in self._defaults:
            raise RsError(422, "UNKNOWN_CHANNEL", "The channel is not in the catalog")
        if not client.may_send(request.channel):
            raise RsError(403, "FORBIDDEN", "This technical user may not send on this channel")

    async def _send(self, request: NotificationRequest) -> Accepted:
        user_id = self._pseudonym(request.value)  # only the pseudonym is stored
        found = await storage.user_devices(self._db, user_id)
        if found.pushers == 0:
            raise RsError(404, "USER_NOT_FOUND", "No device is registered for this user")
        await self._check_backlog()
        now_ms = int(self._clock() * 1000)
        event = EventRequest(
            user_id=user_id,
            channel=request.channel,
            payload=request.payload,
            prio=_PRIO[request.prio],
            identifier=request.reference,
        )
        try:
            (result,) = await self._events.emit([event])
        except PayloadTooLarge as exc:  # one of the user's devices it would reach is encrypted
            raise _too_large(exc) from None
        except InvalidParam as exc:
            raise invalid(exc.message) from None
        status = "queued" if result.notifications > 0 else "no_active_channel"
        return Accepted(_as_uuid(result.event_id), status, request.channel, _rfc3339(now_ms))

    async def _check_backlog(self) -> None:
        counted_at, count = self._pending
        now = time.monotonic()
        if now - counted_at > _PENDING_CACHE_SECONDS:
            count = await storage.pending_count(self._db)
            self._pending = (now, count)
        if count > self._max_pending:
            raise RsError(
                503,
                "SERVICE_UNAVAILABLE",
                "The delivery backlog is full; try again later",
                retry_after=30,
            )

    async def _send_once(
        self, client: RsClient, request: NotificationRequest, key: str
    ) -> Accepted:
        fingerprint = request.fingerprint(self._pseudonym)
        deadline = time.monotonic() + _WAIT_SECONDS
        await self._prune()
        while True:
            now_ms = int(self._clock() * 1000)
            if await storage.claim_key(self._db, client.name, key, fingerprint, now_ms):
                break
            found = await storage.receipt(self._db, client.name, key)
            if found is None:
                continue  # released or expired in between: claim again
            if found.created_at < now_ms - self._retention_ms:
                await storage.expire_key(
                    self._db, client.name, key, before_ms=now_ms - self._retention_ms
                )
                continue
            if found.fingerprint not in (fingerprint, request.unkeyed_fingerprint()):
                raise invalid("This Idempotency-Key was used with a different request")
            if found.notification_id is not None and found.status is not None:
                assert found.accepted_at is not None
                return Accepted(
                    found.notification_id,
                    found.status,
                    request.channel,
                    _rfc3339(found.accepted_at),
                )
            if found.created_at < now_ms - _STALE_MS:  # its owner died before answering
                await storage.release_key(self._db, client.name, key, created_at=found.created_at)
                continue
            if time.monotonic() > deadline:
                raise RsError(
                    503,
                    "SERVICE_UNAVAILABLE",
                    "A request with this Idempotency-Key is still being processed",
                    retry_after=1,
                )
            await asyncio.sleep(0.02)  # the first request is in flight: wait for its answer
        try:
            accepted = await self._send(request)
        except BaseException:
            await storage.release_key(self._db, client.name, key, created_at=now_ms)
            raise
        await storage.complete_key(
            self._db,
            client.name,
            key,
            notification_id=accepted.notification_id,
            status=accepted.status,
            accepted_at=now_ms,
        )
        return Accepted(
            accepted.notification_id, accepted.status, request.channel, _rfc3339(now_ms)
        )

    async def _prune(self) -> None:
        """Drop receipts past retention, at most once a minute per process (ZETA A_29988)."""
        now = time.monotonic()
        if now - self._last_prune < 60:
            return
        self._last_prune = now
        removed = await storage.prune_keys(self._db, int(self._clock() * 1000) - self._retention_ms)
        if removed:
            log.info("pruned %d Idempotency-Key receipts past retention", removed)
