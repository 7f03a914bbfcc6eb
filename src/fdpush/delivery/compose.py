"""Claimed outbox rows → notifications ready for the gateway, sealed at send time.

For each row: its pusher (gone → ``failed``, "device deregistered") and its pushkey (stored
sealed, opened once per pusher), its gateway (still on the allow-list, else ``failed``), the
event's payload (opened once per event), and for an encrypted
pusher the key generation of the sending month (:func:`fdpush.domain.keys.advance`; a pusher
whose keys do not open, or a payload larger than the frame → ``failed`` — never plain text
instead). What goes out are the Push Gateway API's ``EncryptedNotification`` and
``PlainNotification`` (:mod:`fdpush.gateway_api`), each to the pusher's ``Device`` (built once
per pusher).

Pure: no I/O. The worker persists :attr:`Composition.key_changes` *before* it sends anything
sealed with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from fdpush import crypto
from fdpush.delivery.gateway import EncodedItem
from fdpush.domain.errors import InvalidParam
from fdpush.domain.keys import Advance, KeyVault, advance
from fdpush.gateway_api import (
    Device,
    EncryptedBatchItem,
    EncryptedNotification,
    PlainBatchItem,
    Priority,
)
from fdpush.storage.outbox import Claimed, EventBody, Target

__all__ = ["Composition", "Ready", "compose"]

log = logging.getLogger(__name__)

DEREGISTERED = "device deregistered before delivery"
NO_KEY = "no usable key for this pusher (sealed under another master key?); it must register again"
NO_PAYLOAD = "the event's payload is no longer stored"
# The pusher turned encrypted after the event was accepted for it as a plain one.
TOO_LARGE = f"the payload does not fit the encrypted frame ({crypto.MAX_PAYLOAD_BYTES} bytes)"


@dataclass(slots=True)  # not frozen: one per notification, and frozen costs ~1 µs each
class Ready:
    """A row with the notification to send for it, and the pushkey it addresses."""

    row: Claimed
    item: EncodedItem
    pushkey: str


@dataclass(slots=True)
class Composition:
    ready: list[Ready] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # row id → reason; terminal
    unreadable: list[Claimed] = field(default_factory=list)  # stored data that will not open
    # Ratchet steps to persist before sending: (pusher_id, user_id, the advance).
    key_changes: list[tuple[int, str, Advance]] = field(default_factory=list)


def compose(
    rows: Sequence[Claimed],
    targets: Mapping[int, Target],
    bodies: Mapping[str, EventBody],
    *,
    vault: KeyVault,
    period: str,
    gateway_refusal: Callable[[str], str | None],
) -> Composition:
    """Build what ``rows`` send, sealing under each pusher's key for ``period``.

    ``gateway_refusal(base_url)`` says why a gateway may no longer be sent to (None: allowed).
    """
    out = Composition()
    payloads: dict[str, bytes | None] = {}
    contents: dict[str, Any] = {}  # the payloads parsed, for plain pushers only
    pushkeys: dict[int, str | None] = {}
    devices: dict[int, Device] = {}
    keys: dict[int, Advance | None] = {}
    refusals: dict[str, str | None] = {}
    for row in rows:
        if row.gateway not in refusals:
            refusals[row.gateway] = gateway_refusal(row.gateway)
        refusal = refusals[row.gateway]
        if refusal is not None:
            out.failed[row.id] = refusal
            continue
        target = targets.get(row.pusher_id) if row.pusher_id is not None else None
        if target is not None and target.pusher_id not in pushkeys:
            pushkeys[target.pusher_id] = _open_pushkey(vault, target)
        pushkey = None if target is None else pushkeys[target.pusher_id]
        if row.body is not None:  # written before revision 0003: the whole body, sealed
            _legacy(row, target, pushkey, vault, out)
            continue
        if target is None:
            out.failed[row.id] = DEREGISTERED
            continue
        body = bodies.get(row.event_id)
        if body is not None and body.user_id != target.user_id:
            # Never to another person's device, whatever the row says: the pusher it named
            # is gone and its id belongs to someone else now.
            out.failed[row.id] = DEREGISTERED
            continue
        if pushkey is None:
            out.unreadable.append(row)
            continue
        if body is None or body.payload is None:
            out.failed[row.id] = NO_PAYLOAD
            continue
        if row.event_id not in payloads:
            payloads[row.event_id] = _open_payload(vault, body)
        payload = payloads[row.event_id]
        if payload is None:
            out.unreadable.append(row)
            continue
        device = devices.get(target.pusher_id)
        if device is None:
            device = devices[target.pusher_id] = _device(target, pushkey)
        prio: Priority = "low" if body.prio == "low" else "high"
        if target.key_identifier is None:
            if row.event_id not in contents:
                contents[row.event_id] = _parse(payload)
            content = contents[row.event_id]
            if content is _NOT_JSON:
                out.unreadable.append(row)
                continue
            plain: PlainBatchItem = {
                "id": row.id,
                "notification": {
                    "event_id": row.id,
                    "prio": prio,
                    "content": content,
                    "devices": [device],
                },
            }
            out.ready.append(Ready(row, EncodedItem.of(plain), pushkey))
            continue
        if len(payload) > crypto.MAX_PAYLOAD_BYTES:
            out.failed[row.id] = TOO_LARGE  # never plain text instead
            continue
        if target.pusher_id not in keys:
            step = advance(
                vault, (target.user_id, target.app_id, target.pushkey), target.generations, period
            )
            keys[target.pusher_id] = step
            if step is not None and step.changes:
                out.key_changes.append((target.pusher_id, target.user_id, step))
        step = keys[target.pusher_id]
        if step is None:
            out.failed[row.id] = NO_KEY
            continue
        sealed: EncryptedNotification = {
            "ciphertext": crypto.seal_notification(step.generation.key, payload),
            "time_message_encrypted": step.generation.period,
            "key_identifier": target.key_identifier,
            "prio": prio,
            "device": device,
        }
        if body.identifier is not None:
            sealed["identifier"] = body.identifier
        item: EncryptedBatchItem = {"id": row.id, "notification": sealed}
        out.ready.append(Ready(row, EncodedItem.of(item), pushkey))
    return out


def _device(target: Target, pushkey: str) -> Device:
    """The spec's ``Device``: everything of the pusher's ``data`` but ``url`` is forwarded."""
    data = orjson.loads(target.data)
    data.pop("url", None)
    return {
        "app_id": target.app_id,
        "pushkey": pushkey,
        "pushkey_ts": target.pushkey_ts,
        "data": data,
        "tweaks": {},
    }


def _open_payload(vault: KeyVault, body: EventBody) -> bytes | None:
    """The event's payload (JSON the service wrote), or None when it does not open."""
    assert body.payload is not None
    try:
        return vault.open_record("event-payload", body.id, body.payload)
    except crypto.CryptoError:
        return None


_NOT_JSON = object()


def _parse(payload: bytes) -> Any:
    """The payload as the JSON content of a plain notification (``_NOT_JSON`` if it is not):
    parsed only for plain pushers, an encrypted one sends the bytes inside its frame."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def _open_pushkey(vault: KeyVault, target: Target) -> str | None:
    """The pusher's pushkey, or None when its sealed copy does not open."""
    if target.pushkey_sealed is None:
        return None
    try:
        return vault.open_pushkey(
            target.user_id, target.app_id, target.pushkey, target.pushkey_sealed
        )
    except crypto.CryptoError:
        return None


def _legacy(
    row: Claimed, target: Target | None, pushkey: str | None, vault: KeyVault, out: Composition
) -> None:
    assert row.body is not None
    try:
        notification = orjson.loads(vault.open_record("notification", row.id, row.body))
    except (crypto.CryptoError, orjson.JSONDecodeError):
        out.unreadable.append(row)
        return
    if target is None:
        out.failed[row.id] = DEREGISTERED
        return
    if pushkey is None:
        out.unreadable.append(row)
        return
    # The notification object as it was built then: sent as it is.
    item: EncryptedBatchItem | PlainBatchItem = {"id": row.id, "notification": notification}
    out.ready.append(Ready(row, EncodedItem.of(item), pushkey))


def refusal_by(check: Callable[[str], None]) -> Callable[[str], str | None]:
    """Adapt an allow-list check that raises ``InvalidParam`` to ``gateway_refusal``."""

    def refusal(base_url: str) -> str | None:
        try:
            check(base_url)
        except InvalidParam as exc:
            return f"not sent, the gateway is not allowed now: {exc.message}"
        return None

    return refusal
