"""The Push Gateway API's objects (``spec/current/push_gateway_openapi.yaml``), once, under the
spec's names.

The sender (:mod:`fdpush.delivery`) builds its requests of them and reads the gateways' answers
into them; the development and production gateways (:mod:`fdpush.gateway`) validate requests
into them and answer with them; the tests build requests and read answers with them.

They are ``TypedDict``\\ s: the JSON objects themselves, typed. Building one is building a dict
and encoding it is ``orjson`` (the sender's hot path builds a hundred per batch; measured in
``bench/bench_wire.py``); an optional property is a key that is absent, never ``None``, as the
spec has no nulls. pydantic validates them:

- **Requests are read strictly** (:func:`validate_request`, what a gateway does): a field of
  the wrong JSON type, an explicit ``null``, a ``ciphertext`` that is not exactly 1404
  characters, an item ``id`` over 64 characters, an empty batch or a device listed twice in one
  plain notification fail validation — "Invalid data format". Unknown fields are dropped, as
  the schemas do not forbid them. Two constraints of the schemas are left to the gateway,
  because the spec gives them error answers of their own with a lower priority than "Invalid
  data format": the batch's ``maxItems`` ("Batch size exceeds maximum limit", with a
  configurable limit) and its ``uniqueItems`` ("Duplicate notification IDs in batch": two
  identical items necessarily repeat an id).
- **Answers are read leniently** (:func:`read_answer`, what a sender does): whatever a gateway
  answers is used as far as it is the spec's. ``rejected`` and ``error`` may be ``null``, the
  ``summary`` and an error's ``details`` may be missing or unreadable, and a result or a
  rejected pushkey that is not the spec's shape is skipped (its notification stays undecided)
  rather than spoiling the whole answer.
"""

from __future__ import annotations

from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,  # pydantic reads these on Python 3.11
    TypeVar,
)

import orjson
from pydantic import (
    AfterValidator,
    Field,
    OnErrorOmit,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from typing_extensions import TypedDict

__all__ = [
    "BATCH_TOO_BIG",
    "CIPHERTEXT_LENGTH",
    "DUPLICATE_IDS",
    "INVALID_DATA",
    "ITEM_TOO_LARGE",
    "MAX_ITEM_ID_LENGTH",
    "BatchNotificationRequest",
    "BatchNotificationResponse",
    "BatchSummary",
    "Counts",
    "Device",
    "EncryptedBatchItem",
    "EncryptedBatchNotificationRequest",
    "EncryptedNotification",
    "ErrorResponse",
    "NotificationResult",
    "NotifyResponse",
    "PlainBatchItem",
    "PlainNotification",
    "PlainNotificationRequest",
    "Priority",
    "RejectedPushKeys",
    "ResultStatus",
    "SeedNotification",
    "SeedNotificationRequest",
    "encode",
    "read_answer",
    "validate_request",
]

CIPHERTEXT_LENGTH = 1404  # Base64 of 12-byte IV ‖ 1024 framed bytes ‖ 16-byte tag
MAX_ITEM_ID_LENGTH = 64

# The ``error`` of a batch endpoint's 400, in the spec's priority order (the first applicable).
INVALID_DATA = "Invalid data format"
BATCH_TOO_BIG = "Batch size exceeds maximum limit"
DUPLICATE_IDS = "Duplicate notification IDs in batch"
ITEM_TOO_LARGE = "Individual notification too large"

Priority = Literal["high", "low"]  # absent: "high"
ResultStatus = Literal["success", "failed", "partial"]

RejectedPushKeys = list[str]
"""Pushkeys the gateway (or its provider) rejected: the Fachdienst deletes their pushers."""

_T = TypeVar("_T")


# --- the notification and its device ------------------------------------------------------------


def _pusher_data(data: dict[str, Any]) -> dict[str, Any]:
    # ``PusherData.format`` is a string; the other keys are the pusher's own.
    if "format" in data and not isinstance(data["format"], str):
        raise ValueError("format must be a string")
    return data


class Counts(TypedDict, total=False):
    """The spec's ``Counts``: unacknowledged communications of the recipient."""

    unread: int
    missed_calls: int


class Device(TypedDict):
    """The spec's ``Device``: where one notification goes.

    ``data`` is the spec's ``PusherData``: the pusher's ``data`` minus ``url`` (its ``format`` a
    string; any other keys are the pusher's own and are forwarded as they are).
    """

    app_id: str
    pushkey: str
    pushkey_ts: NotRequired[int]
    data: NotRequired[Annotated[dict[str, Any], AfterValidator(_pusher_data)]]
    tweaks: NotRequired[dict[str, Any]]


class EncryptedNotification(TypedDict):
    """The spec's ``EncryptedNotification``: one sealed notification for one device."""

    ciphertext: Annotated[str, Field(min_length=CIPHERTEXT_LENGTH, max_length=CIPHERTEXT_LENGTH)]
    time_message_encrypted: str
    key_identifier: str
    identifier: NotRequired[str]
    prio: NotRequired[Priority]
    counts: NotRequired[Counts]
    device: Device


def _unique_devices(devices: list[Device]) -> list[Device]:
    # ``uniqueItems: true`` on ``devices``.
    seen: set[bytes] = set()
    for device in devices:
        key = orjson.dumps(device, option=orjson.OPT_SORT_KEYS)
        if key in seen:
            raise ValueError("a device is listed twice")
        seen.add(key)
    return devices


class _PlainFields(TypedDict):
    """The optional, Matrix-style fields a plain notification may carry, and its devices."""

    event_id: NotRequired[str]
    room_id: NotRequired[str]
    type: NotRequired[str]
    sender: NotRequired[str]
    sender_display_name: NotRequired[str]
    room_name: NotRequired[str]
    room_alias: NotRequired[str]
    user_is_target: NotRequired[bool]
    content: NotRequired[dict[str, Any]]
    counts: NotRequired[Counts]
    devices: Annotated[list[Device], AfterValidator(_unique_devices)]


class PlainNotification(_PlainFields):
    """The spec's ``PlainNotification`` (``prio`` and ``devices`` required)."""

    prio: Priority


class SeedNotification(_PlainFields):
    """The seed-era notification (``/_matrix/push/v1/notify``): ``prio`` optional.

    The seed spec's ``notify`` took either a plain or an encrypted notification, both addressed
    to ``devices``; the encrypted fields are kept as they come (the seed gave them no bounds).
    """

    prio: NotRequired[Priority]
    ciphertext: NotRequired[str]
    time_message_encrypted: NotRequired[str]
    key_identifier: NotRequired[str]
    identifier: NotRequired[str]


# --- requests -----------------------------------------------------------------------------------

_ItemId = Annotated[str, Field(max_length=MAX_ITEM_ID_LENGTH)]


class PlainNotificationRequest(TypedDict):
    """The spec's ``PlainNotificationRequest``: the body of ``POST notify``."""

    notification: PlainNotification


class SeedNotificationRequest(TypedDict):
    """The body of the seed-era ``POST /_matrix/push/v1/notify``."""

    notification: SeedNotification


class EncryptedBatchItem(TypedDict):
    """One item of ``EncryptedBatchNotificationRequest``: the sender's ``id`` for it (at most
    64 characters) and the notification."""

    id: _ItemId
    notification: EncryptedNotification


class PlainBatchItem(TypedDict):
    """One item of ``BatchNotificationRequest``: the sender's ``id`` for it (at most 64
    characters) and the notification."""

    id: _ItemId
    notification: PlainNotification


class EncryptedBatchNotificationRequest(TypedDict):
    """The spec's ``EncryptedBatchNotificationRequest``: the body of ``POST
    notifyEncrypted/batch`` (without ``maxItems`` and ``uniqueItems``, see above)."""

    notifications: Annotated[list[EncryptedBatchItem], Field(min_length=1)]


class BatchNotificationRequest(TypedDict):
    """The spec's ``BatchNotificationRequest``: the body of ``POST notify/batch`` (without
    ``maxItems`` and ``uniqueItems``, see above)."""

    notifications: Annotated[list[PlainBatchItem], Field(min_length=1)]


# --- answers ------------------------------------------------------------------------------------


def _none_on_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # For what a sender does not need: a gateway's mistake there must not cost the answer.
    try:
        return handler(value)
    except ValidationError:
        return None


# Read leniently: null is none, and a pushkey that is not a string is skipped.
_Rejected = list[OnErrorOmit[str]] | None
_NoneOnError = WrapValidator(_none_on_error)


class NotificationResult(TypedDict):
    """One entry of ``BatchNotificationResponse.results``: the verdict on one batch item.

    ``rejected`` may name pushkeys whose failure came from an earlier notification, under any
    status; ``error`` says why when ``status`` is ``failed`` (a gateway writes a string; a
    ``null`` is read as none).
    """

    id: str
    status: ResultStatus
    rejected: NotRequired[_Rejected]
    error: NotRequired[str | None]


class BatchSummary(TypedDict):
    """``BatchNotificationResponse.summary``: the results counted by status."""

    total: int
    successful: int
    failed: int
    partial: int


class BatchNotificationResponse(TypedDict):
    """The spec's ``BatchNotificationResponse``: the 200 answer of both batch endpoints.

    ``summary`` is required by the spec (and always written by our gateways); a sender reads
    an answer without one, or with one it cannot read (then ``None``).
    """

    results: list[OnErrorOmit[NotificationResult]]
    summary: NotRequired[Annotated[BatchSummary | None, _NoneOnError]]


class NotifyResponse(TypedDict):
    """The 200 answer of ``notify``: the rejected pushkeys (``RejectedPushKeys``; a sender
    reads an absent or ``null`` one as none)."""

    rejected: NotRequired[_Rejected]


class ErrorResponse(TypedDict):
    """Any error answer: ``error`` (for a batch's 400 one of the spec's four texts) and
    ``details`` such as ``max_batch_size`` or ``max_request_size_kb``."""

    error: str
    details: NotRequired[Annotated[dict[str, Any] | None, _NoneOnError]]


# --- reading and writing ------------------------------------------------------------------------

_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(kind: Any) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        adapter = _ADAPTERS[kind] = TypeAdapter(kind)
    return adapter


def validate_request(kind: type[_T], data: object) -> _T:
    """``data`` (parsed JSON) as the request ``kind``, validated strictly (see above); raises
    ``pydantic.ValidationError`` naming every problem."""
    result: _T = _adapter(kind).validate_python(data, strict=True)
    return result


def read_answer(kind: type[_T], body: bytes | str) -> _T | None:
    """``body`` (JSON) as the answer ``kind``, read leniently (see above); None when it is not
    one at all."""
    try:
        result: _T = _adapter(kind).validate_json(body)
    except ValidationError:
        return None
    return result


def encode(value: Any) -> bytes:
    """One of these objects as compact JSON."""
    return orjson.dumps(value)
