"""The request bodies of the Push Gateway API (``push_gateway_openapi.yaml``) as pydantic models.

The models are the spec's schemas, read strictly: a field of the wrong JSON type, an explicit
``null`` where the schema says ``string``/``object``/``integer``, a ``ciphertext`` that is not
exactly 1404 characters, an item ``id`` over 64 characters, an empty batch or a device listed twice
in one plain notification all fail validation ("Invalid data format"). Unknown fields are
allowed, as the schemas do not forbid them.

Two constraints of the schemas are deliberately *not* in the models, because the spec gives them
error answers of their own with a lower priority than "Invalid data format": the batch's
``maxItems`` ("Batch size exceeds maximum limit", with a configurable limit) and the
``uniqueItems`` of the batch array ("Duplicate notification IDs in batch": two identical items
necessarily repeat an id).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "CIPHERTEXT_LENGTH",
    "MAX_ITEM_ID_LENGTH",
    "Counts",
    "Device",
    "EncryptedBatchItem",
    "EncryptedBatchRequest",
    "EncryptedNotification",
    "PlainBatchItem",
    "PlainBatchRequest",
    "PlainNotification",
    "PlainNotificationRequest",
    "Priority",
    "PusherData",
    "SeedNotification",
    "SeedNotificationRequest",
]

CIPHERTEXT_LENGTH = 1404  # Base64 of 12-byte IV ‖ 1024 framed bytes ‖ 16-byte tag
MAX_ITEM_ID_LENGTH = 64

Priority = Literal["high", "low"]


class _SpecModel(BaseModel):
    """A schema object: strict JSON types, unknown fields ignored, no ``null`` for any field."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        # No property of these schemas is nullable; pydantic would read ``null`` as "absent".
        if isinstance(data, dict):
            nulls = [name for name in cls.model_fields if name in data and data[name] is None]
            if nulls:
                raise ValueError(f"null is not allowed for {', '.join(nulls)}")
        return data


class PusherData(_SpecModel):
    """``Device.data``: the pusher's ``data`` minus ``url``; custom keys are allowed."""

    format: str | None = None


class Device(_SpecModel):
    """The spec's ``Device``: where one notification goes."""

    app_id: str
    pushkey: str
    pushkey_ts: int | None = None
    data: PusherData | None = None
    tweaks: dict[str, Any] | None = None


class Counts(_SpecModel):
    """The spec's ``Counts``: unacknowledged communications of the recipient."""

    unread: int | None = None
    missed_calls: int | None = None


class EncryptedNotification(_SpecModel):
    """The spec's ``EncryptedNotification``: one sealed notification for one device."""

    ciphertext: Annotated[str, Field(min_length=CIPHERTEXT_LENGTH, max_length=CIPHERTEXT_LENGTH)]
    time_message_encrypted: str
    key_identifier: str
    identifier: str | None = None
    prio: Priority = "high"
    counts: Counts | None = None
    device: Device


class _PlainFields(_SpecModel):
    """The optional, Matrix-style fields a plain notification may carry."""

    event_id: str | None = None
    room_id: str | None = None
    type: str | None = None
    sender: str | None = None
    sender_display_name: str | None = None
    room_name: str | None = None
    room_alias: str | None = None
    user_is_target: bool | None = None
    content: dict[str, Any] | None = None
    counts: Counts | None = None
    devices: list[Device]

    @field_validator("devices")
    @classmethod
    def _devices_unique(cls, devices: list[Device]) -> list[Device]:
        # ``uniqueItems: true`` on ``devices``.
        seen: set[bytes] = set()
        for device in devices:
            key = orjson.dumps(device.model_dump(exclude_unset=True), option=orjson.OPT_SORT_KEYS)
            if key in seen:
                raise ValueError("a device is listed twice")
            seen.add(key)
        return devices


class PlainNotification(_PlainFields):
    """The spec's ``PlainNotification`` (``prio`` and ``devices`` required)."""

    prio: Priority


class SeedNotification(_PlainFields):
    """The seed-era notification (``/_matrix/push/v1/notify``): ``prio`` optional.

    The seed spec's ``notify`` took either a plain or an encrypted notification, both addressed
    to ``devices``; the encrypted fields are kept as they come (the seed gave them no bounds).
    """

    prio: Priority = "high"
    ciphertext: str | None = None
    time_message_encrypted: str | None = None
    key_identifier: str | None = None
    identifier: str | None = None


class PlainNotificationRequest(_SpecModel):
    """The body of ``POST /push/v1/notify``."""

    notification: PlainNotification


class SeedNotificationRequest(_SpecModel):
    """The body of ``POST /_matrix/push/v1/notify``."""

    notification: SeedNotification


class _BatchItem(_SpecModel):
    id: Annotated[str, Field(max_length=MAX_ITEM_ID_LENGTH)]


class EncryptedBatchItem(_BatchItem):
    """One item of ``notifyEncrypted/batch``."""

    notification: EncryptedNotification


class PlainBatchItem(_BatchItem):
    """One item of ``notify/batch``."""

    notification: PlainNotification


class EncryptedBatchRequest(_SpecModel):
    """The body of ``POST /push/v1/notifyEncrypted/batch`` (without ``maxItems``, see above)."""

    notifications: Annotated[list[EncryptedBatchItem], Field(min_length=1)]


class PlainBatchRequest(_SpecModel):
    """The body of ``POST /push/v1/notify/batch`` (without ``maxItems``, see above)."""

    notifications: Annotated[list[PlainBatchItem], Field(min_length=1)]
