"""From the Fachdienst's notifications to pushes, and from deliveries back to the spec's answers.

An encrypted notification is one push (its one device). A plain notification is one push per
device; its item is ``success`` when every device got it, ``partial`` when some pushkeys were
rejected and the rest accepted, and ``failed`` when any device could not be reached (so the
Fachdienst retries; ``rejected`` still names the dead pushkeys) or when all were rejected.
"""

from __future__ import annotations

from fdpush.gateway.production.dispatch import Delivery
from fdpush.gateway.production.push import Push
from fdpush.gateway.render import ENCRYPTED_FIELDS, PLAIN_FIELDS, present_fields
from fdpush.gateway_api import (
    EncryptedNotification,
    NotificationResult,
    PlainNotification,
    SeedNotification,
)

__all__ = ["REJECTED_ERROR", "encrypted_push", "item_result", "plain_pushes"]

REJECTED_ERROR = "Pushkey rejected by the push provider"


def encrypted_push(note: EncryptedNotification) -> Push:
    """The push of an encrypted notification: its fields as they came, never decrypted."""
    device = note["device"]
    fields = present_fields(note, ENCRYPTED_FIELDS)
    prio = note.get("prio", "high")
    return Push(device["app_id"], device["pushkey"], prio, fields, note.get("counts"))


def plain_pushes(note: PlainNotification | SeedNotification) -> list[Push]:
    """One push per device of a plain (Matrix-shaped) notification; a seed-era one may also
    carry the encrypted fields, handed on as they came."""
    # A validated notification holds its schema's fields only: the encrypted ones are there
    # only in a seed-era notification.
    fields = present_fields(note, PLAIN_FIELDS + ENCRYPTED_FIELDS)
    prio, counts = note.get("prio", "high"), note.get("counts")
    return [Push(d["app_id"], d["pushkey"], prio, fields, counts) for d in note["devices"]]


def item_result(item_id: str, pushes: list[Push], deliveries: list[Delivery]) -> NotificationResult:
    """The batch result of one item from the deliveries of its pushes (see the module text)."""
    rejected = list(
        dict.fromkeys(
            p.pushkey for p, d in zip(pushes, deliveries, strict=True) if d.outcome == "rejected"
        )
    )
    failed = [d for d in deliveries if d.outcome == "failed"]
    accepted = sum(1 for d in deliveries if d.outcome == "accepted")
    if failed:
        error = failed[0].error or "not delivered"
        if len(deliveries) > 1:
            error = f"{len(failed)} of {len(deliveries)} devices not reached: {error}"
        return {"id": item_id, "status": "failed", "rejected": rejected, "error": error}
    if rejected and not accepted:
        return {"id": item_id, "status": "failed", "rejected": rejected, "error": REJECTED_ERROR}
    if rejected:
        return {"id": item_id, "status": "partial", "rejected": rejected}
    return {"id": item_id, "status": "success", "rejected": []}
