"""What the app would receive: the APNs or FCM message a real gateway would build.

A real Push Gateway picks the provider by the suffix of ``app_id`` (``<bundle id>.apns`` →
APNs, ``<project>.<app>.firebase`` → FCM) and forwards the notification's fields as custom
keys, so the app (an iOS notification service extension, an Android messaging service) can
decrypt them. Other suffixes are recorded as provider ``unknown`` with no rendered message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson

from fdpush.gateway_api import Counts, Priority

__all__ = [
    "APNS_PLACEHOLDER_TITLE",
    "ENCRYPTED_FIELDS",
    "PLAIN_FIELDS",
    "Provider",
    "present_fields",
    "provider_for",
    "render",
]

Provider = Literal["apns", "fcm", "unknown"]

# An alert the notification service extension replaces after decrypting; without an alert
# iOS does not start the extension at all.
APNS_PLACEHOLDER_TITLE = "New notification"


# The custom keys a notification hands on to the app: an encrypted notification's, and the
# Matrix-style fields of a plain one.
ENCRYPTED_FIELDS = ("ciphertext", "time_message_encrypted", "key_identifier", "identifier")
PLAIN_FIELDS = (
    "event_id",
    "room_id",
    "type",
    "sender",
    "sender_display_name",
    "room_name",
    "room_alias",
    "user_is_target",
    "content",
)


def present_fields(notification: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The named fields the sender set, with their values."""
    return {name: notification[name] for name in names if name in notification}


def provider_for(app_id: str) -> Provider:
    """The provider a gateway routes ``app_id`` to, by the suffix convention."""
    if app_id.endswith(".apns"):
        return "apns"
    if app_id.endswith(".firebase"):
        return "fcm"
    return "unknown"


def render(
    app_id: str,
    pushkey: str,
    prio: Priority,
    fields: dict[str, Any],
    counts: Counts | None,
) -> dict[str, Any] | None:
    """The provider message for one device, or None for an unknown provider.

    ``fields`` are the notification's custom keys (for an encrypted notification
    ``ciphertext``, ``time_message_encrypted``, ``key_identifier`` and ``identifier`` when set;
    for a plain one the Matrix-style fields present). APNs: ``{"headers": {...}, "payload":
    {"aps": {..., "mutable-content": 1}, <fields>}}`` with ``apns-priority`` 10 (high) or 5
    (low). FCM (HTTP v1): ``{"message": {"token", "data": {<fields as strings>}, "android":
    {"priority": "HIGH" | "NORMAL"}}}``.
    """
    provider = provider_for(app_id)
    if provider == "apns":
        return _apns(app_id, pushkey, prio, fields, counts)
    if provider == "fcm":
        return _fcm(pushkey, prio, fields, counts)
    return None


def _apns(
    app_id: str, pushkey: str, prio: Priority, fields: dict[str, Any], counts: Counts | None
) -> dict[str, Any]:
    aps: dict[str, Any] = {"alert": {"title": APNS_PLACEHOLDER_TITLE}, "mutable-content": 1}
    if counts is not None and "unread" in counts:
        aps["badge"] = counts["unread"]
    return {
        "device_token": pushkey,
        "headers": {
            "apns-topic": app_id.removesuffix(".apns"),
            "apns-push-type": "alert",
            "apns-priority": "10" if prio == "high" else "5",
        },
        "payload": {"aps": aps, **fields},
    }


def _fcm(
    pushkey: str, prio: Priority, fields: dict[str, Any], counts: Counts | None
) -> dict[str, Any]:
    # FCM's data messages carry string values only.
    data = {key: _as_string(value) for key, value in fields.items()}
    if counts is not None:
        if "unread" in counts:
            data["unread"] = str(counts["unread"])
        if "missed_calls" in counts:
            data["missed_calls"] = str(counts["missed_calls"])
    return {
        "message": {
            "token": pushkey,
            "data": data,
            "android": {"priority": "HIGH" if prio == "high" else "NORMAL"},
        }
    }


def _as_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
