"""Outbox rows as ``fdpush.storage.outbox.queue`` takes them, for tests that fill the outbox
without the event API: every column given, anything can be overridden."""

from __future__ import annotations

from typing import Any

GATEWAY = "https://gw.example/push/v1/"


def event(event_id: str, **overrides: Any) -> dict[str, Any]:
    """An event row: user ``u``, channel ``c``, created at 1 ms, a one-byte payload."""
    return {
        "id": event_id,
        "user_id": "u",
        "channel": "c",
        "prio": "high",
        "identifier": None,
        "created_at": 1,
        "payload": b"x",
        "history": False,
    } | overrides


def notification(notification_id: str, event_id: str, **overrides: Any) -> dict[str, Any]:
    """A new, pending notification row of ``event_id``, due at 0, to :data:`GATEWAY`."""
    return {
        "id": notification_id,
        "event_id": event_id,
        "pusher_id": None,
        "gateway": GATEWAY,
        "encrypted": True,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": 0,
        "created_at": 1,
    } | overrides
