"""The development Push Gateway's state and behaviour, without HTTP.

:class:`DevGateway` takes validated notifications, decides per item what a real gateway would
answer (success, a rejected pushkey, a failure), records what each device would receive, and
counts everything. The HTTP layer (:mod:`fdpush.gateway.app`) parses, validates and shapes the
answers; tests that run the app in their own process can inspect a ``DevGateway`` directly.
All methods are thread-safe.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from fdpush.gateway.inbox import Inbox, Received
from fdpush.gateway.render import (
    ENCRYPTED_FIELDS,
    PLAIN_FIELDS,
    present_fields,
)
from fdpush.gateway.trouble import DelayPoint, Limits, ResultOrder, Trouble, TroubleUpdate
from fdpush.gateway_api import (
    Counts,
    Device,
    EncryptedBatchItem,
    NotificationResult,
    PlainBatchItem,
    PlainNotification,
    Priority,
    SeedNotification,
)

__all__ = ["DevGateway", "ForcedAnswer", "SimulatedFailure"]

_REJECTED_ERROR = "Pushkey rejected by the push provider"


@dataclass(frozen=True, slots=True)
class ForcedAnswer:
    """A whole-request answer forced by the ``status`` switch."""

    status: int
    retry_after: int | None
    body: str | None  # verbatim body; None: the spec's JSON error for the status


class SimulatedFailure(Exception):
    """``notify`` (one notification, no per-item status) hit the ``fail_fraction`` switch."""


class DevGateway:
    """A Push Gateway that records instead of calling APNs/FCM, with switches for trouble."""

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        trouble: Trouble | None = None,
        inbox_per_device: int = 1000,
        inbox_total: int = 100_000,
        record_file: Path | None = None,
        fail_seed: int | None = None,
    ) -> None:
        """A gateway with these limits and switches; ``record_file`` gets JSON lines.

        Raises ValueError for limits or switches out of range.
        """
        self._lock = threading.RLock()
        self._initial_limits = replace(limits) if limits else Limits()
        self._initial_limits.check()
        self.limits = replace(self._initial_limits)
        self.trouble = trouble if trouble is not None else Trouble()
        self.trouble.check()
        self._inbox = Inbox(per_device=inbox_per_device, total=inbox_total, record_file=record_file)
        # Not for secrets: decides which items a test wants to see fail.
        self._random = random.Random(fail_seed)  # noqa: S311
        self._stats: Counter[str] = Counter()
        self._requests_by_endpoint: Counter[str] = Counter()
        self._responses_by_status: Counter[int] = Counter()
        self._batch_sizes: Counter[int] = Counter()

    # --- trouble switches ----------------------------------------------------------------------

    def reject(self, *pushkeys: str) -> None:
        """Make each pushkey come back in ``rejected`` once, on the next request naming it."""
        with self._lock:
            self.trouble.reject_pushkeys.update(pushkeys)

    def update_trouble(self, update: TroubleUpdate) -> dict[str, Any]:
        """Apply the switches named in ``update`` (see :class:`TroubleUpdate`); returns them all.

        A named switch given as ``null`` goes back to its default. Raises ValueError when the
        result is out of range (nothing is changed then).
        """
        with self._lock:
            trouble = (
                Trouble()
                if update.reset
                else replace(self.trouble, reject_pushkeys=set(self.trouble.reject_pushkeys))
            )
            limits = replace(self._initial_limits) if update.reset else replace(self.limits)
            targets: dict[str, tuple[Trouble | Limits, Trouble | Limits]] = {
                **{f.name: (trouble, Trouble()) for f in fields(Trouble)},
                **{f.name: (limits, self._initial_limits) for f in fields(Limits)},
            }
            for name in update.model_fields_set:
                value = getattr(update, name)
                if name == "reject_pushkeys":
                    trouble.reject_pushkeys.update(value or ())
                elif name in targets:
                    target, defaults = targets[name]
                    setattr(target, name, getattr(defaults, name) if value is None else value)
            trouble.check()
            limits.check()
            self.trouble, self.limits = trouble, limits
            if "fail_seed" in update.model_fields_set:
                self._random.seed(update.fail_seed)
            return self.switches()

    def switches(self) -> dict[str, Any]:
        """Every trouble switch and limit, as JSON."""
        with self._lock:
            return {
                **self.trouble.as_json(),
                "max_batch_size": self.limits.max_batch_size,
                "max_notification_size_kb": self.limits.max_notification_size_kb,
                "max_request_size_kb": self.limits.max_request_size_kb,
            }

    def take_delay(self) -> tuple[float, DelayPoint]:
        """Seconds to stall the current request, and whether before or after delivering it.

        Counts the request against ``delay_count``.
        """
        with self._lock:
            trouble = self.trouble
            point = trouble.delay_point
            if trouble.delay_ms <= 0:
                return 0.0, point
            delay = trouble.delay_ms / 1000
            if trouble.delay_count is not None:
                trouble.delay_count -= 1
                if trouble.delay_count <= 0:
                    trouble.delay_ms, trouble.delay_count = 0, None
            return delay, point

    def take_forced_answer(self) -> ForcedAnswer | None:
        """The status to answer the current request with, if forced (counts ``status_count``)."""
        with self._lock:
            trouble = self.trouble
            if trouble.status is None:
                return None
            answer = ForcedAnswer(trouble.status, trouble.retry_after, trouble.status_body)
            if trouble.status_count is not None:
                trouble.status_count -= 1
                if trouble.status_count <= 0:
                    trouble.status = trouble.status_count = None
                    trouble.retry_after = trouble.status_body = None
            return answer

    # --- counting --------------------------------------------------------------------------

    def count_request(self, endpoint: str) -> None:
        """Count one request to a Push Gateway API endpoint."""
        with self._lock:
            self._stats["requests"] += 1
            self._requests_by_endpoint[endpoint] += 1

    def count_abandoned(self) -> None:
        """Count a request whose sender went away before it was read (during a stall)."""
        with self._lock:
            self._stats["requests_abandoned"] += 1

    def count_response(self, status: int) -> None:
        """Count one answer of a Push Gateway API endpoint."""
        with self._lock:
            self._responses_by_status[status] += 1

    def stats(self) -> dict[str, Any]:
        """The counters: requests, answers by status, items by outcome, what the inbox holds."""
        with self._lock:
            return {
                "requests": self._stats["requests"],
                "requests_by_endpoint": dict(self._requests_by_endpoint),
                "requests_abandoned": self._stats["requests_abandoned"],
                "responses_by_status": {str(k): v for k, v in self._responses_by_status.items()},
                "batch_sizes": {str(k): v for k, v in sorted(self._batch_sizes.items())},
                "items_received": self._stats["items_received"],
                "items_accepted": self._stats["items_accepted"],
                "items_failed": self._stats["items_failed"],
                "items_partial": self._stats["items_partial"],
                "pushkeys_rejected": self._stats["pushkeys_rejected"],
                "notifications_recorded": self._stats["notifications_recorded"],
                "inbox": {
                    "notifications": len(self._inbox),
                    "devices": self._inbox.device_count(),
                    "dropped": self._inbox.dropped,
                    "last_seq": self._inbox.last_seq,
                },
            }

    def reset_stats(self) -> None:
        """Zero every counter, ``dropped`` included (the inbox and the switches stay)."""
        with self._lock:
            self._inbox.dropped = 0
            self._stats.clear()
            self._requests_by_endpoint.clear()
            self._responses_by_status.clear()
            self._batch_sizes.clear()

    # --- delivering ------------------------------------------------------------------------

    def deliver_encrypted(
        self, endpoint: str, items: list[EncryptedBatchItem], raw: list[dict[str, Any]]
    ) -> list[NotificationResult]:
        """Handle a validated ``notifyEncrypted/batch``; results in the configured order.

        ``raw`` are the request's items as received (recorded as such). An item whose pushkey
        is due for rejection fails with that pushkey in ``rejected`` and is not delivered.
        """
        with self._lock:
            due = self._take_rejections(item["notification"]["device"]["pushkey"] for item in items)
            self._count_batch(len(items))
            results: list[NotificationResult] = []
            for item, raw_item in zip(items, raw, strict=True):
                item_id, note = item["id"], item["notification"]
                device = note["device"]
                if device["pushkey"] in due:
                    results.append(self._failed(item_id, [device["pushkey"]], _REJECTED_ERROR))
                elif self._fails():
                    results.append(self._failed(item_id, [], self.trouble.fail_error))
                else:
                    fields_ = present_fields(note, ENCRYPTED_FIELDS)
                    prio = note.get("prio", "high")
                    raw_note = raw_item["notification"]
                    counts = note.get("counts")
                    self._record(endpoint, item_id, device, prio, counts, fields_, raw_note)
                    results.append(self._succeeded(item_id, []))
            return self._ordered(results)

    def deliver_plain(
        self, endpoint: str, items: list[PlainBatchItem], raw: list[dict[str, Any]]
    ) -> list[NotificationResult]:
        """Handle a validated ``notify/batch``; results in the configured order.

        Each item goes to all its devices: ``success`` when none is rejected, ``partial`` when
        some are, ``failed`` when all are (or when the ``fail_fraction`` switch hits).
        """
        with self._lock:
            due = self._take_rejections(
                device["pushkey"] for item in items for device in item["notification"]["devices"]
            )
            self._count_batch(len(items))
            results: list[NotificationResult] = []
            for item, raw_item in zip(items, raw, strict=True):
                item_id, note = item["id"], item["notification"]
                rejected, accepted = _split(note["devices"], due)
                if note["devices"] and not accepted:
                    results.append(self._failed(item_id, rejected, _REJECTED_ERROR))
                elif self._fails():
                    results.append(self._failed(item_id, rejected, self.trouble.fail_error))
                else:
                    self._record_plain(endpoint, item_id, note, raw_item["notification"], due)
                    if rejected:
                        self._stats["items_partial"] += 1
                        results.append({"id": item_id, "status": "partial", "rejected": rejected})
                    else:
                        results.append(self._succeeded(item_id, []))
            return self._ordered(results)

    def deliver_notify(
        self,
        endpoint: str,
        notification: PlainNotification | SeedNotification,
        raw: dict[str, Any],
    ) -> list[str]:
        """Handle a validated ``notify``; returns the ``rejected`` pushkeys.

        Raises :class:`SimulatedFailure` when the ``fail_fraction`` switch hits (the whole
        request fails: ``notify`` has no per-item status).
        """
        with self._lock:
            devices = notification["devices"]
            due = self._take_rejections(device["pushkey"] for device in devices)
            rejected, accepted = _split(devices, due)
            if accepted or not devices:
                if self._fails():
                    # Not reported yet: the rejections wait for the next request.
                    self.trouble.reject_pushkeys |= due
                    raise SimulatedFailure(self.trouble.fail_error)
                self._record_plain(endpoint, None, notification, raw, due)
            return rejected

    def _record_plain(
        self,
        endpoint: str,
        item_id: str | None,
        note: PlainNotification | SeedNotification,
        raw_note: dict[str, Any],
        due: set[str],
    ) -> None:
        # A validated notification holds its schema's fields only: the encrypted ones are there
        # only in a seed-era notification.
        fields_ = present_fields(note, PLAIN_FIELDS + ENCRYPTED_FIELDS)
        prio, counts = note.get("prio", "high"), note.get("counts")
        shared = {k: v for k, v in raw_note.items() if k != "devices"}
        for device, raw_device in zip(note["devices"], raw_note["devices"], strict=True):
            if device["pushkey"] not in due:
                raw_one = {**shared, "device": raw_device}
                self._record(endpoint, item_id, device, prio, counts, fields_, raw_one)

    def _take_rejections(self, pushkeys: Iterable[str]) -> set[str]:
        # Reported once: the pushkeys of this request that are due are forgotten right away.
        due = self.trouble.reject_pushkeys.intersection(pushkeys)
        self.trouble.reject_pushkeys -= due
        self._stats["pushkeys_rejected"] += len(due)
        return due

    def _fails(self) -> bool:
        fraction = self.trouble.fail_fraction
        return fraction > 0.0 and self._random.random() < fraction

    def _count_batch(self, size: int) -> None:
        self._batch_sizes[size] += 1
        self._stats["items_received"] += size

    def _failed(self, item_id: str, rejected: list[str], error: str) -> NotificationResult:
        self._stats["items_failed"] += 1
        return {"id": item_id, "status": "failed", "rejected": rejected, "error": error}

    def _succeeded(self, item_id: str, rejected: list[str]) -> NotificationResult:
        self._stats["items_accepted"] += 1
        return {"id": item_id, "status": "success", "rejected": rejected}

    def _ordered(self, results: list[NotificationResult]) -> list[NotificationResult]:
        order: ResultOrder = self.trouble.result_order
        if order == "sorted":
            return sorted(results, key=lambda r: r["id"])
        if order == "reversed":
            return results[::-1]
        return results

    def _record(
        self,
        endpoint: str,
        item_id: str | None,
        device: Device,
        prio: Priority,
        counts: Counts | None,
        fields_: dict[str, Any],
        notification: dict[str, Any],
    ) -> None:
        self._inbox.add(
            endpoint=endpoint,
            item_id=item_id,
            app_id=device["app_id"],
            pushkey=device["pushkey"],
            prio=prio,
            notification=notification,
            fields=fields_,
            counts=counts,
        )
        self._stats["notifications_recorded"] += 1

    # --- reading ---------------------------------------------------------------------------

    def inbox(self, app_id: str, pushkey: str, *, since: int = 0) -> list[Received]:
        """The device's kept notifications with ``seq > since``, oldest first."""
        with self._lock:
            return self._inbox.device(app_id, pushkey, since=since)

    def notifications(self, since: int = 0, *, limit: int = 1000) -> list[Received]:
        """Up to ``limit`` kept notifications of all devices with ``seq > since``, oldest first."""
        with self._lock:
            return self._inbox.since(since, limit=limit)

    def last_seq(self) -> int:
        """The ``seq`` of the newest notification recorded so far (0 before the first)."""
        with self._lock:
            return self._inbox.last_seq

    def clear_inbox(self, app_id: str | None = None, pushkey: str | None = None) -> int:
        """Forget all kept notifications, or one device's; returns how many were forgotten."""
        with self._lock:
            return self._inbox.clear(app_id, pushkey)

    def close(self) -> None:
        """Close the JSON-lines file, if any."""
        with self._lock:
            self._inbox.close()


def _split(devices: list[Device], due: set[str]) -> tuple[list[str], list[Device]]:
    """The rejected pushkeys (each once, in order) and the devices that get the notification."""
    rejected = list(dict.fromkeys(d["pushkey"] for d in devices if d["pushkey"] in due))
    return rejected, [d for d in devices if d["pushkey"] not in due]
