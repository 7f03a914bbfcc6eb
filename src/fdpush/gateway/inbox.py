"""What the development gateway "delivered": every notification per device, bounded in memory.

Each accepted notification becomes one :class:`Received` per device, with a sequence number
(``seq``, increasing, never reused while the process lives) that readers use as a cursor. The
store keeps at most ``per_device`` notifications per device (app_id + pushkey) and ``total``
overall, dropping the oldest first; optionally every notification is also appended to a
JSON-lines file, one object per line, as it arrives.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from fdpush.gateway.render import Provider, provider_for, render
from fdpush.gateway_api import Counts, Priority

__all__ = ["Inbox", "Received"]


@dataclass(slots=True)  # not frozen: one per notification, and frozen costs ~1 µs each
class Received:
    """One notification as one device would have received it.

    The provider message (:attr:`push`) is rendered when it is read, not when the notification
    arrives: most recorded notifications are never looked at, and rendering each on arrival
    was a tenth of the gateway's CPU under load.
    """

    seq: int
    received_at: float  # Unix time
    endpoint: str  # the path it came in on, e.g. "/push/v1/notifyEncrypted/batch"
    item_id: str | None  # the batch item's ``id``; None for ``notify``
    app_id: str
    pushkey: str
    prio: Priority
    notification: dict[str, Any]  # as the Fachdienst sent it (plain: with this one ``device``)
    fields: dict[str, Any]  # the custom keys handed on to the app (see ``render``)
    counts: Counts | None

    @property
    def provider(self) -> Provider:
        return provider_for(self.app_id)

    @property
    def push(self) -> dict[str, Any] | None:
        """The APNs / FCM message the app gets; None: unknown provider."""
        return render(self.app_id, self.pushkey, self.prio, self.fields, self.counts)

    def as_json(self) -> dict[str, Any]:
        """The JSON object the HTTP API and the JSON-lines file show for this notification."""
        return {
            "seq": self.seq,
            "received_at": datetime.fromtimestamp(self.received_at, UTC).isoformat(
                timespec="milliseconds"
            ),
            "endpoint": self.endpoint,
            "id": self.item_id,
            "app_id": self.app_id,
            "pushkey": self.pushkey,
            "provider": self.provider,
            "prio": self.prio,
            "notification": self.notification,
            "push": self.push,
        }


class Inbox:
    """The bounded store of received notifications. Not thread-safe: the owner locks."""

    def __init__(
        self, *, per_device: int = 1000, total: int = 100_000, record_file: Path | None = None
    ) -> None:
        """Keep ``per_device`` notifications per device and ``total`` overall (both ≥ 1)."""
        if per_device < 1 or total < 1:
            raise ValueError("inbox bounds must be at least 1")
        self.per_device = per_device
        self.total = total
        self._all: OrderedDict[int, Received] = OrderedDict()
        self._devices: dict[tuple[str, str], deque[Received]] = {}
        self._last_seq = 0
        self.dropped = 0
        self.record_file = record_file
        self._record: IO[bytes] | None = record_file.open("ab") if record_file else None

    def __len__(self) -> int:
        return len(self._all)

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest notification ever added (0 before the first)."""
        return self._last_seq

    def add(
        self,
        *,
        endpoint: str,
        item_id: str | None,
        app_id: str,
        pushkey: str,
        prio: Priority,
        notification: dict[str, Any],
        fields: dict[str, Any],
        counts: Counts | None,
    ) -> Received:
        """Store one notification (dropping the oldest beyond the bounds) and record it."""
        self._last_seq += 1
        received = Received(
            self._last_seq,
            time.time(),
            endpoint,
            item_id,
            app_id,
            pushkey,
            prio,
            notification,
            fields,
            counts,
        )
        key = (app_id, pushkey)
        device = self._devices.get(key)
        if device is None:
            device = self._devices[key] = deque()
        device.append(received)
        self._all[received.seq] = received
        if len(device) > self.per_device:
            del self._all[device.popleft().seq]
            self.dropped += 1
        if len(self._all) > self.total:
            _, oldest = self._all.popitem(last=False)
            # The oldest of all is the oldest of its device.
            self._forget_in_device(oldest)
            self.dropped += 1
        if self._record is not None:
            self._record.write(orjson.dumps(received.as_json()) + b"\n")
            self._record.flush()
        return received

    def _forget_in_device(self, received: Received) -> None:
        key = (received.app_id, received.pushkey)
        device = self._devices[key]
        device.popleft()
        if not device:
            del self._devices[key]

    def device(self, app_id: str, pushkey: str, *, since: int = 0) -> list[Received]:
        """The device's kept notifications with ``seq > since``, oldest first."""
        return [r for r in self._devices.get((app_id, pushkey), ()) if r.seq > since]

    def since(self, since: int = 0, *, limit: int = 1000) -> list[Received]:
        """Up to ``limit`` kept notifications with ``seq > since``, oldest first."""
        if since >= self._last_seq or not self._all:
            return []
        if self._last_seq - since < len(self._all) // 2:
            # A recent cursor (the usual poll): walk back from the newest.
            newer: list[Received] = []
            for received in reversed(self._all.values()):
                if received.seq <= since:
                    break
                newer.append(received)
            newer.reverse()
            return newer[:limit]
        found: list[Received] = []
        for received in self._all.values():
            if received.seq > since:
                found.append(received)
                if len(found) >= limit:
                    break
        return found

    def clear(self, app_id: str | None = None, pushkey: str | None = None) -> int:
        """Forget every notification, or one device's (both names given); returns how many."""
        if (app_id is None) != (pushkey is None):
            raise ValueError("name a device by both app_id and pushkey, or neither")
        if app_id is None or pushkey is None:
            count = len(self._all)
            self._all.clear()
            self._devices.clear()
            return count
        device = self._devices.pop((app_id, pushkey), deque())
        for received in device:
            del self._all[received.seq]
        return len(device)

    def device_count(self) -> int:
        """How many devices have kept notifications."""
        return len(self._devices)

    def close(self) -> None:
        """Close the JSON-lines file, if any."""
        if self._record is not None:
            self._record.close()
            self._record = None
